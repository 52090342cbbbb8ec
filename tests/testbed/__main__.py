"""``python -m tests.testbed up|down|status`` (wrapped by scripts/testbed)."""

from __future__ import annotations

import json
import sys

from .bed import TestBed
from .proc import TestBedError


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "status"):
        print("usage: python -m tests.testbed up|down|status", file=sys.stderr)
        return 2
    bed = TestBed()
    try:
        if argv[0] == "up":
            bed.up()
        elif argv[0] == "down":
            bed.down(everything=True)
        bed._load_state()
        print(json.dumps(bed.status(), indent=2))
    except TestBedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
