"""Property: any bytes fed to the reader give entries or ImageFormatError, never another error or a hang."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from androcond.images import ImageFormatError, ImageKind, ImageReader, Pagemap, show_reader

from .builders import sample_images

SAMPLES = {name: data for name, data in sample_images().items() if not name.startswith(("pages-", "tmpfs"))}
NAMES = sorted(SAMPLES)


PAGES_SIZE = 3 * 4096


def _consume(name: str, data: bytes) -> None:
    error = _try_everything(name, data)
    if error is None:
        return
    if error.file.startswith("pages-"):
        # A pagemap that disagrees with its pages file: named at the first byte no PRESENT entry covers.
        assert name.startswith("pagemap-")
        assert 0 <= error.offset <= PAGES_SIZE
    else:
        assert error.file == name
        assert 0 <= error.offset <= len(data)


def _try_everything(name: str, data: bytes) -> ImageFormatError | None:
    """Everything a caller might do with an image: iterate, decode, show, walk a pagemap."""
    try:
        reader = ImageReader(io.BytesIO(data), name)
        if reader.header.kind is ImageKind.RAW:
            for _ in reader.raw_chunks():
                pass
            return None
        entries = list(reader.entries())
        for entry in entries:
            _ = entry.message
        show_reader(ImageReader(io.BytesIO(data), name))
        if name.startswith("pagemap-"):
            Pagemap.from_entries(entries, name, 4096).check_pages_size(PAGES_SIZE)
    except ImageFormatError as err:
        return err
    return None


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SAMPLES[name])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "size"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "size" and len(data) >= pos + 4:
            data[pos : pos + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return name, bytes(data)


@settings(max_examples=600, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images(case: tuple[str, bytes]) -> None:
    _consume(*case)


@settings(max_examples=300, deadline=2000)
@given(st.sampled_from(NAMES), st.binary(max_size=200))
def test_random_bytes(name: str, data: bytes) -> None:
    _consume(name, data)


@settings(max_examples=200, deadline=2000)
@given(st.sampled_from(NAMES), st.binary(max_size=200))
def test_random_entries_after_valid_header(name: str, tail: bytes) -> None:
    header_len = 4 if name == "inventory.img" else 8
    _consume(name, SAMPLES[name][:header_len] + tail)
