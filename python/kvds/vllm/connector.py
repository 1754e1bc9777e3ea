"""KvdsConnector: the class vLLM loads. It keeps vLLM's interface and hands
the work to the scheduler side (scheduler.py) or the worker side
(worker.py), whichever this instance is."""
import logging

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from . import keys as keymod
from .config import parse_config
from .link import Health

log = logging.getLogger("vllm.kvds")


def _check_groups(kv_cache_config):
    """Several KV-cache groups (hybrid models with the hybrid memory
    allocator) are not supported: refuse at start with what to do."""
    groups = getattr(kv_cache_config, "kv_cache_groups", None) or ()
    if len(groups) > 1:
        kinds = sorted({type(getattr(g, "kv_cache_spec", None)).__name__ for g in groups})
        raise ValueError(
            f"kvds.vllm: this model has {len(groups)} KV-cache groups ({', '.join(kinds)}); "
            "KvdsConnector stores one group only. Start vLLM with "
            "--disable-hybrid-kv-cache-manager (every layer then uses full-attention "
            "blocks), or run without the connector")


def _uses_mla(vllm_config, kv_cache_config):
    """An MLA model: one latent per token, the same on every TP rank."""
    if getattr(getattr(vllm_config, "model_config", None), "use_mla", False):
        return True
    groups = getattr(kv_cache_config, "kv_cache_groups", None) or ()
    return any("MLA" in type(getattr(g, "kv_cache_spec", None)).__name__ for g in groups)


class KvdsConnector(KVConnectorBase_V1):
    """vLLM v1 KV connector storing blocks in kvds (docs/vllm.md)."""

    # kvds keeps blocks in host memory (its pool): vLLM counts our hits in
    # vllm:prompt_tokens_by_source{source="host"}.
    _cache_hit_source = CacheHitSource.HOST

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        self.cfg = parse_config(ktc.kv_connector_extra_config)
        _check_groups(kv_cache_config)
        self.kv_role = ktc.kv_role
        self.is_producer = self.kv_role in ("kv_producer", "kv_both")
        self.is_consumer = self.kv_role in ("kv_consumer", "kv_both")
        self.block_size = vllm_config.cache_config.block_size
        self.model = keymod.model_name(vllm_config, self.cfg.model_id)
        self._config_desc = keymod.config_descriptor(vllm_config, kv_cache_config,
                                                     self.cfg.model_id)
        self.use_mla = _uses_mla(vllm_config, kv_cache_config)
        self.health = Health(self.cfg.worker_addr)
        self.stats = {"blocks_loaded": 0, "blocks_saved": 0, "load_errors": 0}
        self._sched = self._work = None
        if role == KVConnectorRole.SCHEDULER:
            from .scheduler import SchedulerSide
            self._sched = SchedulerSide(self)
        else:
            from .worker import WorkerSide
            self._work = WorkerSide(self)

    # ---- worker side ------------------------------------------------------

    @property
    def key_prefix(self):
        return self._work.key_prefix if self._work else None

    @property
    def block_nbytes(self):
        return self._work.block_nbytes if self._work else 0

    def register_kv_caches(self, kv_caches):
        self._work.register_kv_caches(kv_caches,
                                      getattr(self._kv_cache_config, "num_blocks", None),
                                      self._config_desc, self.model)

    def unregister_kv_caches(self):
        """vLLM >= 0.33, before sleep mode releases the KV cache: no queued
        save reads it any more (those not copied yet are dropped)."""
        if self._work is not None:
            self._work.unregister()

    def restore_kv_caches(self):
        """vLLM >= 0.33, after wake-up: the cache's addresses are read again."""
        if self._work is not None:
            self._work.restore()

    def get_handshake_metadata(self):
        return self._work.handshake() if self._work else None

    def handle_preemptions(self, kv_connector_metadata=None):
        # vLLM <= 0.16 passed the preempted request ids instead
        meta = kv_connector_metadata if hasattr(kv_connector_metadata, "preempted") else None
        if isinstance(kv_connector_metadata, (set, frozenset)):
            from .meta import KvdsConnectorMetadata
            meta = KvdsConnectorMetadata(preempted=set(kv_connector_metadata))
        self._work.handle_preemptions(meta)

    def bind_connector_metadata(self, connector_metadata):
        super().bind_connector_metadata(connector_metadata)
        if self._work is not None:
            self._work.bind(connector_metadata)

    def start_load_kv(self, forward_context, **kwargs):
        self._work.start_load_kv(self._get_connector_metadata())

    def wait_for_layer_load(self, layer_name):
        return

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        # called per layer per step: nothing to do unless saves are layer-wise
        if self.cfg.use_layerwise and self.has_connector_metadata():
            self._work.save_kv_layer(self._get_connector_metadata(), layer_name)

    def wait_for_save(self):
        if self.has_connector_metadata():
            self._work.wait_for_save(self._get_connector_metadata())

    def get_finished(self, finished_req_ids):
        return self._work.get_finished(finished_req_ids)

    def build_connector_worker_meta(self):
        return self._work.build_worker_meta() if self._work else None

    def get_block_ids_with_load_errors(self):
        return self._work.get_block_ids_with_load_errors()

    def get_kv_connector_stats(self):
        side = self._work or self._sched
        return side.take_stats() if side is not None else None

    @classmethod
    def build_kv_connector_stats(cls, data=None):
        from .stats import KvdsStats
        return KvdsStats(data=data) if data is not None else KvdsStats()

    @classmethod
    def build_prom_metrics(cls, vllm_config, metric_types, labelnames, per_engine_labelvalues):
        from .stats import KvdsPromMetrics
        return KvdsPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)

    @property
    def requires_kv_delivery(self):
        # A producer's hand-off must not be skipped; a kv_both cache is
        # best-effort (a dropped save is a later miss).
        return self.kv_role == "kv_producer"

    # ---- scheduler side ---------------------------------------------------

    def set_xfer_handshake_metadata_pp_aware(self, metadata):
        self._sched.set_handshake(metadata)

    def set_xfer_handshake_metadata(self, metadata):
        self._sched.set_handshake({(0, tp): m for tp, m in metadata.items()})

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        return self._sched.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self._sched.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output):
        return self._sched.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output):
        self._sched.update_connector_output(connector_output)

    def request_finished(self, request, block_ids):
        return self._sched.request_finished(request, block_ids)

    def may_load_async(self, request):
        """vLLM >= 0.33: whether get_num_new_matched_tokens may answer
        load_kv_async=True for this request (admission of async loads)."""
        return self._sched.may_load_async(request) if self._sched else False

    def has_pending_block_frees(self):
        return self._sched.has_pending_block_frees() if self._sched else False

    def shutdown(self):
        for side in (self._sched, self._work):
            if side is not None:
                side.shutdown()
