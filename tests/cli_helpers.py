"""What the command-line tests share: a small valid run, and running the CLI in-process."""

from __future__ import annotations

import os

from reference.cli import main

CELL = ["-cell", "50", "60", "70", "90", "90", "90"]
TINY = ["-N", "2", "-detpixels", "8", "-noprogress", "-seed", "1"]
# a complete, valid run: add one bad flag to it (later flags override earlier ones)
GOOD = CELL + ["-default_F", "10"] + TINY
OUTPUTS = ("floatimage.bin", "intimage.img", "image.pgm", "noiseimage.img")


def run_cli(capsys, argv):
    """(exit status, stdout, stderr) of one in-process run."""
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def expect_error(capsys, folder, argv, *fragments):
    """``argv`` fails with exactly one clean error line holding ``fragments``, and writes nothing."""
    before = set(os.listdir(folder))
    rc, _out, err = run_cli(capsys, argv)
    lines = err.splitlines()
    assert rc != 0, f"{argv} succeeded"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("nanobragg: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    left = set(os.listdir(folder)) - before
    assert not left, f"{argv} left files behind: {sorted(left)}"
    return lines[0]
