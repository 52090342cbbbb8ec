"""Errors raised by the CRIU image codec."""

from __future__ import annotations

from ..errors import AndrocondError


class ImageFormatError(AndrocondError, ValueError):
    """A CRIU image is malformed: names the file and the byte offset where decoding failed."""

    def __init__(self, file: str, offset: int, reason: str) -> None:
        super().__init__(file, offset, reason)
        self.file = file
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}: at byte offset {self.offset} (0x{self.offset:x}): {self.reason}"
