"""The root of androcond's exceptions; each layer derives its own from it."""

from __future__ import annotations


class AndrocondError(Exception):
    """Base of every error androcond raises on purpose (as opposed to bugs)."""


class ConfigError(AndrocondError):
    """The configuration is missing, unreadable or invalid. The CLI exits 2 on it."""
