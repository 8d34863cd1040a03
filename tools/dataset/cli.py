"""Command line of ``nanobragg-dataset`` (being written: issue 10)."""

import sys


def console_main() -> None:
    print("nanobragg-dataset: error: not implemented yet", file=sys.stderr)
    sys.exit(2)
