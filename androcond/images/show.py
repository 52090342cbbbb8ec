"""`crit show`-like JSON view of an image, for humans and logs (not an exchange format)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from .files import StrPath, open_image
from .framing import Entry, ImageReader
from .magic import ImageKind

HEX_BYTES = 32  # how much of an opaque blob to show


def _blob(data: bytes, hex_bytes: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"length": len(data), "hex": data[:hex_bytes].hex()}
    if len(data) > hex_bytes:
        summary["truncated"] = True
    return summary


def _unknown_numbers(message: Message) -> list[int]:
    fields = UnknownFieldSet(message)
    return sorted({int(fields[i].field_number) for i in range(len(fields))})


def show_message(message: Message) -> dict[str, Any]:
    """A message as a JSON-able dict; numbers of fields our schema does not declare under `_unknown`."""
    try:
        shown: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except Exception as exc:  # e.g. a non-UTF-8 path in a string field
        shown = {"_error": f"cannot render as JSON: {exc}"}
    unknown = _unknown_numbers(message)
    if unknown:
        shown["_unknown"] = unknown
    return shown


def show_entry(entry: Entry, *, hex_bytes: int = HEX_BYTES) -> dict[str, Any]:
    message = entry.message
    shown = show_message(message) if message is not None else {"_opaque": _blob(entry.raw, hex_bytes)}
    if entry.extra:
        shown["_extra"] = _blob(entry.extra, hex_bytes)
    return shown


def show_reader(reader: ImageReader, *, hex_bytes: int = HEX_BYTES) -> dict[str, Any]:
    """Consume a reader into {"file", "magic", "entries"} (raw images: {"file", "magic", "size", "head"})."""
    result: dict[str, Any] = {"file": reader.name, "magic": reader.header.name}
    if reader.header.kind is ImageKind.RAW:
        size, head = 0, b""
        for chunk in reader.raw_chunks():  # streamed: pages files can be gigabytes
            if len(head) < hex_bytes:
                head += chunk[: hex_bytes - len(head)]
            size += len(chunk)
        result["size"] = size
        result["head"] = head.hex()
        return result
    result["entries"] = [show_entry(entry, hex_bytes=hex_bytes) for entry in reader.entries()]
    return result


def show_image(path: StrPath, *, hex_bytes: int = HEX_BYTES) -> dict[str, Any]:
    """Decode the image at `path` to a JSON-able dict. Raises ImageFormatError on malformed input."""
    with open_image(path) as reader:
        return show_reader(reader, hex_bytes=hex_bytes)
