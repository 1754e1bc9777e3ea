"""KvdsConnector inside real vLLM 0.32.0 (CPU, offline LLM, tiny local model).

Three separate vLLM instances on one kvds worker: a prefill instance
(kv_producer) stores the prompt's full blocks and returns kv_transfer_params
naming its kvds worker (member id) and its configuration fingerprint; then,
at once, a decode instance (kv_consumer) with the same PYTHONHASHSEED, given
those params with its request, loads the blocks from kvds and must generate
exactly the producer's tokens, and a kv_both instance with another
PYTHONHASHSEED (so other block hashes) must miss and compute for itself.
"""
import json
import os
import subprocess
import sys
import tempfile

import kvds

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "vllm_offline.py")
BLOCK = 128      # vLLM's CPU backend block size


class VllmRun:
    """One offline vLLM run (vllm_offline.py run) in a process of its own,
    started at construction; result() waits for it (several may run at
    once: their output goes to files, not pipes)."""

    def __init__(self, model, prompt_file, addr, role, seed, tmp, params=None):
        kvt = {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
               "kv_role": role,
               "kv_connector_extra_config": {"worker_addr": addr, "namespace": "e2e"}}
        env = dict(os.environ, PYTHONHASHSEED=str(seed), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   VLLM_CONFIG_ROOT=str(tmp / "cfg"))     # VLLM_CACHE_ROOT: the session's
        env.pop("DS_WORKER_ADDR", None)
        args = [json.dumps(params)] if params else []
        self.out = tempfile.TemporaryFile(dir=tmp)
        self.err = tempfile.TemporaryFile(dir=tmp)
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "run", model, json.dumps(kvt), prompt_file, *args],
            stdout=self.out, stderr=self.err, env=env, cwd=tmp)

    def result(self):
        try:
            self.proc.wait(300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out, err = (_drain(f) for f in (self.out, self.err))
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        rc = self.proc.returncode
        assert rc == 0 and lines, f"vLLM run failed ({rc}):\n{out[-3000:]}\n{err[-6000:]}"
        return json.loads(lines[-1][len("RESULT "):])


def _drain(f):
    """The whole text of a temporary file; closes it."""
    with f:
        f.seek(0)
        return f.read().decode(errors="replace")


def vllm_run(*args, **kw):
    return VllmRun(*args, **kw).result()


def test_real_vllm_producer_consumer(make_worker, tmp_path):
    w = make_worker("256MiB")
    model = str(tmp_path / "model")
    subprocess.run([sys.executable, SCRIPT, "make-model", model], check=True)
    prompt_file = str(tmp_path / "prompt.json")
    prompt = [(i * 37) % 500 + 4 for i in range(2 * BLOCK + 44)]     # 2 full blocks + tail
    with open(prompt_file, "w") as f:
        json.dump(prompt, f)

    prod = vllm_run(model, prompt_file, w.addr, "kv_producer", 0, tmp_path)
    assert prod["connector"] == {"blocks_loaded": 0, "blocks_saved": 2, "load_errors": 0}
    with kvds.Client(w.addr) as c:
        keys = [k for k, _ in c.list(b"e2e/", limit=None)]
        assert len(keys) == 2, keys
        me = json.loads(c.cluster_status())["self"]["id"]
        hits_before = c.stats()["hits"]

    params = prod["kv_transfer_params"]
    assert params["kvds_worker"] == me and params["kvds_blocks"] == 2, params
    assert len(params["kvds_fp"]) == 16
    # the consumer and the other-seed instance at once: the other's keys
    # are not the producer's, so neither sees the other's blocks
    cons_run = VllmRun(model, prompt_file, w.addr, "kv_consumer", 0, tmp_path, params)
    other_run = VllmRun(model, prompt_file, w.addr, "kv_both", 1, tmp_path)
    cons, other = cons_run.result(), other_run.result()
    assert cons["connector"] == {"blocks_loaded": 2, "blocks_saved": 0, "load_errors": 0}
    assert cons["tokens"] == prod["tokens"]
    assert cons["kv_transfer_params"] is None       # a consumer hands nothing on
    with kvds.Client(w.addr) as c:
        assert c.stats()["hits"] >= hits_before + 2

    assert other["connector"] == {"blocks_loaded": 0, "blocks_saved": 2, "load_errors": 0}
    assert other["tokens"] == prod["tokens"]
    w.stop()


def test_real_vllm_mla_producer_consumer(make_worker, tmp_path):
    """An MLA model (a tiny DeepSeek-V2, random weights) in real vLLM: the
    paged cache holds one latent per token, the same on every TP rank, so
    the producer stores one copy per block under a tp* key, and the
    consumer, given its params, loads every full block and generates the
    producer's tokens."""
    from kvds.testmodel import make_mla_model
    w = make_worker("256MiB")
    llama = str(tmp_path / "llama")
    subprocess.run([sys.executable, SCRIPT, "make-model", llama], check=True)
    model = str(tmp_path / "mla")
    make_mla_model(model, llama)
    prompt_file = str(tmp_path / "prompt.json")
    with open(prompt_file, "w") as f:
        json.dump([(i * 41) % 500 + 4 for i in range(300)], f)
    prod = vllm_run(model, prompt_file, w.addr, "kv_producer", 0, tmp_path)
    nb = prod["kv_transfer_params"]["kvds_blocks"]
    assert nb >= 2 and prod["connector"]["blocks_saved"] == nb, prod
    with kvds.Client(w.addr) as c:
        keys = [k.decode() for k, _ in c.list(b"e2e/", limit=None)]
    assert len(keys) == nb and all("/tp*/pp0/" in k for k in keys), keys
    cons = vllm_run(model, prompt_file, w.addr, "kv_consumer", 0, tmp_path,
                    prod["kv_transfer_params"])
    assert cons["connector"] == {"blocks_loaded": nb, "blocks_saved": 0, "load_errors": 0}
    assert cons["tokens"] == prod["tokens"]
    w.stop()
