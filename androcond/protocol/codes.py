"""The protocol's enums as Python sees them: a migration's state on the agent and the kind of a failure.
Each value is the name that logs, the agent's outcome files and messages use ("running", "unsafe-path");
`wire`/`of` convert to and from the proto enum (protocol.proto), so no bare string is compared anywhere."""

from __future__ import annotations

from enum import StrEnum
from typing import Self, cast

from . import protocol_pb2 as pb


def _name(proto_name: str, prefix: str) -> str:
    return proto_name.removeprefix(prefix).lower().replace("_", "-")


class OutcomeState(StrEnum):
    UNKNOWN = "unknown"  # the agent never heard of the migration
    RECEIVING = "receiving"
    RESTORING = "restoring"
    PAGING = "paging"  # post-copy: resumed, its pages still arriving
    RUNNING = "running"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def wire(self) -> pb.OutcomeState:
        return cast("pb.OutcomeState", pb.OutcomeState.Value("OUTCOME_" + self.name))

    @classmethod
    def of(cls, value: pb.OutcomeState) -> Self:
        return cls(_name(pb.OutcomeState.Name(value), "OUTCOME_"))


# The agent still works on it: a daemon that asks is told to ask again.
IN_FLIGHT = frozenset({OutcomeState.RECEIVING, OutcomeState.RESTORING, OutcomeState.PAGING})


class ErrorCode(StrEnum):
    INTERNAL = "internal"
    PROTOCOL = "protocol"
    RESTORE = "restore"
    UNSAFE_PATH = "unsafe-path"
    NO_SPACE = "no-space"
    ENGINE = "engine"
    IDLE_TIMEOUT = "idle-timeout"
    SHUTTING_DOWN = "shutting-down"
    REFUSED = "refused"

    @property
    def wire(self) -> pb.ErrorCode:
        return cast("pb.ErrorCode", pb.ErrorCode.Value("ERROR_" + self.name))

    @classmethod
    def of(cls, value: pb.ErrorCode) -> Self:
        return cls(_name(pb.ErrorCode.Name(value), "ERROR_"))
