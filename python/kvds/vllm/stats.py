"""The connector's figures, through vLLM's KV-connector stats path: each
worker rank (and the scheduler) hands a KvdsStats every step
(get_kv_connector_stats), vLLM adds them up, logs them with its periodic
stats line and records them in Prometheus (vllm:kvds_* on the API server's
/metrics) through KvdsPromMetrics."""
import threading

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

# counter -> (Prometheus name, help)
COUNTERS = {
    "blocks_loaded": ("vllm:kvds_loaded_blocks", "KV blocks loaded from kvds"),
    "bytes_loaded": ("vllm:kvds_loaded_bytes", "bytes of KV loaded from kvds"),
    "load_failures": ("vllm:kvds_load_failed_blocks",
                      "KV blocks that failed to load (vLLM recomputes them)"),
    "blocks_saved": ("vllm:kvds_saved_blocks", "KV blocks saved to kvds"),
    "bytes_saved": ("vllm:kvds_saved_bytes", "bytes of KV saved to kvds"),
    "save_failures": ("vllm:kvds_save_failed_blocks",
                      "KV blocks whose save failed (worker unreachable, pool full, ...)"),
    "save_skipped": ("vllm:kvds_save_skipped_blocks",
                     "KV blocks not saved: already stored or written by another client, "
                     "or the save queue was full"),
    "lookups": ("vllm:kvds_lookups", "prefix lookups in kvds (scheduler)"),
    "lookup_hit_blocks": ("vllm:kvds_lookup_hit_blocks", "KV blocks found by lookups"),
    "handoff_waits": ("vllm:kvds_handoff_waits",
                      "hand-offs whose blocks were waited for or pulled before loading"),
}
# list of seconds -> (Prometheus name, help)
DURATIONS = {
    "load_s": ("vllm:kvds_load_seconds", "duration of one request's load from kvds"),
    "save_s": ("vllm:kvds_save_seconds", "duration of one step's save to kvds (queue to seal)"),
}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _empty():
    d = {k: 0 for k in COUNTERS}
    d.update({k: [] for k in DURATIONS})
    return d


class KvdsStats(KVConnectorStats):
    """Counters and durations since the last hand-over (serialisable)."""

    def __post_init__(self):
        if not self.data:
            self.reset()

    def reset(self):
        self.data = _empty()

    def aggregate(self, other):
        for k, v in other.data.items():
            if isinstance(v, list):
                self.data.setdefault(k, []).extend(v)
            else:
                self.data[k] = self.data.get(k, 0) + v
        return self

    def reduce(self):
        out = {k: self.data.get(k, 0) for k in COUNTERS}
        for k in DURATIONS:
            v = sorted(self.data.get(k) or ())
            if v:
                out[f"{k[:-2]} ms p50"] = round(v[len(v) // 2] * 1e3, 3)
                out[f"{k[:-2]} ms max"] = round(v[-1] * 1e3, 3)
        return out

    def is_empty(self):
        return not any(self.data.get(k) for k in list(COUNTERS) + list(DURATIONS))


class Recorder:
    """Thread-safe accumulation of one side's figures; take() hands over
    what was recorded since the last take (None if nothing)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._d = _empty()

    def add(self, **counts):
        with self._lock:
            for k, v in counts.items():
                self._d[k] += v

    def time(self, key, seconds):
        with self._lock:
            self._d[key].append(seconds)

    def take(self):
        with self._lock:
            d, self._d = self._d, _empty()
        s = KvdsStats(data=d)
        return None if s.is_empty() else s


class KvdsPromMetrics(KVConnectorPromMetrics):
    def __init__(self, vllm_config, metric_types, labelnames, per_engine_labelvalues):
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters = {}
        for k, (name, doc) in COUNTERS.items():
            m = self._counter_cls(name=name, documentation=doc, labelnames=labelnames)
            self._counters[k] = {i: m.labels(*v) for i, v in per_engine_labelvalues.items()}
        self._hists = {}
        for k, (name, doc) in DURATIONS.items():
            m = self._histogram_cls(name=name, documentation=doc, buckets=_BUCKETS,
                                    labelnames=labelnames)
            self._hists[k] = {i: m.labels(*v) for i, v in per_engine_labelvalues.items()}

    def observe(self, transfer_stats_data, engine_idx=0):
        for k, per_engine in self._counters.items():
            v = transfer_stats_data.get(k, 0)
            if v:
                per_engine[engine_idx].inc(v)
        for k, per_engine in self._hists.items():
            for v in transfer_stats_data.get(k) or ():
                per_engine[engine_idx].observe(v)
