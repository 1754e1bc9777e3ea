"""A decode instance that dies in the middle of its loads.

    python crash_consumer.py ADDR JOBS_JSON PROMPT_JSON

For each job {"layout", "namespace", "params"} it builds a kv_consumer
engine (vllm_driver.Engine) and schedules the prompt with the producer's
kv_transfer_params (loads between steps); the load thread pins the blocks
(mget_views), prints "PINNED <layout>" and stops there, as if the process
hung or were killed mid-copy. The test kills it with SIGKILL.
"""
import json
import sys
import time

from kvds.vllm.worker import WorkerSide
from vllm_driver import Engine, make_request


def stuck_load(self, link, spec):
    keys = [self.key_prefix + h for h in spec.hashes]
    pinned = link.get().mget_views(keys, local=True)
    print("PINNED", self.layout_name, len(pinned), flush=True)
    time.sleep(600)


def main(addr, jobs, toks):
    WorkerSide._load = stuck_load
    engines = []
    for job in json.loads(jobs):
        e = Engine(addr, job["layout"], role="kv_consumer", namespace=job["namespace"],
                   load_async=True)
        e.add(make_request("r", json.loads(toks), kv_transfer_params=job["params"]))
        e.step()
        engines.append(e)
    time.sleep(600)


if __name__ == "__main__":
    main(*sys.argv[1:4])
