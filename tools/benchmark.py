"""Time whole runs of the C ``nanoBragg`` and of our engines on two workloads.

Usage::

    python -m tools.benchmark [--c-bin PATH] [--threads N] [--repeat R] [--busy N]
                              [--workload a|b|light|all] [--engines c,numba,torch] [--markdown]

Every command runs once untimed first (that fills Numba's on-disk cache), then
``R`` times (default 3), each in a fresh temporary folder, the engines taking
turns run by run so that a change in the machine's load hits them alike.  The
table gives the median wall-clock time of the whole process, the median CPU
time (user + system, all threads) and the ratio to C's median.

Workloads (``-noprogress -nonoise -nopgm -floatfile float.bin -intfile
int.img`` added to each):

* ``a``: cubic cell, default_F, 1024 x 1024 pixels, oversample 2, 4 phi
  steps; one thread.
* ``b``: ``-mat A.mat -hkl P1.hkl``, 512 x 512 pixels, 10 mosaic domains,
  3 phi steps, oversample 2; two threads.  A.mat and P1.hkl come from the C
  corpus' ``inputs`` folder (``--inputs``, ``NB_CORPUS_INPUTS``, or
  ``../shared/c_corpus/inputs`` beside this checkout).
* ``light``: workload (a) without oversampling and with one phi step, the
  single image a crystallographer renders most often, where start-up
  dominates; two threads.

Busy machine: ``--busy N`` keeps N other processes spinning on the CPU (pure
Python loops, started before the warm-up, stopped at the end) while every
command runs, and labels the rows "busy N".

Threads: ``OMP_NUM_THREADS`` for C (and torch), ``NUMBA_NUM_THREADS`` for
ours; ``--threads`` overrides both workloads' counts.

Engines: ``c`` (the user's binary: ``--c-bin`` or ``NB_C_BIN``; without one
only ours is timed), ``numba`` (``-engine numba``), ``torch``
(``-engine torch -dtype float32``), ``torch64`` (float64) and
``torch-cuda`` (float32 on CUDA).  Torch rows are skipped, with a note, when
``torchsim.engine`` cannot be imported.

Correctness: for each workload our Numba image, from an extra run with
``-c_parity``, is compared with C's: the table's "max rel diff" column is
max |ours - C| / max(|C|, 1e-7 max|C|) and must be <= 1e-5.  Torch rows show
the same number for their own (timed) image, for information.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tools.compare_c import REPO_ROOT, ToolError, compare_float, find_c_binary, our_command, python_env, thread_env

OUTPUT_ARGS = ["-noprogress", "-nonoise", "-nopgm", "-floatfile", "float.bin", "-intfile", "int.img"]
PARITY_RTOL = 1e-5
CHECKED_ENGINES = ("numba", "numba-parity")    # rows whose image must match C's (a -c_parity image)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    args: tuple
    threads: int
    inputs: tuple = ()      # file names copied from the inputs folder into each run's folder


WORKLOADS = {
    "a": Workload("a", "cubic cell, 1024^2 pixels, oversample 2, 4 phi steps",
                  ("-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5", "-default_F", "100",
                   "-distance", "100", "-detpixels", "1024", "-oversample", "2", "-phi", "1", "-osc", "2",
                   "-phisteps", "4"), threads=1),
    "b": Workload("b", "A.mat + P1.hkl, 512^2 pixels, 10 mosaic domains x 3 phi steps, oversample 2",
                  ("-mat", "A.mat", "-hkl", "P1.hkl", "-lambda", "1.2", "-N", "10", "-distance", "100",
                   "-detpixels", "512", "-pixel", "0.2", "-mosaic", "0.5", "-mosaic_dom", "10", "-phi", "1",
                   "-osc", "1", "-phisteps", "3", "-oversample", "2"), threads=2, inputs=("A.mat", "P1.hkl")),
    "light": Workload("light", "cubic cell, 1024^2 pixels, one step (start-up dominates)",
                      ("-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5", "-default_F",
                       "100", "-distance", "100", "-detpixels", "1024"), threads=2),
}

# Our engines: the flags each adds to the command line.
ENGINE_FLAGS = {
    "numba": ("-engine", "numba"),
    "numba-parity": ("-engine", "numba", "-c_parity"),
    "torch": ("-engine", "torch", "-dtype", "float32"),
    "torch64": ("-engine", "torch", "-dtype", "float64"),
    "torch-cuda": ("-engine", "torch", "-dtype", "float32", "-device", "cuda"),
}
# Start-up floors: processes that only load what a run of that engine must load, and leave as
# our command does (os._exit).  No run of the engine can take less time than its floor.
FLOOR_CODE = {
    # NumPy and Numba imported, and one cached compiled function called: the first call of any
    # Numba function loads Numba's typing and lowering registries, cached or not.  SciPy's BLAS
    # is hidden from Numba as in our command (reference.cli.console_main)
    "numba-floor": "import os, sys\nsys.modules.setdefault('scipy.linalg.cython_blas', None)\n"
                   "from tools.startup_floor import first_call\nfirst_call()\nos._exit(0)",
    "torch-floor": "import os\nimport torch\nos._exit(0)",
}
KNOWN_ENGINES = ("c", *ENGINE_FLAGS, *FLOOR_CODE)

# The goals of issue 11: the most each engine may take, as a multiple of C's median time.
TARGETS = {
    "numba": {"a": 0.8, "b": 0.8, "light": 4.0},
    "numba-parity": {"a": 1.25, "b": 1.25},
    "torch": {"a": 0.5, "b": 0.5},
}


class BenchmarkError(Exception):
    """A timed command failed."""


@dataclass
class Timing:
    wall: float     # seconds, wall clock of the whole process
    cpu: float      # seconds, user + system of the process and its threads


@dataclass
class Row:
    workload: str
    engine: str
    threads: int
    times: list = field(default_factory=list)      # wall seconds of the timed runs
    cpu_times: list = field(default_factory=list)
    ratio: float | None = None                     # median / C's median
    max_rel: float | None = None                   # vs C's image (see module docstring)
    checked: str = ""                              # which image max_rel is for

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

def run_process(cmd, folder, env) -> Timing:
    """Run ``cmd`` in ``folder``; wall and CPU seconds.  Raises BenchmarkError on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, errors="replace")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


Runner = Callable[[list, str, dict], Timing]


def default_inputs_dir() -> Path | None:
    """Where A.mat and P1.hkl live: $NB_CORPUS_INPUTS or the shared corpus beside the checkout."""
    env = os.environ.get("NB_CORPUS_INPUTS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "c_corpus" / "inputs")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _fresh_folder(workload: Workload, inputs_dir: Path | None, tmp_root: str | None) -> str:
    folder = tempfile.mkdtemp(prefix=f"nb_bench_{workload.name}_", dir=tmp_root)
    for name in workload.inputs:
        shutil.copyfile(Path(inputs_dir) / name, Path(folder) / name)
    return folder


def _run_fresh(runner: Runner, cmd, env, workload, inputs_dir, tmp_root, keep_image=False):
    folder = _fresh_folder(workload, inputs_dir, tmp_root)
    try:
        timing = runner(cmd, folder, env)
        image = None
        if keep_image:
            path = Path(folder) / "float.bin"
            image = np.fromfile(path, dtype="<f4") if path.exists() else None
        return timing, image
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def torch_available(engine: str) -> str | None:
    """None when this torch engine can run here; otherwise why not."""
    code = "import torchsim.engine"
    if engine == "torch-cuda":
        code += "\nimport torch, sys\nsys.exit(0 if torch.cuda.is_available() else 3)"
    proc = subprocess.run([sys.executable, "-c", code], env=python_env(), capture_output=True, text=True,
                          cwd=REPO_ROOT)
    if proc.returncode == 0:
        return None
    if proc.returncode == 3:
        return "no CUDA device"
    last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"torchsim.engine is not importable ({last})"


def command_for(engine: str, workload: Workload, c_bin: str | None, threads: int):
    """(command, environment) that runs ``workload`` on ``engine`` with ``threads`` threads."""
    args = [*workload.args, *OUTPUT_ARGS]
    if engine == "c":
        return [c_bin, *args], dict(os.environ, **thread_env(threads))
    if engine in FLOOR_CODE:
        return [sys.executable, "-c", FLOOR_CODE[engine]], python_env(threads)
    return our_command(args, ENGINE_FLAGS[engine]), python_env(threads)


def benchmark(opts, runner: Runner = run_process, workloads=None, availability=torch_available, log=None,
              targets=None):
    """Time every (workload, engine); returns (rows, notes).

    ``targets`` (default :data:`TARGETS`): engine -> workload -> the largest
    ratio to C's median that meets the goal; each is reported in a note.
    """
    workloads = WORKLOADS if workloads is None else workloads
    targets = TARGETS if targets is None else targets
    log = log or (lambda text: None)
    notes = []
    engines = list(opts.engines)
    if "c" in engines and opts.c_bin is None:
        engines.remove("c")
        notes.append("no C binary given (--c-bin or NB_C_BIN): timing ours only, no ratios, no image check")
    for engine in [e for e in engines if e.startswith("torch") and e not in FLOOR_CODE]:
        why = availability(engine)
        if why is not None:
            engines.remove(engine)
            notes.append(f"{engine} rows skipped: {why}")
    engines.sort(key=lambda e: e != "c")           # C first: its image and time are the reference
    names = list(workloads) if opts.workload == "all" else [opts.workload]
    rows = []
    for name in names:
        w = workloads[name]
        if w.inputs and (opts.inputs is None or not all((Path(opts.inputs) / f).is_file() for f in w.inputs)):
            notes.append(f"workload {name} skipped: {', '.join(w.inputs)} not found in {opts.inputs} (use --inputs)")
            continue
        threads = opts.threads or w.threads
        commands = {e: command_for(e, w, opts.c_bin, threads) for e in engines}
        w_rows = {e: Row(name, e, threads) for e in engines}
        c_image = None
        for engine, (cmd, env) in commands.items():
            log(f"[{name}/{engine}] warm-up: {' '.join(map(str, cmd))}")
            _, image = _run_fresh(runner, cmd, env, w, opts.inputs, opts.tmpdir, keep_image=engine == "c")
            if engine == "c":
                c_image = image
        images = {}
        for r in range(opts.repeat):                  # engines interleaved: fairer on a busy machine
            last = r == opts.repeat - 1
            for engine, (cmd, env) in commands.items():
                timing, image = _run_fresh(runner, cmd, env, w, opts.inputs, opts.tmpdir,
                                           keep_image=last and engine in ENGINE_FLAGS and engine != "numba")
                w_rows[engine].times.append(timing.wall)
                w_rows[engine].cpu_times.append(timing.cpu)
                images[engine] = image
                log(f"[{name}/{engine}] run {r + 1}: {timing.wall:.3f} s wall, {timing.cpu:.3f} s CPU")
        c_row = w_rows.get("c")
        for engine, row in w_rows.items():
            if engine not in ("c", *FLOOR_CODE) and c_image is not None:
                image = images.get(engine)
                if engine == "numba":
                    cmd, env = commands[engine]
                    log(f"[{name}/{engine}] image check: one more run with -c_parity")
                    _, image = _run_fresh(runner, cmd + ["-c_parity"], env, w, opts.inputs, opts.tmpdir,
                                          keep_image=True)
                    row.checked = "-c_parity run"
                else:
                    row.checked = "timed run"
                if image is not None:
                    row.max_rel = compare_float(image, c_image)["max_rel"]
            if c_row is not None and c_row.times:
                row.ratio = row.median / c_row.median
            rows.append(row)
    for row in rows:
        if row.engine in CHECKED_ENGINES and row.max_rel is not None and not row.max_rel <= PARITY_RTOL:
            notes.append(f"workload {row.workload}: our float image differs from C's by {row.max_rel:.3g} "
                         f"relative (> {PARITY_RTOL:g})")
        goal = targets.get(row.engine, {}).get(row.workload)
        if goal is not None and row.ratio is not None:
            verdict = "met" if row.ratio <= goal else "NOT met"
            notes.append(f"workload {row.workload}: target {row.engine} <= {goal:g}x C {verdict} ({row.ratio:.2f}x)")
    return rows, notes


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

COLUMNS = ("workload", "engine", "threads", "median wall [s]", "runs [s]", "median CPU [s]", "ratio vs C",
           "max rel diff vs C")


def _cells(row: Row) -> list[str]:
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    if row.engine == "c":
        diff = "(reference)"
    elif row.max_rel is None:
        diff = "-"
    else:
        ok = row.max_rel <= PARITY_RTOL
        diff = f"{row.max_rel:.2g} ({'ok' if ok else 'FAIL'})" if row.engine in CHECKED_ENGINES else f"{row.max_rel:.2g}"
    return [row.workload, row.engine, str(row.threads), f"{row.median:.3f}",
            " ".join(f"{t:.2f}" for t in row.times), f"{row.cpu_median:.2f}", ratio, diff]


def format_table(rows, notes=(), markdown: bool = False, header: str = "") -> str:
    """The result table, plain or Markdown, then the notes."""
    body = [_cells(r) for r in rows]
    out = []
    if header:
        out += [header, ""]
    if markdown:
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|")
        out += ["| " + " | ".join(c) + " |" for c in body]
        if notes:
            out.append("")
            out += [f"- {n}" for n in notes]
    else:
        widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(COLUMNS)]
        line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        out.append(line(COLUMNS))
        out.append("  ".join("-" * w for w in widths))
        out += [line(c) for c in body]
        if notes:
            out.append("")
            out += [f"note: {n}" for n in notes]
    return "\n".join(out)


def describe(opts, workloads=None) -> str:
    workloads = WORKLOADS if workloads is None else workloads
    import numba
    names = list(workloads) if opts.workload == "all" else [opts.workload]
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
             f"Numba {numba.__version__}; median of {opts.repeat} run(s) after one warm-up, wall clock of the "
             f"whole process" + (f"; {opts.busy} other process(es) spinning on the CPU meanwhile" if opts.busy else ""),
             f"C binary: {opts.c_bin or '(none)'}"]
    for n in names:
        w = workloads[n]
        lines.append(f"workload {n} ({opts.threads or w.threads} thread(s)): {w.description}: {' '.join(w.args)}")
    return "\n".join(lines)


SPIN = "while True:\n    pass\n"


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` processes spinning on the CPU for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.benchmark",
                                description="Time the C nanoBragg against our engines on fixed workloads.")
    p.add_argument("--c-bin", help="the C nanoBragg binary (default: $NB_C_BIN)")
    p.add_argument("--threads", type=int, default=None, help="threads for every workload (default: a=1, b=2)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per command (default 3)")
    p.add_argument("--workload", choices=("a", "b", "light", "all"), default="all")
    p.add_argument("--busy", type=int, default=0, help="other processes kept spinning on the CPU meanwhile")
    p.add_argument("--engines", default="c,numba",
                   help=f"comma-separated list from {', '.join(KNOWN_ENGINES)} (default c,numba)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--inputs", default=None, help="folder holding A.mat and P1.hkl (default: the C corpus inputs)")
    p.add_argument("--tmpdir", default=None, help="where the temporary run folders go")
    p.add_argument("--quiet", action="store_true", help="no per-run progress on stderr")
    opts = p.parse_args(argv)
    engines = [e.strip() for e in opts.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in KNOWN_ENGINES]
    if unknown or not engines:
        p.error(f"unknown engine(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(KNOWN_ENGINES)}")
    if opts.repeat < 1:
        p.error("--repeat must be at least 1")
    if opts.threads is not None and opts.threads < 1:
        p.error("--threads must be at least 1")
    if opts.busy < 0:
        p.error("--busy must be 0 or more")
    opts.engines = list(dict.fromkeys(engines))
    if opts.inputs is None:
        found = default_inputs_dir()
        opts.inputs = str(found) if found else None
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    try:
        opts.c_bin = find_c_binary(opts.c_bin, required=False)
    except ToolError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    log = None if opts.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        with busy_processes(opts.busy):
            rows, notes = benchmark(opts, log=log)
    except BenchmarkError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    if opts.busy:
        for row in rows:
            row.workload += f" (busy {opts.busy})"
    print(format_table(rows, notes, opts.markdown, header=describe(opts)))
    failed = any(r.engine in CHECKED_ENGINES and r.max_rel is not None and not r.max_rel <= PARITY_RTOL for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
