"""Check and time the torch engine on a CUDA device, in one command, within a time budget.

Usage::

    python -m tools.gpu_check [--c-bin PATH] [--corpus PATH] [--inputs PATH] [--budget-s 270]
                              [--repeat 2] [--threads 2] [--cases A,B] [--out DIR] [--cpu-dry-run]

Four steps, in this order, each one row or more of ONE Markdown table:

1. **CUDA tests**: ``pytest -m cuda tests/test_cuda.py`` in a subprocess
   (images and gradients on CUDA against the CPU).
2. **C corpus on the device**: every case of the C corpus (``--corpus``,
   default ``../shared/c_corpus`` beside the checkout, as ``tests/corpus.py``
   finds it) through our command line with ``-engine torch -device cuda``:
   float64 against C's files with the corpus tests' criteria
   (``tests/corpus.py: assert_parity``), in spec mode on the cases no quirk
   touches and with ``-c_parity`` on every case; float32 against the float64
   run of the same mode with the bound of ``tests/tolerances.py``.
3. **Gradients on the device**: every parameter of a small
   :class:`torchsim.Simulator` scene, gradient of a weighted image sum: all
   finite; float64 equal to the CPU float64 gradient within the relative
   bound of ``tests/test_cuda.py`` (1e-9); float32 no further from the CPU
   float64 gradient than 3 times the CPU's own float32 error (measured in the
   same run; at least the float32 image bound, 1e-5).
4. **Benchmark**: whole-process wall time, as ``tools/benchmark.py`` measures
   it, of a heavy scene (2048^2 pixels, oversample 4, 10 mosaic domains, 5 phi
   steps) and of that tool's workloads (a), (b) and the light image, on the
   device in float32 and float64, against a baseline: the C binary
   (``--c-bin`` / ``NB_C_BIN``) or, without one, the reference engine on the
   CPU, on two threads (``--threads``: OMP_NUM_THREADS, NUMBA_NUM_THREADS).
   Median of ``--repeat`` runs (default 2) after one untimed run.  The
   baseline's heavy time is extrapolated from a band of rows (``-roi``; a
   whole 2048^2 run takes minutes on two CPU threads), and the row says so.
   The heavy scene is also rendered in this process after a warm-up, which
   times the rendering alone (no imports, no CUDA start-up).  Each device
   image is checked against the baseline's (float64: the corpus criterion;
   float32: 1e-5 of the maximum on every pixel, ``tools/compare_outputs.py``).

Budget: the whole run stops starting new work after ``--budget-s`` seconds
(default 270, to stay under five minutes with start-up); a step or row that
had no time left is listed as skipped, with the reason.  The CUDA tests may
use a quarter of the budget, the corpus a third, the gradients a tenth; the
benchmark gets what is left.

Without a CUDA device (or with ``--cpu-dry-run``) the same pipeline runs on
``-device cpu`` with tiny sizes (three corpus cases, a 24^2 gradient scene,
the benchmark workloads scaled down to 64^2-128^2 and labelled so, float64
timed on the heavy scene only, one run each, no warm-up runs): this tests
the script itself; its timings mean nothing.

Exit status: 0 when no row failed, 1 when one did, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tools import benchmark as B
from tools.compare_c import REPO_ROOT, ToolError, find_c_binary, our_command, python_env, thread_env
from tools.compare_outputs import _float_agree

DEFAULT_BUDGET_S = 270.0
# the most each step may take, as fractions of the whole budget (the benchmark gets the rest)
STEP_SHARE = {"cuda tests": 0.25, "corpus": 1 / 3, "gradients": 0.10}

# ---------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------

HEAVY = B.Workload(
    "heavy", "A.mat + P1.hkl, 2048^2 pixels, oversample 4, 10 mosaic domains x 5 phi steps",
    ("-mat", "A.mat", "-hkl", "P1.hkl", "-lambda", "1.2", "-N", "10", "-distance", "100",
     "-detpixels", "2048", "-pixel", "0.05", "-mosaic", "0.5", "-mosaic_dom", "10", "-phi", "1",
     "-osc", "1", "-phisteps", "5", "-oversample", "4"), threads=2, inputs=("A.mat", "P1.hkl"))

# the issue's light image: workload (a)'s crystal, one phi step, no oversampling, two threads
LIGHT = B.Workload(
    "light", "cubic cell, 1024^2 pixels, one phi step, oversample 1",
    ("-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5", "-default_F", "100",
     "-distance", "100", "-detpixels", "1024", "-oversample", "1"), threads=2)

# Gradient scene: triclinic cell, misset, mosaic spread, phi steps and oversampling, so that
# every Simulator parameter has a gradient that depends on the device's arithmetic.
GRAD_SCENE = ("-cell", "50", "60", "70", "80", "85", "95", "-misset", "3", "4", "5", "-default_F", "10",
              "-N", "4", "-lambda", "1.2", "-distance", "60", "-mosaic", "0.5", "-mosaic_dom", "4",
              "-phi", "0", "-osc", "1", "-phisteps", "3", "-oversample", "2")
GRAD_PIXELS = 64            # 64 x 64 pixels of 0.3 mm on the device; 24 x 24 of 0.8 mm in the dry run
# float64 on the device against the CPU: tests/test_cuda.py's relative bound.  Changing the
# CPU thread count from 2 to 1 (another summation order) moves these gradients by at most 2.1e-15.
GRAD_RTOL_FLOAT64 = 1e-9
GRAD_FLOAT32_FACTOR = 3.0   # x the CPU's own float32 error, per parameter
GRAD_FLOAT32_FLOOR = 1e-5   # tests/tolerances.py OF_IMAGE_MAX["float32"]

DRY_CASES = ("cubic_basic", "pix0_vector", "roi")     # cheap; pix0_vector is a quirk case
HEAVY_BAND_ROWS = 64        # the baseline renders this many of the heavy scene's rows (1/32)


def scaled(workload: B.Workload, pixels: int, **flags) -> B.Workload:
    """``workload`` on a ``pixels``-square detector of the same size in mm, other flags replaced.

    ``flags`` maps flag names without the dash (``oversample=2``) to new values.
    """
    args = list(workload.args)
    old = int(args[args.index("-detpixels") + 1])
    args[args.index("-detpixels") + 1] = str(pixels)
    pixel_mm = float(args[args.index("-pixel") + 1]) if "-pixel" in args else 0.1
    if "-pixel" in args:
        args[args.index("-pixel") + 1] = f"{pixel_mm * old / pixels:g}"
    else:
        args += ["-pixel", f"{pixel_mm * old / pixels:g}"]
    for name, value in flags.items():
        args[args.index("-" + name) + 1] = str(value)
    what = ", ".join(f"{k} {v}" for k, v in flags.items())
    return B.Workload(workload.name, f"scaled down to {pixels}^2{', ' + what if what else ''} "
                      f"(really: {workload.description})", tuple(args), workload.threads, workload.inputs)


def workloads(dry_run: bool) -> list:
    """The benchmark's workloads, heaviest first (the headline goal is the heavy scene)."""
    light = B.WORKLOADS.get("light", LIGHT)
    real = [HEAVY, B.WORKLOADS["a"], B.WORKLOADS["b"], light]
    if not dry_run:
        return real
    small = [scaled(HEAVY, 128, oversample=2, mosaic_dom=2, phisteps=2), scaled(real[1], 128),
             scaled(real[2], 64), scaled(light, 128)]
    return [B.Workload(w.name, "DRY RUN, " + w.description, w.args, w.threads, w.inputs) for w in small]


# ---------------------------------------------------------------------------
# results and budget
# ---------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the table."""

    step: str
    check: str
    result: str                 # "pass", "FAIL", "skip" or "info"
    seconds: float | None = None
    speedup: str = ""           # benchmark: the baseline's time / this row's time
    detail: str = ""


@dataclass
class Report:
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    header: dict = field(default_factory=dict)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    @property
    def failed(self) -> bool:
        return any(r.result == "FAIL" for r in self.rows)


class Deadline:
    """A point in time (monotonic clock) after which no new work starts."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.clock = clock
        self.at = clock() + seconds

    def left(self) -> float:
        return self.at - self.clock()

    def within(self, seconds: float) -> "Deadline":
        """A deadline ``seconds`` from now, or this one if that is sooner."""
        child = Deadline(0.0, self.clock)
        child.at = min(self.at, self.clock() + seconds)
        return child


@dataclass
class Plan:
    """What to run where."""

    device: str                 # "cuda", or "cpu" in the dry run
    dry_run: bool
    corpus: Path
    inputs: Path | None
    c_bin: str | None
    repeat: int
    budget_s: float
    threads: int = 2            # CPU threads of the baseline (and of our processes' CPU side)
    cases: tuple | None = None  # corpus case names (None: all)
    tmpdir: str | None = None


# ---------------------------------------------------------------------------
# step 1: the CUDA tests
# ---------------------------------------------------------------------------

def junit_counts(path: Path) -> dict:
    """tests, failures, errors, skipped from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def step_cuda_tests(plan: Plan, deadline: Deadline, report: Report) -> None:
    check = "pytest -m cuda tests/test_cuda.py"
    with tempfile.TemporaryDirectory(dir=plan.tmpdir) as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
               "tests/test_cuda.py", f"--junitxml={xml}", f"--basetemp={Path(tmp) / 'pytest'}"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=python_env(), capture_output=True, text=True,
                                  timeout=max(deadline.left(), 1.0))
        except subprocess.TimeoutExpired:
            report.add("cuda tests", check, "skip", time.perf_counter() - start,
                       detail=f"stopped: out of time after {time.perf_counter() - start:.0f} s (budget)")
            return
        seconds = time.perf_counter() - start
        if not xml.is_file():
            last = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            report.add("cuda tests", check, "FAIL", seconds, detail=f"pytest wrote no report: {' | '.join(last)}")
            return
        n = junit_counts(xml)
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    detail = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
    if n["failures"] or n["errors"] or proc.returncode not in (0, 5):
        failing = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        detail += "; " + "; ".join(failing[:3]) if failing else ""
        report.add("cuda tests", check, "FAIL", seconds, detail=detail)
    elif passed == 0:
        # no CUDA device: expected in the dry run, a failure on a machine that should have one
        report.add("cuda tests", check, "skip" if plan.dry_run else "FAIL", seconds,
                   detail=detail + " (no CUDA device visible to pytest)")
    else:
        report.add("cuda tests", check, "pass" if n["skipped"] == 0 else "FAIL", seconds, detail=detail)


# ---------------------------------------------------------------------------
# step 2: the C corpus on the device
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def corpus_at(path: Path):
    """tests/corpus.py's helpers, pointed at ``path`` for the duration."""
    from tests import corpus
    saved = corpus.CORPUS
    corpus.CORPUS = Path(path)
    try:
        yield corpus
    finally:
        corpus.CORPUS = saved


def corpus_cases(plan: Plan) -> list:
    """[(name, args)] in name order: all, the dry run's three, or ``--cases``."""
    listed = {c["name"]: c["args"] for c in json.loads((plan.corpus / "cases" / "cases.json").read_text())}
    wanted = plan.cases if plan.cases is not None else (DRY_CASES if plan.dry_run else sorted(listed))
    return [(name, listed[name]) for name in wanted if name in listed]


def _run_case(corpus, args, folder: Path, shape):
    """Our command line on one case: (Outputs, None) or (None, why it failed)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return corpus.run_ours(args, folder, shape), None
    except AssertionError as exc:             # run_ours: a non-zero exit status
        lines = (err.getvalue() + str(exc)).strip().splitlines()
        return None, (lines[-1] if lines else "non-zero exit status")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def step_corpus(plan: Plan, deadline: Deadline, report: Report) -> None:
    if not (plan.corpus / "cases" / "cases.json").is_file():
        report.add("corpus", "C corpus", "skip",
                   detail=f"no C corpus at {plan.corpus} (pass --corpus PATH: the folder holding cases/ and inputs/)")
        return
    from tests.test_corpus import QUIRK_CASES
    from tests.tolerances import OF_IMAGE_MAX, error_of_max
    cases = corpus_cases(plan)
    engine = ["-engine", "torch", "-device", plan.device]
    # (dtype, mode) -> [cases checked, failures, seconds, largest float32 error]
    tallies = {(d, m): [0, [], 0.0, 0.0] for d in ("float64", "float32") for m in ("spec", "-c_parity")}
    done = 0
    with corpus_at(plan.corpus) as corpus, tempfile.TemporaryDirectory(dir=plan.tmpdir) as tmp:
        for name, args in cases:
            if deadline.left() <= 0:
                break
            ref = corpus.c_outputs(name)
            modes = ["-c_parity"] if name in QUIRK_CASES else ["spec", "-c_parity"]
            for mode in modes:
                extra = [] if mode == "spec" else ["-c_parity"]
                images = {}
                for dtype in ("float64", "float32"):
                    tally = tallies[dtype, mode]
                    start = time.perf_counter()
                    ours, why = _run_case(corpus, list(args) + extra + engine + ["-dtype", dtype],
                                          Path(tmp) / f"{name}{mode}{dtype}", ref.float_image.shape)
                    tally[2] += time.perf_counter() - start
                    tally[0] += 1
                    if ours is None:
                        tally[1].append(f"{name}: {why}")
                        continue
                    images[dtype] = ours.float_image
                    if dtype == "float64":
                        try:
                            corpus.assert_parity(ours, ref, name)
                        except AssertionError as exc:
                            tally[1].append(str(exc))
                    elif "float64" not in images:
                        tally[1].append(f"{name}: no float64 image to compare with")
                    else:
                        error = error_of_max(images["float32"], images["float64"])
                        tally[3] = max(tally[3], error)
                        if not error <= OF_IMAGE_MAX["float32"]:
                            tally[1].append(f"{name}: {error:.3g} of the image maximum")
            done += 1
    skipped = len(cases) - done
    for (dtype, mode), (count, failures, seconds, worst) in tallies.items():
        label = f"{dtype} {'spec mode (no quirk)' if mode == 'spec' else mode}, -device {plan.device}"
        criterion = ("C's files (tests/corpus.py criteria)" if dtype == "float64"
                     else f"the float64 run (<= {OF_IMAGE_MAX['float32']:g} of max; largest {worst:.2g})")
        detail = f"{count - len(failures)}/{count} runs agree with {criterion}"
        if skipped:
            detail += f"; {skipped} of {len(cases)} cases not run: out of time (budget)"
        if failures:
            detail += "; " + "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        result = "FAIL" if failures else ("skip" if count == 0 else "pass")
        report.add("corpus", label, result, seconds, detail=detail)


# ---------------------------------------------------------------------------
# step 3: gradients on the device
# ---------------------------------------------------------------------------

def grad_scene(dry_run: bool) -> list:
    pixels, pixel_mm = (24, 0.8) if dry_run else (GRAD_PIXELS, 0.3)
    return list(GRAD_SCENE) + ["-detpixels", str(pixels), "-pixel", str(pixel_mm)]


def gradients(scene, device: str, dtype) -> dict:
    """Parameter name -> gradient (float64, CPU) of a weighted image sum; None where there is none."""
    import torch
    from torchsim import Simulator
    sim = Simulator.from_args(scene, device=device, dtype=dtype)
    image = sim()
    # weights that vary across the detector, so that no gradient cancels by symmetry
    weights = torch.linspace(0.5, 1.5, image.numel(), dtype=image.dtype, device=image.device).reshape(image.shape)
    ((weights * image).sum() / image.numel()).backward()
    return {n: (None if p.grad is None else p.grad.detach().to("cpu", torch.float64).clone())
            for n, p in sim.named_parameters()}


def _rel_elementwise(g, ref) -> float:
    """max |g - ref| / |ref| over the elements (0/0 counts as 0, x/0 as infinite)."""
    diff, scale = (g - ref).abs().numpy(), ref.abs().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(scale > 0, diff / scale, np.where(diff > 0, np.inf, 0.0))
    return float(ratio.max())


def _rel_of_max(g, ref) -> float:
    """max |g - ref| / max |ref| over the elements of one parameter."""
    peak = float(ref.abs().max())
    diff = float((g - ref).abs().max())
    return diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf"))


def _float64_verdict(grads, cpu64, named) -> tuple:
    """(problems, detail): every gradient within GRAD_RTOL_FLOAT64 of the CPU's, element by element."""
    errors = {n: _rel_elementwise(grads[n], cpu64[n]) for n in named}
    worst = max(errors, key=errors.get)
    problems = [f"{n}: {e:.2g} relative" for n, e in errors.items() if not e <= GRAD_RTOL_FLOAT64]
    return problems, f"largest relative difference {errors[worst]:.2g} ({worst}), bound {GRAD_RTOL_FLOAT64:g}"


def _float32_verdict(grads, cpu64, cpu32, named, notes) -> tuple:
    """(problems, detail): no further from the CPU's float64 than the CPU's own float32, times 3."""
    errors = {n: _rel_of_max(grads[n], cpu64[n]) for n in named}
    own = {n: _rel_of_max(cpu32[n], cpu64[n]) for n in named}
    bounds = {n: max(GRAD_FLOAT32_FACTOR * own[n], GRAD_FLOAT32_FLOOR) for n in named}
    worst = max(named, key=lambda n: errors[n] / bounds[n])
    problems = [f"{n}: {errors[n]:.2g} of its max (bound {bounds[n]:.2g})" for n in named
                if not errors[n] <= bounds[n]]
    same = {n: _rel_of_max(grads[n], cpu32[n]) for n in named}
    apart = max(same, key=same.get)
    poor = [f"{n} {own[n]:.2g}" for n in named if own[n] > 1e-2]
    if poor:
        notes.append("float32 gradients far from float64 on the CPU as well (error of the parameter's max): "
                     + ", ".join(poor))
    return problems, (f"largest error/bound: {worst} {errors[worst]:.2g} of its max (CPU float32: "
                      f"{own[worst]:.2g}, bound {bounds[worst]:.2g}); vs CPU float32: largest "
                      f"{same[apart]:.2g} ({apart})")


def step_gradients(plan: Plan, deadline: Deadline, report: Report) -> None:
    import torch
    scene = grad_scene(plan.dry_run)
    label = f"{scene[scene.index('-detpixels') + 1]}^2 Simulator scene, every parameter"
    start = time.perf_counter()
    cpu = {torch.float64: gradients(scene, "cpu", torch.float64)}
    results = {}
    for dtype in (torch.float64, torch.float32):
        if deadline.left() <= 0:
            break
        t0 = time.perf_counter()
        results[dtype] = (gradients(scene, plan.device, dtype), time.perf_counter() - t0)
    if torch.float32 in results:
        cpu[torch.float32] = gradients(scene, "cpu", torch.float32)

    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        check = f"{name} on {plan.device} vs CPU float64: {label}"
        if dtype not in results:
            report.add("gradients", check, "skip", detail="out of time (budget)")
            continue
        grads, seconds = results[dtype]
        problems = [f"{n}: no gradient{' on the CPU' if g is not None else ''}" for n, g in grads.items()
                    if g is None or any(c[n] is None for c in cpu.values())]
        problems += [f"{n}: not finite" for n, g in grads.items() if g is not None and not torch.isfinite(g).all()]
        named = [n for n, g in grads.items() if g is not None and all(c[n] is not None for c in cpu.values())]
        if named and dtype == torch.float64:
            more, detail = _float64_verdict(grads, cpu[torch.float64], named)
        elif named:
            more, detail = _float32_verdict(grads, cpu[torch.float64], cpu[torch.float32], named, report.notes)
        else:
            more, detail = ["no parameter has a gradient"], ""
        problems += more
        detail = f"{len(named)} parameters finite; " + detail if not problems else "; ".join(problems[:4])
        report.add("gradients", check, "FAIL" if problems else "pass", seconds, detail=detail)
    report.rows[-1].detail += f" (with the CPU references: {time.perf_counter() - start:.1f} s)"


# ---------------------------------------------------------------------------
# step 4: the benchmark
# ---------------------------------------------------------------------------

@dataclass
class Engine:
    name: str                   # "c", "numba" or "torch"
    label: str
    flags: tuple = ()           # added to our command line
    precision: str = "float64"  # for the image check

    def command(self, workload: B.Workload, plan: Plan):
        """(command, environment) of one run of ``workload`` with the plan's thread count."""
        args = [*workload.args, *B.OUTPUT_ARGS]
        if self.name == "c":
            return [plan.c_bin, *args], dict(os.environ, **thread_env(plan.threads))
        return our_command(args, self.flags), python_env(plan.threads)


def baseline_engine(plan: Plan) -> Engine:
    if plan.c_bin:
        return Engine("c", "C")
    return Engine("numba", "reference (numba, CPU)", ("-engine", "numba"))


def device_engines(plan: Plan, workload: B.Workload) -> list:
    dtypes = ("float32", "float64")
    if plan.dry_run and workload.name != "heavy":
        dtypes = ("float32",)             # keeps the dry run short; the heavy scene has both
    return [Engine("torch", f"torch {plan.device} {d}", ("-engine", "torch", "-device", plan.device, "-dtype", d), d)
            for d in dtypes]


class OutOfTime(Exception):
    """The budget ran out before or during a timed run."""


def pixels_of(workload: B.Workload) -> int:
    return int(workload.args[list(workload.args).index("-detpixels") + 1])


def run_once(engine: Engine, workload: B.Workload, plan: Plan, deadline: Deadline, extra=()):
    """(wall seconds, float image or None) of one whole process in a fresh folder.

    Raises OutOfTime when the budget is spent (the process is killed when it
    runs past it) and benchmark.BenchmarkError when the run fails.
    """
    if deadline.left() <= 0:
        raise OutOfTime()
    cmd, env = engine.command(workload, plan)
    folder = tempfile.mkdtemp(prefix=f"nb_gpu_{workload.name}_", dir=plan.tmpdir)
    try:
        for name in workload.inputs:
            shutil.copyfile(Path(plan.inputs) / name, Path(folder) / name)
        start = time.perf_counter()
        try:
            proc = subprocess.run([*cmd, *extra], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, errors="replace", timeout=deadline.left())
        except subprocess.TimeoutExpired:
            raise OutOfTime() from None
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise B.BenchmarkError(f"exit status {proc.returncode}: {proc.stderr.strip()[-300:]}")
        path = Path(folder) / "float.bin"
        return wall, (np.fromfile(path, "<f4") if path.exists() else None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def time_engine(engine: Engine, workload: B.Workload, plan: Plan, deadline: Deadline):
    """(wall times of the timed runs, image of the last one); one untimed run first except in the dry run."""
    if not plan.dry_run:
        run_once(engine, workload, plan, deadline)
    runs = [run_once(engine, workload, plan, deadline) for _ in range(plan.repeat)]
    return [t for t, _ in runs], runs[-1][1]


def band(workload: B.Workload, rows: int) -> tuple:
    """(first row, last row) of a band of ``rows`` rows in the middle of the detector."""
    n = pixels_of(workload)
    rows = min(rows, n)
    first = (n - rows) // 2
    return first, first + rows - 1


def roi_flags(workload: B.Workload, first: int, last: int) -> list:
    """-roi over every column of rows ``first`` to ``last`` (inclusive)."""
    return ["-roi", "0", str(pixels_of(workload) - 1), str(first), str(last)]


def extrapolate(fixed: float, partial: float, fraction: float) -> float:
    """Whole-run seconds from a run that renders ``fraction`` of the rows (``partial`` s) and one
    that renders a single row (``fixed`` s: start-up and set-up)."""
    return fixed + max(partial - fixed, 0.0) / fraction


def time_baseline(engine: Engine, workload: B.Workload, plan: Plan, deadline: Deadline):
    """(seconds, how they were found, the baseline's image, (first, last) rows it covers or None).

    The heavy scene's whole run would take minutes on two CPU threads: its
    time is extrapolated from a band of rows in the middle of the detector and
    a run of one row (start-up and set-up), the two taking turns.
    """
    n = pixels_of(workload)
    if workload.name != "heavy":
        times, image = time_engine(engine, workload, plan, deadline)
        return statistics.median(times), "runs " + " ".join(f"{t:.2f}" for t in times), image, None
    first, last = band(workload, max(HEAVY_BAND_ROWS * n // 2048, 4))
    one_row, part = roi_flags(workload, first, first), roi_flags(workload, first, last)
    if not plan.dry_run:
        run_once(engine, workload, plan, deadline, one_row)
    fixed, partial = [], []
    for _ in range(plan.repeat):
        fixed.append(run_once(engine, workload, plan, deadline, one_row)[0])
        seconds, image = run_once(engine, workload, plan, deadline, part)
        partial.append(seconds)
    t_fixed, t_partial = statistics.median(fixed), statistics.median(partial)
    how = (f"EXTRAPOLATED from rows {first}-{last} of {n} ({t_partial:.2f} s) and one row ({t_fixed:.2f} s), "
           f"median of {plan.repeat}")
    return extrapolate(t_fixed, t_partial, (last - first + 1) / n), how, image, (first, last)


def image_check(image, ref, precision: str, shape, rows=None) -> tuple:
    """(agrees, text): a device image against the baseline's (flat float32 arrays).

    float64: the corpus criterion; float32: 1e-5 of the maximum on every pixel
    (tools/compare_outputs.py).  ``rows``: compare only rows first..last.
    """
    if image is None or ref is None or image.size != ref.size:
        return False, "no float image of the right size to compare"
    a, b = image.reshape(shape), ref.reshape(shape)
    if rows is not None:
        a, b = a[rows[0]:rows[1] + 1], b[rows[0]:rows[1] + 1]
    ok, fig = _float_agree(a, b, precision)
    where = f" (rows {rows[0]}-{rows[1]})" if rows is not None else ""
    return ok, (f"image vs baseline{where}: max diff {fig['max_diff_of_max']:.2g} of max, "
                f"correlation {fig['correlation']:.7f}")


def render_in_process(workload: B.Workload, plan: Plan, dtype: str) -> float:
    """Seconds to render ``workload`` in this process, after a warm-up render of a 64^2 version."""
    import torch
    from reference.cli import parse_args
    from reference.scene import build_scene
    from torchsim.engine import render
    flags = ["-engine", "torch", "-device", plan.device, "-dtype", dtype]
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(dir=plan.tmpdir) as folder:
        for name in workload.inputs:
            shutil.copyfile(Path(plan.inputs) / name, Path(folder) / name)
        os.chdir(folder)                  # the scene names its input files relative to here
        try:
            render(build_scene(parse_args([*scaled(workload, 64).args, *flags]), echo=False), progress=False)
            scene = build_scene(parse_args([*workload.args, *flags]), echo=False)
            if plan.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            render(scene, progress=False)     # returns a host array: the device's work is done
            return time.perf_counter() - start
        finally:
            os.chdir(cwd)


def _bench_device(plan, w, engine, title, base_s, ref, rows, deadline, report, versus) -> float | None:
    """Time ``engine`` on ``w``, check its image, add its row; its median seconds or None."""
    check = f"{title}: {engine.label}"
    try:
        times, image = time_engine(engine, w, plan, deadline)
    except OutOfTime:
        report.add("benchmark", check, "skip", detail="out of time (budget)")
        return None
    except B.BenchmarkError as exc:
        report.add("benchmark", check, "FAIL", detail=str(exc))
        return None
    median = statistics.median(times)
    n = pixels_of(w)
    ok, text = image_check(image, ref, engine.precision, (n, n), rows)
    report.add("benchmark", check, "pass" if ok else "FAIL", median, f"{base_s / median:.3g}x",
               f"runs {' '.join(f'{t:.2f}' for t in times)}; {text}")
    if w.name == "heavy" and engine.precision == "float32" and not plan.dry_run:
        verdict = (("met" if base_s / median >= 100 else "NOT met") if versus == "C"
                   else "not judged: the goal is against C")
        report.notes.append(f"goal: the heavy scene at least 100x faster than C with two threads (whole process, "
                            f"float32): {base_s / median:.3g}x {versus}'s time ({verdict})")
    return median


def step_benchmark(plan: Plan, deadline: Deadline, report: Report) -> None:
    base = baseline_engine(plan)
    versus = "C" if base.name == "c" else "numba"
    if base.name != "c":
        report.notes.append("no C binary (--c-bin or NB_C_BIN): the baseline is our reference engine on the CPU")
    for w in workloads(plan.dry_run):
        title = f"{w.name} ({plan.threads} thread{'s' if plan.threads > 1 else ''})"
        if w.inputs and (plan.inputs is None or not all((Path(plan.inputs) / f).is_file() for f in w.inputs)):
            report.add("benchmark", f"{title}: all engines", "skip",
                       detail=f"{', '.join(w.inputs)} not found in {plan.inputs} (--inputs or --corpus)")
            continue
        report.notes.append(f"workload {w.name}: {w.description}: {' '.join(w.args)}")
        try:
            base_s, how, ref, rows = time_baseline(base, w, plan, deadline)
        except OutOfTime:
            report.add("benchmark", f"{title}: {base.label} and the device", "skip", detail="out of time (budget)")
            continue
        except B.BenchmarkError as exc:
            report.add("benchmark", f"{title}: {base.label}", "FAIL", detail=str(exc))
            continue
        report.add("benchmark", f"{title}: {base.label}", "info", base_s, "1x", how)
        whole = {e.precision: _bench_device(plan, w, e, title, base_s, ref, rows, deadline, report, versus)
                 for e in device_engines(plan, w)}
        if w.name != "heavy":
            continue
        for dtype, seconds in whole.items():
            check = f"{title}: torch {plan.device} {dtype}, render only (in process, after a warm-up)"
            # the render alone takes less than its whole process did: start it only if that fits
            if seconds is None or deadline.left() < seconds:
                report.add("benchmark", check, "skip", detail="out of time (budget)")
                continue
            render_s = render_in_process(w, plan, dtype)
            report.add("benchmark", check, "info", render_s, f"{base_s / render_s:.3g}x",
                       "no imports, no start-up; the baseline's time is whole-process")


# ---------------------------------------------------------------------------
# driver and output
# ---------------------------------------------------------------------------

STEPS = (("cuda tests", step_cuda_tests), ("corpus", step_corpus), ("gradients", step_gradients),
         ("benchmark", step_benchmark))


def run_all(plan: Plan, log=lambda text: None, clock=time.monotonic) -> Report:
    report = Report(header=describe(plan))
    deadline = Deadline(plan.budget_s, clock)
    started = clock()
    for name, step in STEPS:
        if deadline.left() <= 0:
            report.add(name, "(whole step)", "skip", detail=f"not started: the {plan.budget_s:g} s budget ran out")
            continue
        log(f"[gpu_check] {name} ({deadline.left():.0f} s of the budget left)")
        share = STEP_SHARE.get(name)
        step(plan, deadline.within(share * plan.budget_s) if share else deadline, report)
        release_device_memory(plan)
    report.header["elapsed_s"] = round(clock() - started, 1)
    return report


def release_device_memory(plan: Plan) -> None:
    """Hand this process's cached device memory back before the benchmark's processes need it."""
    if plan.device == "cuda":
        import torch
        torch.cuda.empty_cache()


def describe(plan: Plan) -> dict:
    import torch
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    device = torch.cuda.get_device_name(0) if plan.device == "cuda" else cpu
    return {"mode": "CPU DRY RUN (tiny sizes; timings mean nothing)" if plan.dry_run else "CUDA",
            "device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "threads": plan.threads,
            "baseline": plan.c_bin or "reference engine (numba) on the CPU",
            "corpus": str(plan.corpus), "budget_s": plan.budget_s, "repeat": plan.repeat,
            "warm_up": "none (dry run)" if plan.dry_run else "one untimed run per command"}


COLUMNS = ("step", "check", "result", "seconds", "speed-up vs baseline", "details")


def markdown(report: Report) -> str:
    h = report.header
    lines = [f"GPU check: {h['mode']}; device {h['device']}; torch {h['torch']}, Python {h['python']}, "
             f"{h['cpus']} CPUs; baseline {h['baseline']} on {h['threads']} thread(s); "
             f"median of {h['repeat']} run(s), warm-up: {h['warm_up']}; "
             f"{h.get('elapsed_s', '?')} s of a {h['budget_s']:g} s budget", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---|---|---:|---:|---|"]
    for r in report.rows:
        seconds = "" if r.seconds is None else f"{r.seconds:.2f}"
        cells = (r.step, r.check, r.result, seconds, r.speedup, r.detail.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    if report.notes:
        lines.append("")
        lines += [f"- {n}" for n in report.notes]
    return "\n".join(lines)


def write_out(report: Report, folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(markdown(report) + "\n")
    data = {"header": report.header, "rows": [asdict(r) for r in report.rows], "notes": report.notes,
            "failed": report.failed}
    (out / "gpu_check.json").write_text(json.dumps(data, indent=1) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--c-bin", help="the C nanoBragg binary, the benchmark's baseline (default: $NB_C_BIN; "
                   "without one: the reference engine on the CPU)")
    p.add_argument("--corpus", default=None,
                   help="the C corpus folder (default: ../shared/c_corpus beside the checkout)")
    p.add_argument("--inputs", default=None, help="folder holding A.mat and P1.hkl (default: the corpus' inputs/)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="total time budget in seconds (default 270)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs per benchmark command (default 2; 1 in the dry run)")
    p.add_argument("--threads", type=int, default=2, help="threads of the baseline (OMP_NUM_THREADS, "
                   "NUMBA_NUM_THREADS; default 2)")
    p.add_argument("--cases", default=None, help="comma-separated corpus case names (default: all; the dry run: three)")
    p.add_argument("--out", default=None, help="also write gpu_check.md and gpu_check.json into this folder")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run the pipeline on -device cpu with tiny sizes (automatic without CUDA)")
    p.add_argument("--tmpdir", default=None, help="where temporary run folders go")
    opts = p.parse_args(argv)
    if opts.budget_s <= 0:
        p.error("--budget-s must be positive")
    if opts.repeat is not None and opts.repeat < 1:
        p.error("--repeat must be at least 1")
    if opts.threads < 1:
        p.error("--threads must be at least 1")
    return opts


def make_plan(opts, cuda_available: bool) -> Plan:
    """The plan for these options; ToolError for a bad path."""
    from tests import corpus as corpus_module
    dry = opts.cpu_dry_run or not cuda_available
    corpus = Path(opts.corpus).expanduser().resolve() if opts.corpus else corpus_module.CORPUS
    if opts.corpus and not (corpus / "cases" / "cases.json").is_file():
        raise ToolError(f"--corpus {opts.corpus}: no cases/cases.json there")
    inputs = Path(opts.inputs).expanduser().resolve() if opts.inputs else corpus / "inputs"
    if opts.inputs and not inputs.is_dir():
        raise ToolError(f"--inputs {opts.inputs} is not a folder")
    if not inputs.is_dir():
        found = B.default_inputs_dir()
        inputs = Path(found) if found else None
    cases = tuple(c.strip() for c in opts.cases.split(",") if c.strip()) if opts.cases else None
    repeat = opts.repeat or (1 if dry else 2)
    return Plan("cpu" if dry else "cuda", dry, corpus, inputs, find_c_binary(opts.c_bin, required=False), repeat,
                opts.budget_s, opts.threads, cases, opts.tmpdir)


def main(argv=None) -> int:
    opts = parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not opts.cpu_dry_run:
        print("gpu_check: no CUDA device here: running the CPU dry run (tiny sizes, -device cpu)", file=sys.stderr)
    try:
        plan = make_plan(opts, cuda)
    except ToolError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    report = run_all(plan, log=lambda text: print(text, file=sys.stderr, flush=True))
    text = markdown(report)
    print(text)
    if opts.out:
        write_out(report, opts.out)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
