"""kvds as a vLLM v1 KV connector (vLLM 0.32.0; see docs/vllm.md).

    --kv-transfer-config '{"kv_connector": "KvdsConnector",
                           "kv_connector_module_path": "kvds.vllm",
                           "kv_role": "kv_both",
                           "kv_connector_extra_config": {"namespace": "prod"}}'

One kvds object per (block, rank) holds every layer of that block: a 64-byte
header, then each layer's bytes of the block in layer order. Keys name
everything that changes those bytes (keys.py). Modules:

    config     kv_connector_extra_config / $KVDS_CONFIG
    keys       key prefixes and fingerprints
    layout     paged-cache layouts, the object header
    link       connections that survive worker outages, thread pools
    meta       scheduler -> worker metadata, worker -> scheduler handshake
    scheduler  lookups (pinned hits, hand-off waits, cluster pulls), save plans
    worker     loads, the saver thread, finished_sending
    stats      vLLM KV-connector stats and Prometheus metrics
    connector  KvdsConnector, the class vLLM loads

Importing this package imports vLLM's base class only; torch and the rest
load when first used (vLLM imports the module in its API server process for
configuration checks).
"""
from .config import KvdsConfig, parse_config
from .connector import KvdsConnector
from .layout import detect_layout
from .meta import KvdsConnectorMetadata, KvdsHandshake, LoadSpec

__all__ = ["KvdsConnector", "KvdsConnectorMetadata", "KvdsConfig", "KvdsHandshake", "LoadSpec",
           "parse_config", "detect_layout"]
