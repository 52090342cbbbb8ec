"""A minimal protobuf wire reader, for the CRIU messages our codec's schema does not declare.

androcond.images carries undeclared fields (inet_sk_entry, sa_entry, fs_entry, task_kobj_ids_entry, ...) as
unknown fields in the entry's bytes; this reads them by field number. Field numbers are CRIU's
(images/*.proto): they are facts of the format.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..images import ImageFormatError

Value = int | bytes
Fields = dict[int, list[Value]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ImageFormatError("<message>", pos, "truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ImageFormatError("<message>", pos, "varint too long")


def iter_fields(data: bytes) -> Iterator[tuple[int, Value]]:
    """(field number, value) pairs: varints and fixed-width values as int, length-delimited as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 1:
            yield number, int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ImageFormatError("<message>", pos, "truncated length-delimited field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 5:
            yield number, int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise ImageFormatError("<message>", pos, f"unsupported wire type {wire}")


def parse(data: bytes) -> Fields:
    fields: Fields = {}
    for number, value in iter_fields(data):
        fields.setdefault(number, []).append(value)
    return fields


def get_int(fields: Fields, number: int, default: int = 0) -> int:
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    return value if isinstance(value, int) else default


def get_ints(fields: Fields, number: int) -> list[int]:
    """A repeated scalar, packed or not."""
    result: list[int] = []
    for value in fields.get(number, []):
        if isinstance(value, int):
            result.append(value)
        else:  # packed varints
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                result.append(item)
    return result


def get_bytes(fields: Fields, number: int) -> bytes | None:
    values = fields.get(number)
    if not values or not isinstance(values[-1], bytes):
        return None
    return values[-1]


def get_messages(fields: Fields, number: int) -> list[Fields]:
    return [parse(v) for v in fields.get(number, []) if isinstance(v, bytes)]


def get_message(fields: Fields, number: int) -> Fields | None:
    data = get_bytes(fields, number)
    return None if data is None else parse(data)


def get_str(fields: Fields, number: int) -> str:
    data = get_bytes(fields, number)
    return "" if data is None else data.decode("utf-8", "surrogateescape")


# Encoding, for synthetic images in tests.


def _put_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode(*items: tuple[int, int | bytes | str]) -> bytes:
    """A message from (field number, value) pairs: int as varint, bytes/str as length-delimited."""
    out = bytearray()
    for number, value in items:
        if isinstance(value, int):
            out += _put_varint(number << 3) + _put_varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _put_varint(number << 3 | 2) + _put_varint(len(data)) + data
    return bytes(out)
