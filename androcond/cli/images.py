"""`androcond images show|roundtrip|recode`: the codec and the recoder from the command line.

Exit codes as for every verb: 0 ok, 1 failed (bad image, a difference, a refused recode), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..images.errors import ImageFormatError
from ..images.roundtrip import roundtrip_dir
from ..images.show import show_image
from ..recoder import (
    DEFAULT_DROPPED_MOUNTS,
    ISAS,
    PROFILES,
    RecodeOptions,
    VdsoTemplate,
    recode,
)

EXIT_OK, EXIT_FAILED = 0, 1


def register(commands: Any) -> None:
    images = commands.add_parser("images", help="decode, check and recode CRIU checkpoint images")
    verbs = images.add_subparsers(dest="images_command", metavar="VERB", required=True)

    show = verbs.add_parser("show", help="decode one image (like `crit show`)")
    show.add_argument("file", type=Path, metavar="FILE")
    show.add_argument("--json", action="store_true", help="one compact JSON document")
    show.set_defaults(handler=_cmd_show)

    roundtrip = verbs.add_parser("roundtrip", help="decode and re-encode every image; exit 1 on any difference")
    roundtrip.add_argument("directory", type=Path, metavar="DIR")
    roundtrip.add_argument("--reencode", action="store_true",
                           help="re-serialize every decoded message, not only changed ones (shows where "
                                "protobuf's field order differs from CRIU's; differences are then expected)")
    roundtrip.add_argument("--json", action="store_true", help="one JSON document: file -> null or difference")
    roundtrip.set_defaults(handler=_cmd_roundtrip)

    rec = verbs.add_parser("recode", help="recode a dump for a target ISA, Android and/or the target's setup")
    rec.add_argument("src", type=Path, metavar="SRC_DIR")
    rec.add_argument("out", type=Path, metavar="OUT_DIR", help="created; must be empty if it exists")
    rec.add_argument("--target", required=True, choices=ISAS)
    rec.add_argument("--root", type=Path, default=Path("/"), metavar="ROOTFS",
                     help="root filesystem the tasks' paths resolve in (default: /)")
    rec.add_argument("--profile", choices=PROFILES, help="android: drop seccomp, LSM profile and mountpoints")
    rec.add_argument("--drop-mount", action="append", metavar="PATH", dest="drop_mounts",
                     help="with --profile android, a mountpoint to drop (repeat; replaces the default list: "
                          f"{', '.join(DEFAULT_DROPPED_MOUNTS)})")
    rec.add_argument("--vdso", type=Path, metavar="FILE",
                     help="the target's vdso image (cross-ISA recode; the device's own is best)")
    rec.add_argument("--vvar-pages", type=int, default=2, metavar="N",
                     help="pages of the target's vvar area, placed before the vdso (default: 2)")
    rec.add_argument("--page-size", type=int, default=4096, metavar="BYTES", help="target page size")
    rec.add_argument("--target-criu", default="", metavar="VERSION",
                     help="the target's CRIU version: older than 4.2, page counts are written where it reads them")
    rec.add_argument("--cgroup-v2-target", action="store_true",
                     help="the dump's cgroups are v1 and the target's v2: drop the controller mounts")
    rec.add_argument("--absent-mount", action="append", default=[], metavar="PATH", dest="absent_mounts",
                     help="a mountpoint the target lacks (e.g. /proc/acpi on arm64): dropped (repeat)")
    rec.add_argument("--json", action="store_true", help="print the report as one JSON document")
    rec.set_defaults(handler=_cmd_recode)


def _fail(message: str) -> int:
    print(f"androcond: error: {message}", file=sys.stderr)
    return EXIT_FAILED


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        shown = show_image(args.file)
    except ImageFormatError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.file}: {exc.strerror or exc}")
    print(json.dumps(shown) if args.json else json.dumps(shown, indent=2))
    return EXIT_OK


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    try:
        result = roundtrip_dir(args.directory, reencode=args.reencode)
    except ImageFormatError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.directory}: {exc.strerror or exc}")
    differences = {name: diff for name, diff in result.items() if diff is not None}
    if args.json:
        print(json.dumps({name: (None if d is None else {"offset": d.offset, "reason": d.reason})
                          for name, d in result.items()}))
    else:
        for diff in differences.values():
            print(diff)
        print(f"{len(result) - len(differences)} of {len(result)} files identical")
    return EXIT_FAILED if differences else EXIT_OK


def _cmd_recode(args: argparse.Namespace) -> int:
    vdso = None
    if args.vdso is not None:
        vdso = VdsoTemplate.load(args.vdso, vvar_pages=args.vvar_pages, page_size=args.page_size)
    options = RecodeOptions(
        target=args.target,
        root=args.root,
        profile=args.profile,
        vdso=vdso,
        dropped_mounts=tuple(args.drop_mounts) if args.drop_mounts else DEFAULT_DROPPED_MOUNTS,
        cgroup_v1_to_v2=args.cgroup_v2_target,
        target_criu=args.target_criu,
        absent_mounts=tuple(args.absent_mounts),
    )
    try:
        report = recode(args.src, args.out, options)
    except ImageFormatError as exc:  # RecodeError is an AndrocondError: main() reports it, exit 1
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    summary = {
        "source": report.source,
        "target": report.target,
        "stages": report.stages,
        "files_copied": report.stats.files_copied,
        "files_rewritten": report.stats.rewritten,
        "bytes_written": report.stats.bytes_written,
        "seconds": round(report.seconds, 3),
        "warnings": report.warnings,
    }
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        stages = ", ".join(report.stages) or "identity"
        print(f"{report.source} -> {report.target} ({stages}): {report.stats.files_copied} files copied, "
              f"{len(report.stats.rewritten)} rewritten, {report.stats.bytes_written} bytes in {report.seconds:.2f}s")
    return EXIT_OK
