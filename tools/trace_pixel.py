"""Print every intermediate of one pixel, and optionally C's printout beside it.

Usage::

    python -m tools.trace_pixel SLOW FAST [--c-bin PATH] [--parity] [--engine E] -- <nanoBragg flags>

Runs our command line in-process, in a temporary folder, with
``-trace_pixel SLOW FAST`` and prints its ``TRACE`` lines.  With a C binary
(``--c-bin`` or ``NB_C_BIN``) it also runs C with ``-printout_pixel FAST SLOW``
(C names the fast index first) and prints the quantities both report side by
side: stol, pixel position, hkl, hkl0, F_cell, F_latt, I, polar, omega,
capture fraction and the pixel value.  Our run gets ``-c_parity`` when C is
compared, unless ``--spec`` is given.

C prints its numbers with ``%g`` (six significant digits), so relative
differences of a few 1e-6 are the printing, not the physics.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.compare_c import ToolError, find_c_binary, prepare_folder, read_float, read_smv

# Flags appended to every traced run: the outputs go to the temporary folder.
_QUIET = ["-floatfile", "float.bin", "-intfile", "int.img", "-nonoise", "-nopgm", "-noprogress"]

# Quantities both programs report: (our TRACE name, label in the table).
SHARED = [
    ("stol", "stol [1/m]"),
    ("pixel_pos_x", "pixel pos x [m]"), ("pixel_pos_y", "pixel pos y [m]"), ("pixel_pos_z", "pixel pos z [m]"),
    ("h", "h"), ("k", "k"), ("l", "l"), ("h0", "h0"), ("k0", "k0"), ("l0", "l0"),
    ("F_cell", "F_cell"), ("F_latt", "F_latt"), ("I_sum", "I"),
    ("polar", "polar"), ("omega", "omega [sr]"), ("capture_fraction", "capfrac"),
    ("pixel_value", "pixel value"),
]

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)(?:inity)?)"
_C_PATTERNS = [
    (re.compile(r"^\s*(\d+)\s+(\d+)\s*:\s*stol\s*=\s*" + _NUM), ("fast", "slow", "stol")),
    (re.compile(r"^at\s+" + _NUM + r"\s+" + _NUM + r"\s+" + _NUM), ("pixel_pos_x", "pixel_pos_y", "pixel_pos_z")),
    (re.compile(r"^hkl=\s*" + _NUM + r"\s+" + _NUM + r"\s+" + _NUM + r"\s+hkl0=\s*" + _NUM + r"\s+" + _NUM
                + r"\s+" + _NUM), ("h", "k", "l", "h0", "k0", "l0")),
    (re.compile(r"^\s*F_cell=\s*" + _NUM + r"\s+F_latt=\s*" + _NUM + r"\s+I\s*=\s*" + _NUM),
     ("F_cell", "F_latt", "I_sum")),
    (re.compile(r"^polar\s+" + _NUM), ("polar",)),
    (re.compile(r"^omega\s+" + _NUM), ("omega",)),
    (re.compile(r"^capfrac\s+" + _NUM), ("capture_fraction",)),
    (re.compile(r"^pixel\s+" + _NUM), ("pixel_value",)),
]


@dataclass
class OurTrace:
    """Our run of one traced pixel."""

    header: str            # the "TRACE pixel slow=.. fast=.. engine=.." line
    lines: list            # every TRACE line, as printed
    values: dict           # name -> float
    image: np.ndarray      # the float image (slow, fast)
    stdout: str


def parse_trace(lines) -> tuple[str, dict]:
    """(header line, name -> value) from ``TRACE`` lines."""
    header, values = "", {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[0] != "TRACE":
            continue
        if parts[1] == "pixel":
            header = line
            continue
        try:
            values[parts[1]] = float(parts[2])
        except ValueError:
            continue
    return header, values


def parse_c_printout(text: str, slow: int | None = None, fast: int | None = None) -> dict:
    """The numbers of C's ``-printout_pixel`` block for one pixel (empty if none)."""
    found: dict = {}
    inside = False
    for line in text.splitlines():
        for pattern, names in _C_PATTERNS:
            m = pattern.match(line)
            if not m:
                continue
            if names[0] == "fast":
                f, s = int(m.group(1)), int(m.group(2))
                inside = (fast is None or f == fast) and (slow is None or s == slow)
                if inside:
                    found = {"fast": f, "slow": s, "stol": float(m.group(3))}
            elif inside:
                found.update({name: float(v) for name, v in zip(names, m.groups())})
                if names[0] == "pixel_value":
                    inside = False
            break
    return found


def trace_ours(slow: int, fast: int, flags, parity: bool = False, engine: str = "numba", cwd=None) -> OurTrace:
    """Run ``reference.cli.main`` with ``-trace_pixel`` in a temporary folder."""
    from reference.cli import main as cli_main

    folder = tempfile.mkdtemp(prefix="nb_trace_")
    here = os.getcwd()
    try:
        args = prepare_folder(list(flags), folder, cwd or here)
        args += ["-trace_pixel", str(slow), str(fast), "-engine", engine, *_QUIET]
        if parity:
            args.append("-c_parity")
        out, err = io.StringIO(), io.StringIO()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli_main(args)
        finally:
            os.chdir(here)
        if status != 0:
            raise ToolError(f"our run failed (status {status}): {err.getvalue().strip() or out.getvalue()[-500:]}")
        shape = read_smv(Path(folder) / "int.img").data.shape
        image = read_float(Path(folder) / "float.bin", shape)
        lines = [line for line in out.getvalue().splitlines() if line.startswith("TRACE")]
        header, values = parse_trace(lines)
        return OurTrace(header, lines, values, image, out.getvalue())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def trace_c(c_bin: str, slow: int, fast: int, flags, cwd=None, timeout=None) -> tuple[dict, str]:
    """Run the C binary with ``-printout_pixel FAST SLOW``; (numbers, stdout)."""
    folder = tempfile.mkdtemp(prefix="nb_trace_c_")
    try:
        args = prepare_folder(list(flags), folder, cwd)
        cmd = [c_bin, *args, "-printout_pixel", str(fast), str(slow), *_QUIET]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, errors="replace", timeout=timeout)
        if proc.returncode != 0:
            raise ToolError(f"C run failed (status {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}")
        return parse_c_printout(proc.stdout, slow, fast), proc.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def side_by_side(ours: dict, c: dict) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, ours, C, relative difference) for the quantities both report."""
    rows = []
    for name, label in SHARED:
        o, r = ours.get(name), c.get(name)
        rows.append((label, o, r, _rel(o, r) if o is not None and r is not None else None))
    return rows


def format_side_by_side(rows) -> str:
    def num(v):
        return "-" if v is None else f"{v:.10g}"
    out = [f"{'quantity':<18} {'ours':>22} {'C (printout)':>22} {'rel diff':>10}"]
    for label, o, r, d in rows:
        out.append(f"{label:<18} {num(o):>22} {num(r):>22} {('-' if d is None else f'{d:.2e}'):>10}")
    return "\n".join(out)


def parse_args(argv):
    argv = list(argv)
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m tools.trace_pixel",
                                description="Trace one pixel with our engine (and C's -printout_pixel beside it).")
    p.add_argument("slow", type=int, help="slow pixel index (row)")
    p.add_argument("fast", type=int, help="fast pixel index (column)")
    p.add_argument("--c-bin", help="C nanoBragg binary to compare with (default: $NB_C_BIN, if set)")
    p.add_argument("--no-c", action="store_true", help="do not run C even if NB_C_BIN is set")
    p.add_argument("--parity", action="store_true", help="add -c_parity to our run (default when C is compared)")
    p.add_argument("--spec", action="store_true", help="never add -c_parity")
    p.add_argument("--engine", default="numba", help="our engine (default numba)")
    opts = p.parse_args(own)
    if not flags:
        p.error("give the nanoBragg flags after --")
    opts.flags = flags
    return opts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = parse_args(argv)
    try:
        c_bin = None if opts.no_c else find_c_binary(opts.c_bin, required=False)
        parity = (opts.parity or c_bin is not None) and not opts.spec
        ours = trace_ours(opts.slow, opts.fast, opts.flags, parity=parity, engine=opts.engine)
        print("\n".join(ours.lines))
        value = float(ours.image[opts.slow, opts.fast])
        print(f"float image at slow={opts.slow} fast={opts.fast}: {value:.9g}")
        if c_bin is None:
            return 0
        c_values, c_stdout = trace_c(c_bin, opts.slow, opts.fast, opts.flags)
    except ToolError as exc:
        print(f"trace_pixel: error: {exc}", file=sys.stderr)
        return 2
    print()
    if not c_values:
        print(f"C printed no -printout_pixel block for fast={opts.fast} slow={opts.slow} "
              "(pixel outside the detector, the ROI or the mask?)")
        return 1
    print(f"C -printout_pixel {opts.fast} {opts.slow} beside our trace"
          f"{' (ours with -c_parity)' if parity else ''}:")
    print(format_side_by_side(side_by_side(ours.values, c_values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
