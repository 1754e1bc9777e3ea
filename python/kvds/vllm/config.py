"""The connector's configuration: ``kv_connector_extra_config`` over the JSON
file named by $KVDS_CONFIG. Pure Python (no vLLM, no torch)."""
import json
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_ADDR = "127.0.0.1:31501"


def _int(lo):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
            f"an integer >= {lo}")


# key -> (type check, description)
_KEYS = {
    "worker_addr": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "namespace": (lambda v: isinstance(v, str) and v != "" and "/" not in v,
                  "a non-empty string without '/'"),
    "model_id": (lambda v: isinstance(v, str) and v != "" and len(v) <= 200,
                 "a non-empty string of at most 200 characters"),
    "use_layerwise": (lambda v: isinstance(v, bool), "a boolean"),
    "load_async": (lambda v: isinstance(v, bool) or v == "auto", 'true, false or "auto"'),
    "sync_load_max_mb": _int(0),
    "load_timeout_ms": _int(0),
    "client_timeout_ms": _int(1),
    "step_timeout_ms": _int(1),
    "max_parallel_loads": _int(1),
    "max_pending_save_mb": _int(0),
    "reconnect_ms": _int(1),
}


@dataclass
class KvdsConfig:
    worker_addr: str
    namespace: str = "kvds"
    # Names the model in keys and fingerprints instead of
    # model_config.model (two instances that load the same weights from
    # different paths must agree on it to share blocks).
    model_id: str | None = None
    use_layerwise: bool = False
    # "auto": a hit held in the local pool is copied inside the step when
    # it is at most sync_load_max_mb, else between steps on a load thread.
    load_async: bool | str = "auto"
    sync_load_max_mb: int = 64
    load_timeout_ms: int = 5000
    client_timeout_ms: int = 10000
    # Bound on a kvds call made inside a vLLM step (a lookup, a load in the
    # step): a frozen worker costs one step this much, then the link backs
    # off and the instance serves misses until the worker answers again.
    step_timeout_ms: int = 500
    max_parallel_loads: int = 16
    max_pending_save_mb: int = 4096
    reconnect_ms: int = 1000


def parse_config(extra: dict | None, env=None) -> KvdsConfig:
    """The JSON object in the file named by $KVDS_CONFIG (if set),
    overridden by ``kv_connector_extra_config``. Unknown keys or values of
    the wrong type raise ValueError (vLLM then fails at start)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    path = env.get("KVDS_CONFIG")
    if path:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"kvds.vllm: cannot read KVDS_CONFIG={path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"kvds.vllm: KVDS_CONFIG={path} must hold a JSON object")
        merged.update(data)
    merged.update(extra or {})
    for k, v in merged.items():
        if k not in _KEYS:
            raise ValueError(f"kvds.vllm: unknown config key {k!r} "
                             f"(known: {', '.join(sorted(_KEYS))})")
        check, what = _KEYS[k]
        if not check(v):
            raise ValueError(f"kvds.vllm: config key {k!r} must be {what}, not {v!r}")
    merged.setdefault("worker_addr", env.get("DS_WORKER_ADDR") or DEFAULT_ADDR)
    return KvdsConfig(**merged)
