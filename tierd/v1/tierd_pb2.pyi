from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_HBM: _ClassVar[Tier]
    TIER_DRAM: _ClassVar[Tier]
    TIER_DISK: _ClassVar[Tier]
    TIER_REMOTE: _ClassVar[Tier]

class HandleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HANDLE_KIND_UNSPECIFIED: _ClassVar[HandleKind]
    HANDLE_KIND_SHM: _ClassVar[HandleKind]
    HANDLE_KIND_CUDA_IPC: _ClassVar[HandleKind]
    HANDLE_KIND_MEMFD: _ClassVar[HandleKind]

class LeaseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_KIND_UNSPECIFIED: _ClassVar[LeaseKind]
    LEASE_KIND_READ: _ClassVar[LeaseKind]
    LEASE_KIND_FILL: _ClassVar[LeaseKind]

class WritePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_POLICY_UNSPECIFIED: _ClassVar[WritePolicy]
    WRITE_POLICY_WRITE_BACK: _ClassVar[WritePolicy]
    WRITE_POLICY_WRITE_THROUGH: _ClassVar[WritePolicy]
TIER_UNSPECIFIED: Tier
TIER_HBM: Tier
TIER_DRAM: Tier
TIER_DISK: Tier
TIER_REMOTE: Tier
HANDLE_KIND_UNSPECIFIED: HandleKind
HANDLE_KIND_SHM: HandleKind
HANDLE_KIND_CUDA_IPC: HandleKind
HANDLE_KIND_MEMFD: HandleKind
LEASE_KIND_UNSPECIFIED: LeaseKind
LEASE_KIND_READ: LeaseKind
LEASE_KIND_FILL: LeaseKind
WRITE_POLICY_UNSPECIFIED: WritePolicy
WRITE_POLICY_WRITE_BACK: WritePolicy
WRITE_POLICY_WRITE_THROUGH: WritePolicy

class PageSpec(_message.Message):
    __slots__ = ("model", "dtype", "num_layers", "num_kv_heads", "head_dim", "page_tokens", "layout", "window_tokens", "sink_tokens", "cold_format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SINK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COLD_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_tokens: int
    layout: str
    window_tokens: int
    sink_tokens: int
    cold_format: str
    def __init__(self, model: _Optional[str] = ..., dtype: _Optional[str] = ..., num_layers: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., page_tokens: _Optional[int] = ..., layout: _Optional[str] = ..., window_tokens: _Optional[int] = ..., sink_tokens: _Optional[int] = ..., cold_format: _Optional[str] = ...) -> None: ...

class RegionHandle(_message.Message):
    __slots__ = ("tier", "kind", "name", "offset_bytes", "size_bytes", "page_bytes", "num_slots", "device", "ipc_handle", "grant", "socket_path", "index_bytes", "epoch")
    TIER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    IPC_HANDLE_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    SOCKET_PATH_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    kind: HandleKind
    name: str
    offset_bytes: int
    size_bytes: int
    page_bytes: int
    num_slots: int
    device: str
    ipc_handle: bytes
    grant: bytes
    socket_path: str
    index_bytes: int
    epoch: bytes
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., kind: _Optional[_Union[HandleKind, str]] = ..., name: _Optional[str] = ..., offset_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., page_bytes: _Optional[int] = ..., num_slots: _Optional[int] = ..., device: _Optional[str] = ..., ipc_handle: _Optional[bytes] = ..., grant: _Optional[bytes] = ..., socket_path: _Optional[str] = ..., index_bytes: _Optional[int] = ..., epoch: _Optional[bytes] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "ns_id", "tier", "kind", "keys", "slots", "expires_in_s", "page_indices", "prefix_pages")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    PAGE_INDICES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_PAGES_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    ns_id: int
    tier: Tier
    kind: LeaseKind
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    slots: _containers.RepeatedScalarFieldContainer[int]
    expires_in_s: float
    page_indices: _containers.RepeatedScalarFieldContainer[int]
    prefix_pages: int
    def __init__(self, lease_id: _Optional[int] = ..., ns_id: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., kind: _Optional[_Union[LeaseKind, str]] = ..., keys: _Optional[_Iterable[bytes]] = ..., slots: _Optional[_Iterable[int]] = ..., expires_in_s: _Optional[float] = ..., page_indices: _Optional[_Iterable[int]] = ..., prefix_pages: _Optional[int] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_message_bytes", "chunk_bytes", "max_put_bytes", "max_keys_per_request", "max_get_bytes")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_GET_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    chunk_bytes: int
    max_put_bytes: int
    max_keys_per_request: int
    max_get_bytes: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., max_put_bytes: _Optional[int] = ..., max_keys_per_request: _Optional[int] = ..., max_get_bytes: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("spec", "tenant")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    spec: PageSpec
    tenant: str
    def __init__(self, spec: _Optional[_Union[PageSpec, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("ns_id", "page_bytes", "fingerprint", "regions", "tenant", "spec", "limits", "page_socket", "server_epoch")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    SERVER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    page_bytes: int
    fingerprint: bytes
    regions: _containers.RepeatedCompositeFieldContainer[RegionHandle]
    tenant: str
    spec: PageSpec
    limits: ServerLimits
    page_socket: str
    server_epoch: bytes
    def __init__(self, ns_id: _Optional[int] = ..., page_bytes: _Optional[int] = ..., fingerprint: _Optional[bytes] = ..., regions: _Optional[_Iterable[_Union[RegionHandle, _Mapping]]] = ..., tenant: _Optional[str] = ..., spec: _Optional[_Union[PageSpec, _Mapping]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., page_socket: _Optional[str] = ..., server_epoch: _Optional[bytes] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("ns_id", "keys")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ns_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("num_hits", "tiers")
    NUM_HITS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    num_hits: int
    tiers: _containers.RepeatedScalarFieldContainer[Tier]
    def __init__(self, num_hits: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[Tier, str]]] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("ns_id", "keys", "target_tier")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TIER_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    target_tier: Tier
    def __init__(self, ns_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ..., target_tier: _Optional[_Union[Tier, str]] = ...) -> None: ...

class PrefetchResponse(_message.Message):
    __slots__ = ("num_scheduled",)
    NUM_SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    num_scheduled: int
    def __init__(self, num_scheduled: _Optional[int] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("ns_id", "keys", "target_tier", "timeout_s", "ttl_s", "release_lease_ids")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TIER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    target_tier: Tier
    timeout_s: float
    ttl_s: float
    release_lease_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ns_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ..., target_tier: _Optional[_Union[Tier, str]] = ..., timeout_s: _Optional[float] = ..., ttl_s: _Optional[float] = ..., release_lease_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("ns_id", "num_pages", "ttl_s", "tier")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    num_pages: int
    ttl_s: float
    tier: Tier
    def __init__(self, ns_id: _Optional[int] = ..., num_pages: _Optional[int] = ..., ttl_s: _Optional[float] = ..., tier: _Optional[_Union[Tier, str]] = ...) -> None: ...

class AllocateResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("lease_id", "keys", "slots", "wait_durable", "durable_timeout_s", "release_lease", "parent_key")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_DURABLE_FIELD_NUMBER: _ClassVar[int]
    DURABLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    RELEASE_LEASE_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    slots: _containers.RepeatedScalarFieldContainer[int]
    wait_durable: bool
    durable_timeout_s: float
    release_lease: bool
    parent_key: bytes
    def __init__(self, lease_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ..., slots: _Optional[_Iterable[int]] = ..., wait_durable: _Optional[bool] = ..., durable_timeout_s: _Optional[float] = ..., release_lease: _Optional[bool] = ..., parent_key: _Optional[bytes] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("num_committed", "durable_ticket", "durable")
    NUM_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DURABLE_TICKET_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    num_committed: int
    durable_ticket: int
    durable: bool
    def __init__(self, num_committed: _Optional[int] = ..., durable_ticket: _Optional[int] = ..., durable: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("lease_id", "ttl_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    ttl_s: float
    def __init__(self, lease_id: _Optional[int] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class PutPagesRequest(_message.Message):
    __slots__ = ("header", "keys", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PutPagesHeader
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    data: bytes
    def __init__(self, header: _Optional[_Union[PutPagesHeader, _Mapping]] = ..., keys: _Optional[_Iterable[bytes]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutPagesHeader(_message.Message):
    __slots__ = ("ns_id", "tier", "wait_durable", "durable_timeout_s", "parent_key")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    WAIT_DURABLE_FIELD_NUMBER: _ClassVar[int]
    DURABLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    tier: Tier
    wait_durable: bool
    durable_timeout_s: float
    parent_key: bytes
    def __init__(self, ns_id: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., wait_durable: _Optional[bool] = ..., durable_timeout_s: _Optional[float] = ..., parent_key: _Optional[bytes] = ...) -> None: ...

class PutPagesResponse(_message.Message):
    __slots__ = ("num_stored", "num_skipped", "durable_ticket", "durable")
    NUM_STORED_FIELD_NUMBER: _ClassVar[int]
    NUM_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DURABLE_TICKET_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    num_stored: int
    num_skipped: int
    durable_ticket: int
    durable: bool
    def __init__(self, num_stored: _Optional[int] = ..., num_skipped: _Optional[int] = ..., durable_ticket: _Optional[int] = ..., durable: _Optional[bool] = ...) -> None: ...

class GetPagesRequest(_message.Message):
    __slots__ = ("ns_id", "keys")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ns_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetPagesResponse(_message.Message):
    __slots__ = ("num_pages", "page_bytes", "data")
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    num_pages: int
    page_bytes: int
    data: bytes
    def __init__(self, num_pages: _Optional[int] = ..., page_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ns_id", "keys")
    NS_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ns_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ns_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("num_deleted",)
    NUM_DELETED_FIELD_NUMBER: _ClassVar[int]
    num_deleted: int
    def __init__(self, num_deleted: _Optional[int] = ...) -> None: ...

class WaitDurableRequest(_message.Message):
    __slots__ = ("ticket", "timeout_s")
    TICKET_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ticket: int
    timeout_s: float
    def __init__(self, ticket: _Optional[int] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WaitDurableResponse(_message.Message):
    __slots__ = ("durable",)
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    durable: bool
    def __init__(self, durable: _Optional[bool] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("timeout_s",)
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    timeout_s: float
    def __init__(self, timeout_s: _Optional[float] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("num_flushed",)
    NUM_FLUSHED_FIELD_NUMBER: _ClassVar[int]
    num_flushed: int
    def __init__(self, num_flushed: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("tier", "capacity_bytes", "used_bytes", "pages", "hits", "misses", "evictions", "bytes_in", "bytes_out", "queue_depth", "quantized_pages", "quantized_bytes_saved", "pinned_bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_PAGES_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_BYTES_SAVED_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    capacity_bytes: int
    used_bytes: int
    pages: int
    hits: int
    misses: int
    evictions: int
    bytes_in: int
    bytes_out: int
    queue_depth: int
    quantized_pages: int
    quantized_bytes_saved: int
    pinned_bytes: int
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., pages: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., queue_depth: _Optional[int] = ..., quantized_pages: _Optional[int] = ..., quantized_bytes_saved: _Optional[int] = ..., pinned_bytes: _Optional[int] = ...) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("sessions", "rpcs_in_flight", "rpcs_rejected", "version", "device")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RPCS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RPCS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    sessions: int
    rpcs_in_flight: int
    rpcs_rejected: int
    version: str
    device: str
    def __init__(self, sessions: _Optional[int] = ..., rpcs_in_flight: _Optional[int] = ..., rpcs_rejected: _Optional[int] = ..., version: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class RemoteStats(_message.Message):
    __slots__ = ("backend", "available", "errors", "checksum_failures", "dropped", "pages_written")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    PAGES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    backend: str
    available: bool
    errors: int
    checksum_failures: int
    dropped: int
    pages_written: int
    def __init__(self, backend: _Optional[str] = ..., available: _Optional[bool] = ..., errors: _Optional[int] = ..., checksum_failures: _Optional[int] = ..., dropped: _Optional[int] = ..., pages_written: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tiers", "namespaces", "leases", "checksum_failures", "uptime_s", "write_policy", "server", "disk_writes_refused", "disk_write_failures", "disk_write_error", "remote", "evictions_with_children", "eviction_policy")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    WRITE_POLICY_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITES_REFUSED_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_ERROR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_WITH_CHILDREN_FIELD_NUMBER: _ClassVar[int]
    EVICTION_POLICY_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    namespaces: int
    leases: int
    checksum_failures: int
    uptime_s: float
    write_policy: WritePolicy
    server: ServerStats
    disk_writes_refused: int
    disk_write_failures: int
    disk_write_error: str
    remote: RemoteStats
    evictions_with_children: int
    eviction_policy: str
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., namespaces: _Optional[int] = ..., leases: _Optional[int] = ..., checksum_failures: _Optional[int] = ..., uptime_s: _Optional[float] = ..., write_policy: _Optional[_Union[WritePolicy, str]] = ..., server: _Optional[_Union[ServerStats, _Mapping]] = ..., disk_writes_refused: _Optional[int] = ..., disk_write_failures: _Optional[int] = ..., disk_write_error: _Optional[str] = ..., remote: _Optional[_Union[RemoteStats, _Mapping]] = ..., evictions_with_children: _Optional[int] = ..., eviction_policy: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("client_name", "client_pid")
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PID_FIELD_NUMBER: _ClassVar[int]
    client_name: str
    client_pid: int
    def __init__(self, client_name: _Optional[str] = ..., client_pid: _Optional[int] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("session_id", "heartbeat_interval_s", "heartbeat_seq", "limits", "server_epoch")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    heartbeat_interval_s: float
    heartbeat_seq: int
    limits: ServerLimits
    server_epoch: bytes
    def __init__(self, session_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_seq: _Optional[int] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., server_epoch: _Optional[bytes] = ...) -> None: ...
