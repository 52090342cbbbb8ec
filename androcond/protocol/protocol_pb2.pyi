from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Destination(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEST_UNSPECIFIED: _ClassVar[Destination]
    CHECKPOINT: _ClassVar[Destination]
    ROOTFS: _ClassVar[Destination]
    VOLUME: _ClassVar[Destination]
    IMAGE_TAR: _ClassVar[Destination]

class FileKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGULAR: _ClassVar[FileKind]
    DIRECTORY: _ClassVar[FileKind]
    SYMLINK: _ClassVar[FileKind]
    WHITEOUT: _ClassVar[FileKind]

class OutcomeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNKNOWN: _ClassVar[OutcomeState]
    OUTCOME_RECEIVING: _ClassVar[OutcomeState]
    OUTCOME_RESTORING: _ClassVar[OutcomeState]
    OUTCOME_PAGING: _ClassVar[OutcomeState]
    OUTCOME_RUNNING: _ClassVar[OutcomeState]
    OUTCOME_FAILED: _ClassVar[OutcomeState]
    OUTCOME_ABORTED: _ClassVar[OutcomeState]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_INTERNAL: _ClassVar[ErrorCode]
    ERROR_PROTOCOL: _ClassVar[ErrorCode]
    ERROR_RESTORE: _ClassVar[ErrorCode]
    ERROR_UNSAFE_PATH: _ClassVar[ErrorCode]
    ERROR_NO_SPACE: _ClassVar[ErrorCode]
    ERROR_ENGINE: _ClassVar[ErrorCode]
    ERROR_IDLE_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_SHUTTING_DOWN: _ClassVar[ErrorCode]
    ERROR_REFUSED: _ClassVar[ErrorCode]

class SourceAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_ACTION_UNSPECIFIED: _ClassVar[SourceAction]
    SOURCE_RESTORE: _ClassVar[SourceAction]
    SOURCE_REMOVE: _ClassVar[SourceAction]
    SOURCE_CONFIRM: _ClassVar[SourceAction]
DEST_UNSPECIFIED: Destination
CHECKPOINT: Destination
ROOTFS: Destination
VOLUME: Destination
IMAGE_TAR: Destination
REGULAR: FileKind
DIRECTORY: FileKind
SYMLINK: FileKind
WHITEOUT: FileKind
OUTCOME_UNKNOWN: OutcomeState
OUTCOME_RECEIVING: OutcomeState
OUTCOME_RESTORING: OutcomeState
OUTCOME_PAGING: OutcomeState
OUTCOME_RUNNING: OutcomeState
OUTCOME_FAILED: OutcomeState
OUTCOME_ABORTED: OutcomeState
ERROR_INTERNAL: ErrorCode
ERROR_PROTOCOL: ErrorCode
ERROR_RESTORE: ErrorCode
ERROR_UNSAFE_PATH: ErrorCode
ERROR_NO_SPACE: ErrorCode
ERROR_ENGINE: ErrorCode
ERROR_IDLE_TIMEOUT: ErrorCode
ERROR_SHUTTING_DOWN: ErrorCode
ERROR_REFUSED: ErrorCode
SOURCE_ACTION_UNSPECIFIED: SourceAction
SOURCE_RESTORE: SourceAction
SOURCE_REMOVE: SourceAction
SOURCE_CONFIRM: SourceAction

class ClientHello(_message.Message):
    __slots__ = ("protocol_version", "client_version", "codecs")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_version: str
    codecs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol_version: _Optional[int] = ..., client_version: _Optional[str] = ..., codecs: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("protocol_version", "agent_version", "isa", "page_size", "criu_version", "engine_version", "free_bytes", "vdso", "vvar_size", "kernel_release", "criu_dumps_sockets", "androcond_runtime", "va_bits", "criu_runc_options", "cgroup2", "absent_masked_paths", "reports_stored", "lazy_pages", "emulator", "emulator_version", "binfmt_x86_64", "codecs", "compressed_pages", "serves_pages", "emulator_stub")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ISA_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VDSO_FIELD_NUMBER: _ClassVar[int]
    VVAR_SIZE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    CRIU_DUMPS_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    ANDROCOND_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    VA_BITS_FIELD_NUMBER: _ClassVar[int]
    CRIU_RUNC_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CGROUP2_FIELD_NUMBER: _ClassVar[int]
    ABSENT_MASKED_PATHS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_STORED_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    BINFMT_X86_64_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_PAGES_FIELD_NUMBER: _ClassVar[int]
    SERVES_PAGES_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_STUB_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    agent_version: str
    isa: str
    page_size: int
    criu_version: str
    engine_version: str
    free_bytes: int
    vdso: bytes
    vvar_size: int
    kernel_release: str
    criu_dumps_sockets: bool
    androcond_runtime: bool
    va_bits: int
    criu_runc_options: _containers.RepeatedScalarFieldContainer[str]
    cgroup2: bool
    absent_masked_paths: _containers.RepeatedScalarFieldContainer[str]
    reports_stored: bool
    lazy_pages: bool
    emulator: str
    emulator_version: str
    binfmt_x86_64: bool
    codecs: _containers.RepeatedScalarFieldContainer[str]
    compressed_pages: bool
    serves_pages: bool
    emulator_stub: bool
    def __init__(self, protocol_version: _Optional[int] = ..., agent_version: _Optional[str] = ..., isa: _Optional[str] = ..., page_size: _Optional[int] = ..., criu_version: _Optional[str] = ..., engine_version: _Optional[str] = ..., free_bytes: _Optional[int] = ..., vdso: _Optional[bytes] = ..., vvar_size: _Optional[int] = ..., kernel_release: _Optional[str] = ..., criu_dumps_sockets: _Optional[bool] = ..., androcond_runtime: _Optional[bool] = ..., va_bits: _Optional[int] = ..., criu_runc_options: _Optional[_Iterable[str]] = ..., cgroup2: _Optional[bool] = ..., absent_masked_paths: _Optional[_Iterable[str]] = ..., reports_stored: _Optional[bool] = ..., lazy_pages: _Optional[bool] = ..., emulator: _Optional[str] = ..., emulator_version: _Optional[str] = ..., binfmt_x86_64: _Optional[bool] = ..., codecs: _Optional[_Iterable[str]] = ..., compressed_pages: _Optional[bool] = ..., serves_pages: _Optional[bool] = ..., emulator_stub: _Optional[bool] = ...) -> None: ...

class Begin(_message.Message):
    __slots__ = ("migration_id", "container_name", "image", "create_config_json", "checkpoint_name", "total_bytes", "file_count", "lazy", "emulate", "native_plan")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    EMULATE_FIELD_NUMBER: _ClassVar[int]
    NATIVE_PLAN_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    container_name: str
    image: str
    create_config_json: str
    checkpoint_name: str
    total_bytes: int
    file_count: int
    lazy: bool
    emulate: bool
    native_plan: bool
    def __init__(self, migration_id: _Optional[str] = ..., container_name: _Optional[str] = ..., image: _Optional[str] = ..., create_config_json: _Optional[str] = ..., checkpoint_name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., file_count: _Optional[int] = ..., lazy: _Optional[bool] = ..., emulate: _Optional[bool] = ..., native_plan: _Optional[bool] = ...) -> None: ...

class BeginAck(_message.Message):
    __slots__ = ("need_image", "container_id", "adjusted_json")
    NEED_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_JSON_FIELD_NUMBER: _ClassVar[int]
    need_image: bool
    container_id: str
    adjusted_json: str
    def __init__(self, need_image: _Optional[bool] = ..., container_id: _Optional[str] = ..., adjusted_json: _Optional[str] = ...) -> None: ...

class FileStart(_message.Message):
    __slots__ = ("stream_id", "destination", "path", "volume", "kind", "size", "mode", "link_target", "uid", "gid", "mtime_ns", "opaque")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    destination: Destination
    path: str
    volume: str
    kind: FileKind
    size: int
    mode: int
    link_target: str
    uid: int
    gid: int
    mtime_ns: int
    opaque: bool
    def __init__(self, stream_id: _Optional[int] = ..., destination: _Optional[_Union[Destination, str]] = ..., path: _Optional[str] = ..., volume: _Optional[str] = ..., kind: _Optional[_Union[FileKind, str]] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., link_target: _Optional[str] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., opaque: _Optional[bool] = ...) -> None: ...

class FileData(_message.Message):
    __slots__ = ("stream_id", "data", "codec", "raw_size")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    data: bytes
    codec: str
    raw_size: int
    def __init__(self, stream_id: _Optional[int] = ..., data: _Optional[bytes] = ..., codec: _Optional[str] = ..., raw_size: _Optional[int] = ...) -> None: ...

class FileEnd(_message.Message):
    __slots__ = ("stream_id", "sha256")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    sha256: bytes
    def __init__(self, stream_id: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class FileAck(_message.Message):
    __slots__ = ("stream_id", "ok", "error")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    ok: bool
    error: str
    def __init__(self, stream_id: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Stored(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class Pages(_message.Message):
    __slots__ = ("data", "codec", "raw_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    codec: str
    raw_size: int
    def __init__(self, data: _Optional[bytes] = ..., codec: _Optional[str] = ..., raw_size: _Optional[int] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("file_count",)
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    file_count: int
    def __init__(self, file_count: _Optional[int] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("migration_id", "container_id", "error", "restore_seconds", "bytes_received", "state", "restorer_seconds", "restore_steps")
    class RestoreStepsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESTORE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTORER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STEPS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    container_id: str
    error: str
    restore_seconds: float
    bytes_received: int
    state: OutcomeState
    restorer_seconds: float
    restore_steps: _containers.ScalarMap[str, float]
    def __init__(self, migration_id: _Optional[str] = ..., container_id: _Optional[str] = ..., error: _Optional[str] = ..., restore_seconds: _Optional[float] = ..., bytes_received: _Optional[int] = ..., state: _Optional[_Union[OutcomeState, str]] = ..., restorer_seconds: _Optional[float] = ..., restore_steps: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message", "phase", "code")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    message: str
    phase: str
    code: ErrorCode
    def __init__(self, message: _Optional[str] = ..., phase: _Optional[str] = ..., code: _Optional[_Union[ErrorCode, str]] = ...) -> None: ...

class SourceOpen(_message.Message):
    __slots__ = ("migration_id", "container", "checkpoint_name")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    container: str
    checkpoint_name: str
    def __init__(self, migration_id: _Optional[str] = ..., container: _Optional[str] = ..., checkpoint_name: _Optional[str] = ...) -> None: ...

class SourceFacts(_message.Message):
    __slots__ = ("inspect_json", "memory", "disk", "va_bits", "inet_sockets", "emulated", "readout_blocker")
    INSPECT_JSON_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    VA_BITS_FIELD_NUMBER: _ClassVar[int]
    INET_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    READOUT_BLOCKER_FIELD_NUMBER: _ClassVar[int]
    inspect_json: str
    memory: int
    disk: int
    va_bits: int
    inet_sockets: int
    emulated: bool
    readout_blocker: str
    def __init__(self, inspect_json: _Optional[str] = ..., memory: _Optional[int] = ..., disk: _Optional[int] = ..., va_bits: _Optional[int] = ..., inet_sockets: _Optional[int] = ..., emulated: _Optional[bool] = ..., readout_blocker: _Optional[str] = ...) -> None: ...

class Freeze(_message.Message):
    __slots__ = ("lazy", "readout")
    LAZY_FIELD_NUMBER: _ClassVar[int]
    READOUT_FIELD_NUMBER: _ClassVar[int]
    lazy: bool
    readout: bool
    def __init__(self, lazy: _Optional[bool] = ..., readout: _Optional[bool] = ...) -> None: ...

class Frozen(_message.Message):
    __slots__ = ("file_count", "total_bytes", "checkpoint_seconds", "via", "notes")
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    file_count: int
    total_bytes: int
    checkpoint_seconds: float
    via: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, file_count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., checkpoint_seconds: _Optional[float] = ..., via: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class CrossPrepare(_message.Message):
    __slots__ = ("target_isa", "notify")
    TARGET_ISA_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    target_isa: str
    notify: bool
    def __init__(self, target_isa: _Optional[str] = ..., notify: _Optional[bool] = ...) -> None: ...

class CrossReady(_message.Message):
    __slots__ = ("executables", "regsets")
    EXECUTABLES_FIELD_NUMBER: _ClassVar[int]
    REGSETS_FIELD_NUMBER: _ClassVar[int]
    executables: _containers.RepeatedScalarFieldContainer[str]
    regsets: _containers.RepeatedCompositeFieldContainer[Regset]
    def __init__(self, executables: _Optional[_Iterable[str]] = ..., regsets: _Optional[_Iterable[_Union[Regset, _Mapping]]] = ...) -> None: ...

class Regset(_message.Message):
    __slots__ = ("pid", "regs", "tls")
    PID_FIELD_NUMBER: _ClassVar[int]
    REGS_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    regs: bytes
    tls: bytes
    def __init__(self, pid: _Optional[int] = ..., regs: _Optional[bytes] = ..., tls: _Optional[bytes] = ...) -> None: ...

class SourceEnd(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: SourceAction
    def __init__(self, action: _Optional[_Union[SourceAction, str]] = ...) -> None: ...

class SourceEnded(_message.Message):
    __slots__ = ("running", "present", "container_id")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    running: bool
    present: bool
    container_id: str
    def __init__(self, running: _Optional[bool] = ..., present: _Optional[bool] = ..., container_id: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("client_hello", "agent_hello", "begin", "begin_ack", "file_start", "file_data", "file_end", "file_ack", "commit", "outcome", "query", "abort", "error", "stored", "pages", "source_open", "source_facts", "freeze", "frozen", "source_end", "source_ended", "cross_prepare", "cross_ready")
    CLIENT_HELLO_FIELD_NUMBER: _ClassVar[int]
    AGENT_HELLO_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    BEGIN_ACK_FIELD_NUMBER: _ClassVar[int]
    FILE_START_FIELD_NUMBER: _ClassVar[int]
    FILE_DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_END_FIELD_NUMBER: _ClassVar[int]
    FILE_ACK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OPEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FACTS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_END_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ENDED_FIELD_NUMBER: _ClassVar[int]
    CROSS_PREPARE_FIELD_NUMBER: _ClassVar[int]
    CROSS_READY_FIELD_NUMBER: _ClassVar[int]
    client_hello: ClientHello
    agent_hello: AgentHello
    begin: Begin
    begin_ack: BeginAck
    file_start: FileStart
    file_data: FileData
    file_end: FileEnd
    file_ack: FileAck
    commit: Commit
    outcome: Outcome
    query: Query
    abort: Abort
    error: Error
    stored: Stored
    pages: Pages
    source_open: SourceOpen
    source_facts: SourceFacts
    freeze: Freeze
    frozen: Frozen
    source_end: SourceEnd
    source_ended: SourceEnded
    cross_prepare: CrossPrepare
    cross_ready: CrossReady
    def __init__(self, client_hello: _Optional[_Union[ClientHello, _Mapping]] = ..., agent_hello: _Optional[_Union[AgentHello, _Mapping]] = ..., begin: _Optional[_Union[Begin, _Mapping]] = ..., begin_ack: _Optional[_Union[BeginAck, _Mapping]] = ..., file_start: _Optional[_Union[FileStart, _Mapping]] = ..., file_data: _Optional[_Union[FileData, _Mapping]] = ..., file_end: _Optional[_Union[FileEnd, _Mapping]] = ..., file_ack: _Optional[_Union[FileAck, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., stored: _Optional[_Union[Stored, _Mapping]] = ..., pages: _Optional[_Union[Pages, _Mapping]] = ..., source_open: _Optional[_Union[SourceOpen, _Mapping]] = ..., source_facts: _Optional[_Union[SourceFacts, _Mapping]] = ..., freeze: _Optional[_Union[Freeze, _Mapping]] = ..., frozen: _Optional[_Union[Frozen, _Mapping]] = ..., source_end: _Optional[_Union[SourceEnd, _Mapping]] = ..., source_ended: _Optional[_Union[SourceEnded, _Mapping]] = ..., cross_prepare: _Optional[_Union[CrossPrepare, _Mapping]] = ..., cross_ready: _Optional[_Union[CrossReady, _Mapping]] = ...) -> None: ...
