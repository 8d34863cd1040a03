"""Run the C ``nanoBragg`` and our command line on the same flags and compare.

Usage::

    python -m tools.compare_c [--c-bin PATH] [--parity] [--threads N] -- <nanoBragg flags>

The C binary is the user's own build: ``--c-bin`` or the ``NB_C_BIN``
environment variable.  Each program runs in its own temporary folder; input
files named by a relative path (``-mat inputs/A.mat``) are linked into both
folders, so the flags are passed unchanged.  ``--parity`` adds ``-c_parity``
to our run (emulate the verified C quirks).

Printed: float image max abs / relative difference, the fraction of pixels
within 1e-5 relative + 1e-7 of the image maximum, correlation, int image
pixels within 1 count, SMV header key differences, noise image identical
fraction, PGM agreement, and a diff of the stdout lines that differ
(progress lines ignored).  Exit status 0 when the parity criteria hold
(see :data:`CRITERIA`), 1 otherwise, 2 on a usage error.

The helpers here (finding the C binary, linking inputs, running our CLI,
reading the outputs) are shared by :mod:`tools.benchmark` and
:mod:`tools.trace_pixel`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reference.flags import is_number

REPO_ROOT = Path(__file__).resolve().parents[1]

# The criteria for "matches the C program" (same numbers as tests/corpus.py).
CRITERIA = {
    "float_close_fraction": 0.999,   # pixels with |ours - C| <= 1e-5 |C| + 1e-7 max|C|
    "float_correlation": 0.99999,
    "int_within_1_fraction": 0.999,
    "noise_identical_fraction": 0.99,
    "pgm_within_1_fraction": 0.999,
}
FLOAT_RTOL = 1e-5
FLOAT_ATOL_OF_MAX = 1e-7

# Output flags (both spellings) -> kind, and C's default file names.
OUTPUT_FLAGS = {
    "-floatfile": "float", "-floatimage": "float",
    "-intfile": "int", "-intimage": "int",
    "-noisefile": "noise", "-noiseimage": "noise",
    "-pgmfile": "pgm", "-pgmimage": "pgm",
}
DEFAULT_OUTPUTS = {"float": "floatimage.bin", "int": "intimage.img", "noise": "noiseimage.img", "pgm": "image.pgm"}

_PROGRESS = re.compile(r"^\s*\d+% done\s*$")


class ToolError(Exception):
    """A problem with the tool's own inputs (missing binary, bad arguments)."""


# ---------------------------------------------------------------------------
# shared helpers: binaries, environments, working folders
# ---------------------------------------------------------------------------

def find_c_binary(option: str | None, required: bool = True) -> str | None:
    """The C binary from ``--c-bin`` or ``NB_C_BIN``; None (or ToolError) when absent."""
    path = option or os.environ.get("NB_C_BIN") or None
    if path is None:
        if required:
            raise ToolError("no C binary: pass --c-bin PATH or set NB_C_BIN")
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ToolError(f"C binary {path} does not exist or is not executable")
    return path


def python_env(threads: int | None = None, base: dict | None = None) -> dict:
    """An environment in which ``python -m reference.cli`` imports this checkout."""
    env = dict(os.environ if base is None else base)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    if threads is not None:
        env.update(thread_env(threads))
    return env


def thread_env(threads: int) -> dict:
    """Variables that pin OpenMP (C, torch) and Numba to ``threads`` threads."""
    n = str(int(threads))
    return {"OMP_NUM_THREADS": n, "NUMBA_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def our_command(flags, engine_flags=()) -> list[str]:
    """The command line that runs our program with this interpreter."""
    return [sys.executable, "-m", "reference.cli", *flags, *engine_flags]


def output_values(tokens) -> set[int]:
    """Indices of the tokens that are output file names."""
    return {i + 1 for i, t in enumerate(tokens[:-1]) if t in OUTPUT_FLAGS}


def output_files(tokens) -> dict[str, str]:
    """Output kind -> file name the run writes (or would write), last flag wins."""
    files = dict(DEFAULT_OUTPUTS)
    for i, token in enumerate(tokens[:-1]):
        if token in OUTPUT_FLAGS:
            files[OUTPUT_FLAGS[token]] = tokens[i + 1]
    return files


def prepare_folder(tokens, folder, cwd=None) -> list[str]:
    """Make ``folder`` a working folder for ``tokens``; returns the tokens to run.

    A relative path that exists under ``cwd`` has its first component linked
    into ``folder`` (``inputs/A.mat`` links ``inputs``), so the token stays as
    it is; one that starts with ``..`` becomes absolute.  Output file names
    are never linked (the run must not write into ``cwd``); their parent
    folders are created instead.
    """
    cwd = Path(cwd or os.getcwd())
    folder = Path(folder)
    outputs = output_values(tokens)
    result = list(tokens)
    for i, token in enumerate(tokens):
        if i in outputs:
            parent = Path(token).parent
            if not Path(token).is_absolute() and str(parent) not in ("", "."):
                (folder / parent).mkdir(parents=True, exist_ok=True)
            continue
        if not token or token.startswith("-") or is_number(token) or os.path.isabs(token):
            continue
        source = cwd / token
        if not os.path.lexists(source):
            continue
        first = Path(token).parts[0]
        if first in ("..", "."):
            result[i] = str(source.resolve())
            continue
        target = folder / first
        if not os.path.lexists(target):
            target.symlink_to((cwd / first).resolve())
    return result


@dataclass
class RunResult:
    """One program run in its own folder."""

    label: str
    folder: Path
    returncode: int
    stdout: str
    stderr: str
    files: dict = field(default_factory=dict)   # kind -> path (name as passed)

    def path(self, kind: str) -> Path | None:
        name = self.files.get(kind)
        if name is None:
            return None
        p = Path(name) if os.path.isabs(name) else self.folder / name
        return p if p.exists() else None


def run_in_folder(label, command, tokens, folder, env=None, timeout=None, cwd=None) -> RunResult:
    """Link inputs into ``folder``, run ``command + tokens`` there, capture everything."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    args = prepare_folder(tokens, folder, cwd)
    proc = subprocess.run([*command, *args], cwd=folder, env=env, capture_output=True, text=True,
                          errors="replace", timeout=timeout)
    return RunResult(label, folder, proc.returncode, proc.stdout, proc.stderr, output_files(tokens))


# ---------------------------------------------------------------------------
# reading outputs
# ---------------------------------------------------------------------------

@dataclass
class SMV:
    raw_header: bytes
    entries: dict
    data: np.ndarray   # uint16 (slow, fast)


def read_smv(path) -> SMV:
    """An SMV image with its raw header bytes and KEY=value entries."""
    from reference.fileio import read_smv as _read

    image = _read(path)
    raw = Path(path).read_bytes()[:image.header_bytes]
    return SMV(raw, image.entries(), np.asarray(image.data).reshape(image.height, image.width))


def read_float(path, shape=None) -> np.ndarray:
    """Raw little-endian float32 pixels, reshaped to (slow, fast) when the shape is known."""
    data = np.fromfile(path, dtype="<f4")
    if shape is not None and data.size == shape[0] * shape[1]:
        return data.reshape(shape)
    return data


# ---------------------------------------------------------------------------
# comparison (pure functions on arrays and texts)
# ---------------------------------------------------------------------------

def compare_float(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Agreement of two float images: differences, close fraction, correlation.

    ``max_rel`` is max |ours - ref| / max(|ref|, 1e-7 max|ref|): a pixel's
    relative difference, with a floor so that empty pixels do not divide by 0.
    """
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(ref, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return {"shape_mismatch": (np.asarray(ours).shape, np.asarray(ref).shape), "close_fraction": 0.0,
                "correlation": 0.0, "max_abs": float("inf"), "max_rel": float("inf"), "ref_max": float("nan"),
                "n": int(b.size)}
    peak = float(np.abs(b).max()) if b.size else 0.0
    diff = np.abs(a - b)
    finite = np.isfinite(a) & np.isfinite(b)
    if b.size == 0:
        return {"close_fraction": 1.0, "correlation": 1.0, "max_abs": 0.0, "max_rel": 0.0, "ref_max": 0.0, "n": 0}
    close = (diff <= FLOAT_RTOL * np.abs(b) + FLOAT_ATOL_OF_MAX * peak) | (a == b)
    floor = FLOAT_ATOL_OF_MAX * peak if peak > 0 else np.finfo(np.float64).tiny
    rel = np.where(a == b, 0.0, diff / np.maximum(np.abs(b), floor))
    if not finite.all():
        rel = np.where(finite | (a == b), rel, np.inf)
    if a.std() == 0 or b.std() == 0 or not finite.all():
        corr = 1.0 if np.array_equal(a, b) else 0.0
    else:
        corr = float(np.corrcoef(a, b)[0, 1])
    return {"close_fraction": float(close.mean()), "correlation": corr, "max_abs": float(np.nanmax(diff)),
            "max_rel": float(rel.max()), "ref_max": peak, "n": int(b.size),
            "identical_fraction": float((a == b).mean())}


def within_counts(ours: np.ndarray, ref: np.ndarray, counts: int = 1) -> float:
    """Fraction of integer pixels that differ by at most ``counts``."""
    a = np.asarray(ours).astype(np.int64)
    b = np.asarray(ref).astype(np.int64)
    if a.shape != b.shape:
        return 0.0
    return float((np.abs(a - b) <= counts).mean()) if b.size else 1.0


def identical_fraction(ours: np.ndarray, ref: np.ndarray) -> float:
    a, b = np.asarray(ours), np.asarray(ref)
    if a.shape != b.shape:
        return 0.0
    return float((a == b).mean()) if b.size else 1.0


def header_differences(ours: dict, ref: dict) -> list[tuple[str, str | None, str | None]]:
    """(key, our value, C's value) for every SMV header key that differs or is missing."""
    keys = list(ref) + [k for k in ours if k not in ref]
    return [(k, ours.get(k), ref.get(k)) for k in keys if ours.get(k) != ref.get(k)]


def stdout_lines(text: str) -> list[str]:
    """Stdout lines worth comparing: progress lines and trailing blanks dropped."""
    lines = []
    for line in text.replace("\r", "\n").split("\n"):
        if _PROGRESS.match(line):
            continue
        lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def stdout_diff(ours: str, ref: str) -> list[str]:
    """Unified diff (no context) of the stdout lines that differ, C first."""
    return [line for line in difflib.unified_diff(stdout_lines(ref), stdout_lines(ours), "C", "ours", n=0,
                                                  lineterm="")]


@dataclass
class Comparison:
    """Everything :func:`compare_runs` measured, and which criteria failed."""

    float_stats: dict | None = None
    int_within_1: float | None = None
    header_diffs: list = field(default_factory=list)
    header_bytes_equal: bool | None = None
    noise_identical: float | None = None
    noise_seeded: bool = True
    pgm_within_1: float | None = None
    stdout_diff: list = field(default_factory=list)
    missing: list = field(default_factory=list)       # (kind, who lacks it)
    notes: list = field(default_factory=list)

    def failures(self) -> list[str]:
        """The parity criteria that do not hold (empty: parity)."""
        fails = list(f"{kind} image missing from {who}" for kind, who in self.missing)
        s = self.float_stats
        if s is not None:
            if "shape_mismatch" in s:
                fails.append(f"float image shapes differ: {s['shape_mismatch']}")
            if s["close_fraction"] < CRITERIA["float_close_fraction"]:
                fails.append(f"float image within tolerance on {s['close_fraction']:.5f} of pixels "
                             f"(< {CRITERIA['float_close_fraction']})")
            if s["correlation"] < CRITERIA["float_correlation"]:
                fails.append(f"float image correlation {s['correlation']:.7f} (< {CRITERIA['float_correlation']})")
        if self.int_within_1 is not None and self.int_within_1 < CRITERIA["int_within_1_fraction"]:
            fails.append(f"int image within 1 count on {self.int_within_1:.5f} of pixels")
        if self.header_diffs:
            fails.append(f"SMV headers differ in {len(self.header_diffs)} key(s)")
        elif self.header_bytes_equal is False:
            fails.append("SMV header bytes differ (same keys and values: layout or padding)")
        if (self.noise_seeded and self.noise_identical is not None
                and self.noise_identical < CRITERIA["noise_identical_fraction"]):
            fails.append(f"noise image identical on {self.noise_identical:.4f} of pixels")
        if self.pgm_within_1 is not None and self.pgm_within_1 < CRITERIA["pgm_within_1_fraction"]:
            fails.append(f"PGM within 1 on {self.pgm_within_1:.5f} of pixels")
        return fails


def _pgm_pixels(path: Path, n: int) -> np.ndarray:
    raw = path.read_bytes()
    return np.frombuffer(raw[-n:], np.uint8) if n and len(raw) >= n else np.zeros(0, np.uint8)


def compare_runs(ours: RunResult, ref: RunResult, seeded: bool = True) -> Comparison:
    """Compare the files and stdout of two runs of the same flags."""
    cmp = Comparison(noise_seeded=seeded)
    shape = None
    smv = {}
    for kind in ("int", "noise"):
        po, pr = ours.path(kind), ref.path(kind)
        if po is None and pr is None:
            continue
        if po is None or pr is None:
            cmp.missing.append((kind, ours.label if po is None else ref.label))
            continue
        smv[kind] = (read_smv(po), read_smv(pr))
    if "int" in smv:
        o, r = smv["int"]
        shape = r.data.shape
        cmp.int_within_1 = within_counts(o.data, r.data)
        cmp.header_diffs = header_differences(o.entries, r.entries)
        cmp.header_bytes_equal = o.raw_header == r.raw_header
    if "noise" in smv:
        o, r = smv["noise"]
        cmp.noise_identical = identical_fraction(o.data, r.data)
        if not seeded:
            cmp.notes.append("no -seed given: both programs seed the noise from the clock, "
                             "so the noise images are not expected to match (not a criterion)")
        if "int" not in smv:
            cmp.header_diffs = header_differences(o.entries, r.entries)
            cmp.header_bytes_equal = o.raw_header == r.raw_header
    po, pr = ours.path("float"), ref.path("float")
    if po is not None and pr is not None:
        cmp.float_stats = compare_float(read_float(po, shape), read_float(pr, shape))
    elif po is not None or pr is not None:
        cmp.missing.append(("float", ours.label if po is None else ref.label))
    po, pr = ours.path("pgm"), ref.path("pgm")
    if po is not None and pr is not None:
        n = shape[0] * shape[1] if shape else 0
        a, b = _pgm_pixels(po, n), _pgm_pixels(pr, n)
        cmp.pgm_within_1 = within_counts(a, b) if a.size == b.size and a.size else 0.0
    elif po is not None or pr is not None:
        cmp.missing.append(("pgm", ours.label if po is None else ref.label))
    cmp.stdout_diff = stdout_diff(ours.stdout, ref.stdout)
    return cmp


def format_comparison(cmp: Comparison, max_diff_lines: int = 60) -> str:
    """The human-readable report of :func:`compare_runs`."""
    out = []
    s = cmp.float_stats
    if s is None:
        out.append("float image: not compared")
    elif "shape_mismatch" in s:
        out.append(f"float image: shapes differ {s['shape_mismatch']}")
    else:
        out.append(f"float image: {s['n']} pixels, C max {s['ref_max']:.6g}")
        out.append(f"  max abs difference        {s['max_abs']:.6g}")
        out.append(f"  max relative difference   {s['max_rel']:.6g}   (floor 1e-7 of max)")
        need = CRITERIA["float_close_fraction"]
        out.append(f"  within 1e-5 rel + 1e-7 max {s['close_fraction']:.6f}   (need >= {need})")
        out.append(f"  identical                 {s['identical_fraction']:.6f}")
        out.append(f"  correlation               {s['correlation']:.9f}   (need >= {CRITERIA['float_correlation']})")
    if cmp.int_within_1 is not None:
        need = CRITERIA["int_within_1_fraction"]
        out.append(f"int image: within 1 count   {cmp.int_within_1:.6f}   (need >= {need})")
    if cmp.header_diffs:
        out.append("SMV header differences (key: ours | C):")
        for key, o, r in cmp.header_diffs:
            out.append(f"  {key}: {o!r} | {r!r}")
    elif cmp.header_bytes_equal is not None:
        out.append("SMV headers: same keys and values" + ("" if cmp.header_bytes_equal else " (bytes differ)"))
    if cmp.noise_identical is not None:
        suffix = "" if cmp.noise_seeded else "   (unseeded: informational)"
        out.append(f"noise image: identical      {cmp.noise_identical:.6f}{suffix}")
    if cmp.pgm_within_1 is not None:
        out.append(f"PGM: within 1               {cmp.pgm_within_1:.6f}")
    for kind, who in cmp.missing:
        out.append(f"{kind} image: missing from {who}")
    if cmp.stdout_diff:
        body = [line for line in cmp.stdout_diff if not line.startswith(("---", "+++"))]
        changed = sum(1 for line in body if line[:1] in "+-")
        out.append(f"stdout: {changed} line(s) differ (- C, + ours):")
        shown = cmp.stdout_diff[:max_diff_lines]
        out.extend("  " + line for line in shown)
        if len(cmp.stdout_diff) > max_diff_lines:
            out.append(f"  ... {len(cmp.stdout_diff) - max_diff_lines} more diff lines")
    else:
        out.append("stdout: identical (progress lines ignored)")
    out.extend("note: " + n for n in cmp.notes)
    fails = cmp.failures()
    out.append("PARITY: " + ("yes" if not fails else "NO"))
    out.extend("  - " + f for f in fails)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _split_argv(argv):
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv):
    own, flags = _split_argv(argv)
    p = argparse.ArgumentParser(prog="python -m tools.compare_c",
                                description="Run the C nanoBragg and ours on the same flags and compare the outputs.",
                                epilog="Example: python -m tools.compare_c --c-bin ./nanoBragg -- "
                                       "-cell 50 60 70 90 90 90 -default_F 10 -N 3 -detpixels 64 -distance 50 -seed 1")
    p.add_argument("--c-bin", help="the C nanoBragg binary (default: $NB_C_BIN)")
    p.add_argument("--parity", action="store_true", help="add -c_parity to our run")
    p.add_argument("--engine", default="numba", help="our engine (-engine value; default numba)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS / NUMBA_NUM_THREADS for both")
    p.add_argument("--keep", action="store_true", help="keep the two working folders and print where")
    p.add_argument("--timeout", type=float, default=None, help="seconds each program may run")
    p.add_argument("--max-diff-lines", type=int, default=60)
    opts = p.parse_args(own)
    if not flags:
        p.error("give the nanoBragg flags after --")
    opts.flags = flags
    return opts


def _failed(run: RunResult) -> str:
    tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
    return f"{run.label} exited with status {run.returncode}:\n" + "\n".join("  " + t for t in tail)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(argv)
        c_bin = find_c_binary(opts.c_bin)
    except ToolError as exc:
        print(f"compare_c: error: {exc}", file=sys.stderr)
        return 2
    flags = opts.flags
    ours_extra = ["-engine", opts.engine] + (["-c_parity"] if opts.parity else [])
    base = tempfile.mkdtemp(prefix="nb_compare_")
    try:
        env_c = dict(os.environ, **(thread_env(opts.threads) if opts.threads else {}))
        c_run = run_in_folder("C", [c_bin], flags, Path(base) / "c", env_c, opts.timeout)
        our_run = run_in_folder("ours", our_command([]), flags + ours_extra, Path(base) / "ours",
                                python_env(opts.threads), opts.timeout)
        print(f"C:    {c_bin} {' '.join(flags)}")
        print(f"ours: python {' '.join(our_command(flags, ours_extra)[1:])}")
        if c_run.returncode != 0 or our_run.returncode != 0:
            for run in (c_run, our_run):
                if run.returncode != 0:
                    print(_failed(run))
            if c_run.returncode != 0 and our_run.returncode != 0:
                print("both programs refused these flags: no images to compare")
                return 0
            print("PARITY: NO (only one program succeeded)")
            return 1
        seeded = any(t == "-seed" for t in flags)
        cmp = compare_runs(our_run, c_run, seeded=seeded)
        print(format_comparison(cmp, opts.max_diff_lines))
        if opts.keep:
            print(f"working folders kept: {base}/c and {base}/ours")
        return 0 if not cmp.failures() else 1
    finally:
        if not opts.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
