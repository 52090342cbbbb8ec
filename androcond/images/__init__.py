"""CRIU checkpoint image codec: read, edit and write the images of a `criu dump` directory.

Entries keep their original bytes, so reading and writing an image is byte-identical; only messages
that were changed are re-serialized (with their unknown fields). All I/O is synchronous and streaming:
run it in a thread (asyncio.to_thread) from async code. Malformed input raises ImageFormatError.
"""

from . import criu_pb2 as pb
from .errors import ImageFormatError
from .files import Image, copy_image, image_files, open_image, read_image, write_image, write_image_to
from .framing import (
    CHUNK_SIZE,
    Entry,
    ImageHeader,
    ImageReader,
    fixed_extra_length,
    message_type_for,
)
from .magic import MAGICS, ImageKind, expected_magic, is_raw_name, magic_name
from .pagemap import (
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    Pagemap,
    PageRun,
    check_pagemaps,
    entry_flags,
    entry_nr_pages,
    host_page_size,
)
from .roundtrip import Difference, roundtrip_dir, roundtrip_file
from .show import show_entry, show_image, show_message, show_reader
from .writer import ImageWriter

__all__ = [
    "CHUNK_SIZE",
    "MAGICS",
    "PE_LAZY",
    "PE_PARENT",
    "PE_PRESENT",
    "Difference",
    "Entry",
    "Image",
    "ImageFormatError",
    "ImageHeader",
    "ImageKind",
    "ImageReader",
    "ImageWriter",
    "PageRun",
    "Pagemap",
    "check_pagemaps",
    "copy_image",
    "entry_flags",
    "entry_nr_pages",
    "expected_magic",
    "fixed_extra_length",
    "host_page_size",
    "image_files",
    "is_raw_name",
    "magic_name",
    "message_type_for",
    "open_image",
    "pb",
    "read_image",
    "roundtrip_dir",
    "roundtrip_file",
    "show_entry",
    "show_image",
    "show_message",
    "show_reader",
    "write_image",
    "write_image_to",
]
