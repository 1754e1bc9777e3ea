"""A decode instance that dies in the middle of its loads.

    python crash_consumer.py ADDR JOBS_JSON PROMPT_JSON

For each job {"layout", "namespace", "params"} it builds a kv_consumer
engine (vllm_driver.Engine) and schedules the prompt with the producer's
kv_transfer_params; the load thread pins the blocks (mget_views), prints
"PINNED <layout>" and stops there, as if the process hung or were killed
mid-copy. The test kills it with SIGKILL.
"""
import json
import sys
import time

from kvds.vllm import KvdsConnector
from vllm_driver import Engine, make_request


def stuck_load(self, client, spec):
    keys = [self.key_prefix + h for h in spec.hashes]
    pinned = client.mget_views(keys, wait_ms=spec.wait_ms)
    print("PINNED", self.layout_name, len(pinned), flush=True)
    time.sleep(600)


def main(addr, jobs, toks):
    KvdsConnector._load_blocks = stuck_load
    engines = []
    for job in json.loads(jobs):
        e = Engine(addr, job["layout"], role="kv_consumer", namespace=job["namespace"])
        e.add(make_request("r", json.loads(toks), kv_transfer_params=job["params"]))
        e.step()
        engines.append(e)
    time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:4])
