"""What the scheduler side tells the worker side each step (pickled by
vLLM), and what workers tell the scheduler once at start."""
from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorHandshakeMetadata,
    KVConnectorMetadata,
    KVConnectorWorkerMetadata,
)


@dataclass
class LoadSpec:
    req_id: str
    hashes: list[str]          # hex of the block hashes, one per block
    block_ids: list[int]
    is_async: bool             # between steps on a load thread, else inside the step


@dataclass
class KvdsConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    # req_id -> [(hash hex, block id)] of blocks complete after this step
    saves: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # requests whose blocks vLLM keeps until we report them in finished_sending
    delayed: set[str] = field(default_factory=set)
    # requests preempted since the last step: saves reading their blocks end first
    preempted: set[str] = field(default_factory=set)


@dataclass
class KvdsWorkerMetadata(KVConnectorWorkerMetadata):
    """Worker ranks -> scheduler, each step: the requests whose loads ran
    inside the step (all ranks' steps are over when vLLM hands it over)."""
    loaded: set[str] = field(default_factory=set)

    def aggregate(self, other):
        return KvdsWorkerMetadata(self.loaded | other.loaded)


@dataclass
class KvdsHandshake(KVConnectorHandshakeMetadata):
    """One worker rank's key prefix, whether it saves (MLA: rank 0 only),
    and its object size."""
    prefix: str
    saves: bool
    block_bytes: int
