"""Structured logging with structlog.

Logs go to stderr (stdout is kept for command output such as ``--json`` documents). They are JSON lines when
stderr is not a terminal (systemd's journal, CI) and readable console lines on a terminal. Context such as the
container or migration id is bound for a block with :func:`log_context` (contextvars: each task has its own),
so concurrent migrations never mix their fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextlib import AbstractContextManager
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from .config import LogFormat

# Keys whose values must never reach a log line, whatever the caller passed.
SECRET_KEYS = frozenset({"secret", "api_token", "token", "password", "passphrase", "authorization",
                         "signature", "private_key"})
REDACTED = "***"


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace the value of any secret-looking key, also one level down inside dicts."""
    for key, value in event_dict.items():
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, MutableMapping):
            event_dict[key] = {
                k: (REDACTED if str(k).lower() in SECRET_KEYS else v) for k, v in value.items()
            }
    return event_dict


def configure_logging(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if use_json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger(component=name.removeprefix("androcond."))
    return logger


def log_context(**values: Any) -> AbstractContextManager[None]:
    """Bind context for a block only, inside a task that handles many subjects in turn."""
    return structlog.contextvars.bound_contextvars(**values)
