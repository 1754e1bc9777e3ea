"""Split prefill/decode through kvds must compute exactly what one
colocated instance computes — checked with a real (tiny) transformer that
attends over the paged cache, for every KV layout.

The colocated and producer instances run in the test's process; each
consumer is a process of its own (reference_run.py) with its own
PYTHONHASHSEED and therefore its own vLLM block hashes:
- colocated (kv_both, nothing to load): the reference tokens and logits;
- producer (kv_producer) prefills and stores the prompt;
- consumer with the test's PYTHONHASHSEED: given the producer's
  kv_transfer_params it loads every full block from kvds, computes only the
  tail, and its tokens and logits are bit-identical to the colocated run;
  the same prompt again without params hits the prefix cache by lookup
  (both loaded inside the step), and so does a consumer that loads between
  steps;
- consumer with another PYTHONHASHSEED (the negative control): other block
  hashes, so both the PD path and the lookup miss — nothing is loaded, all
  is recomputed, and the answer is still the same.
"""
import json
import os
import subprocess
import sys

from reference_run import run
from vllm_driver import BS, LAYOUTS

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "reference_run.py")
PROMPT = [(i * 53 + 7) % 500 + 3 for i in range(3 * BS + 5)]     # 3 full blocks + 5
MAX_TOKENS = 5


def instance(role, addr, ns, seed, params=None):
    """ROLE in a process of its own with PYTHONHASHSEED=seed (None: ours)."""
    env = dict(os.environ)
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    args = [sys.executable, SCRIPT, role, addr, ns, json.dumps(PROMPT), str(MAX_TOKENS)]
    if params is not None:
        args.append(json.dumps(params))
    p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=HERE, timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"{role} failed ({p.returncode}):\n{p.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_split_equals_colocated_and_hashseed_control(worker):
    colo = run("colocate", worker.addr, "ref-colo", PROMPT, MAX_TOKENS)
    prod = run("produce", worker.addr, "ref", PROMPT, MAX_TOKENS)
    params = {lay: prod[lay]["r"]["params"] for lay in LAYOUTS}
    same = instance("consume", worker.addr, "ref", None, params)
    other_seed = "4242" if os.environ.get("PYTHONHASHSEED") != "4242" else "4343"
    other = instance("consume", worker.addr, "ref", other_seed, params)
    for lay in LAYOUTS:
        ref = colo[lay]["r"]
        assert ref["matched"] == [0, False] and len(ref["tokens"]) == MAX_TOKENS
        assert prod[lay]["stats"]["blocks_saved"] == 3, lay
        assert prod[lay]["r"]["tokens"] == ref["tokens"][:1], lay
        # same seed: PD load, then prefix-cache hit; bit-identical results
        pd, reuse, asy = same[lay]["pd"], same[lay]["reuse"], same[lay]["async"]
        assert pd["matched"] == [3 * BS, False] and pd["scheduled"][0] == 5, lay
        assert reuse["matched"] == [3 * BS, False], lay
        assert asy["matched"] == [3 * BS, True] and asy["scheduled"][0] == 5, lay
        assert same[lay]["stats"] == {"blocks_loaded": 6, "blocks_saved": 0,
                                      "load_errors": 0}, lay
        assert same[lay]["async_stats"]["blocks_loaded"] == 3, lay
        for r in (pd, reuse, asy):
            assert r["tokens"] == ref["tokens"], (lay, r["tokens"], ref["tokens"])
            assert r["logits"] == ref["logits"], f"{lay}: logits differ from colocated"
        # other seed: other hashes, nothing found, everything recomputed
        for name in ("pd", "reuse", "async"):
            r = other[lay][name]
            assert r["matched"] == [0, False] and r["scheduled"][0] == len(PROMPT), (lay, name)
            assert r["tokens"] == ref["tokens"] and r["logits"] == ref["logits"], lay
        assert other[lay]["stats"]["blocks_loaded"] == 0, lay
        assert other[lay]["async_stats"]["blocks_loaded"] == 0, lay
