"""Time one process rendering the same image again and again: what a Python API user pays per image.

Usage::

    python -m tools.api_benchmark [--workload a|b|light|all] [--engines numba,torch,torch64]
                                  [--images N] [--threads T] [--compile] [--extra "FLAGS"]
                                  [--chebyshev-max-n N] [--glibc-default-heap]

The scene of each workload (the flags of :data:`tools.benchmark.WORKLOADS`)
is built once, through the command line's front end, in a temporary folder
holding the workload's input files; then the image is rendered ``N`` times
(default 5).  Engines: ``numba`` (:func:`reference.render.render` of the
scene), ``torch`` (``torchsim.Simulator`` in float32, ``forward()`` under
``torch.no_grad()``), ``torch64`` (the same in float64) and, with
``--compile``, ``torch-compiled``: float32 with the kernel's
``render_pixels`` wrapped in ``torch.compile`` (Inductor), a measurement of
what compiling would give (the Simulator does not offer it: see
specs/engines.md).  Its first image includes the compilation (or, in a
later process, the reading of Inductor's on-disk cache).

The Markdown table gives, per (workload, engine): the import time of the
engine's modules in this process (the first engine also pays for the
modules they share), the time to build the scene or module, the first
image (Numba's compilation or its on-disk cache, torch's first-call
costs), and the median wall and CPU time (all threads, from
``resource.getrusage``) and minor page faults of the later images.  Threads: the workload's count
(``--threads`` overrides), set with ``torch.set_num_threads`` and
``numba.set_num_threads``.

Variations: ``--extra`` appends flags to every workload (a later flag wins:
``--extra "-N 8"``); ``--chebyshev-max-n`` sets
``torchsim.lattice.CHEBYSHEV_MAX_N`` (0: the quotient form for every N);
``--glibc-default-heap`` skips :func:`torchsim.allocator.keep_freed_memory`
(the page-fault column shows what it saves).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from contextlib import contextmanager

from tools.benchmark import WORKLOADS, _fresh_folder, default_inputs_dir

ENGINES = ("numba", "torch", "torch64", "torch-compiled")


def cpu_seconds() -> float:
    """User + system seconds of this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def timed(out: dict, key: str):
    """Record the wall and CPU seconds and the minor page faults of the block: out[key] = (wall, cpu, faults)."""
    w, c, f = time.perf_counter(), cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    yield
    out[key] = (time.perf_counter() - w, cpu_seconds() - c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)


def engine_renderer(engine: str, tokens: list, threads: int, times: dict):
    """A no-argument function rendering the workload's image once; fills times['import'], times['build']."""
    if engine == "numba":
        with timed(times, "import"):
            import numba
            from reference.render import render as reference_render
            from reference.cli import parse_args
            from reference.scene import build_scene
            from reference.structure_factors import skip_cache_write
        numba.set_num_threads(threads)
        with timed(times, "build"):
            sc = build_scene(parse_args(tokens), echo=False, stage=skip_cache_write)
        return lambda: reference_render(sc, progress=False).image
    with timed(times, "import"):
        import torch
        from torchsim import Simulator
        from torchsim import kernel as K
    torch.set_num_threads(threads)
    dtype = torch.float64 if engine == "torch64" else torch.float32
    with timed(times, "build"):
        sim = Simulator.from_args(tokens, dtype=dtype)
    kernel = torch.compile(K.render_pixels) if engine == "torch-compiled" else K.render_pixels

    def render():
        plain, K.render_pixels = K.render_pixels, kernel     # the Simulator calls K.render_pixels
        try:
            with torch.no_grad():
                return sim().numpy()
        finally:
            K.render_pixels = plain
    return render


def measure(engine: str, workload, images: int, threads: int, inputs, extra=()) -> dict:
    """Import, build and ``images`` renders of one (engine, workload); the times by name."""
    folder = _fresh_folder(workload, inputs, None)
    here = os.getcwd()
    times = {"renders": []}
    try:
        os.chdir(folder)
        render = engine_renderer(engine, [*workload.args, *extra], threads, times)
        for _ in range(images):
            step = {}
            with timed(step, "image"):
                render()
            times["renders"].append(step["image"])
    finally:
        os.chdir(here)
        shutil.rmtree(folder, ignore_errors=True)
    return times


def table(rows) -> str:
    head = ("workload", "engine", "threads", "imports [s]", "build [s]", "first image [s]",
            "later images: median wall [s]", "median CPU [s]", "median page faults", "runs [s]")
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for name, engine, threads, t in rows:
        later = t["renders"][1:] or t["renders"]
        wall = statistics.median(x[0] for x in later)
        cpu = statistics.median(x[1] for x in later)
        faults = statistics.median(x[2] for x in later)
        runs = " ".join(f"{x[0]:.3f}" for x in t["renders"])
        out.append(f"| {name} | {engine} | {threads} | {t['import'][0]:.2f} | {t['build'][0]:.2f} | "
                   f"{t['renders'][0][0]:.3f} | {wall:.3f} | {cpu:.3f} | {faults:.0f} | {runs} |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.api_benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    p.add_argument("--engines", default="numba,torch,torch64", help=f"comma-separated, from {', '.join(ENGINES)}")
    p.add_argument("--images", type=int, default=5, help="renders per engine (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: the workload's)")
    p.add_argument("--compile", action="store_true", help="add the torch-compiled engine")
    p.add_argument("--inputs", default=None, help="folder holding A.mat and P1.hkl (default: the C corpus inputs)")
    p.add_argument("--extra", default="", help="flags appended to every workload's, e.g. \"-N 8\"")
    p.add_argument("--glibc-default-heap", action="store_true",
                   help="leave glibc's heap thresholds as they are (no torchsim.allocator.keep_freed_memory)")
    p.add_argument("--chebyshev-max-n", type=int, default=None,
                   help="torchsim.lattice.CHEBYSHEV_MAX_N for this run (0: never the Chebyshev form)")
    opts = p.parse_args(argv)
    opts.engines = [e.strip() for e in opts.engines.split(",") if e.strip()]
    if opts.compile and "torch-compiled" not in opts.engines:
        opts.engines.append("torch-compiled")
    bad = [e for e in opts.engines if e not in ENGINES]
    if bad or not opts.engines:
        p.error(f"unknown engine(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(ENGINES)}")
    if opts.images < 1 or (opts.threads is not None and opts.threads < 1):
        p.error("--images and --threads must be at least 1")
    if opts.inputs is None:
        found = default_inputs_dir()
        opts.inputs = str(found) if found else None
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    names = list(WORKLOADS) if opts.workload == "all" else [opts.workload]
    if not opts.glibc_default_heap and any(e.startswith("torch") for e in opts.engines):
        from torchsim.allocator import keep_freed_memory
        keep_freed_memory()         # as nanobragg -engine torch does
    if opts.chebyshev_max_n is not None:
        from torchsim import lattice
        lattice.CHEBYSHEV_MAX_N = opts.chebyshev_max_n
    rows = []
    for name in names:
        w = WORKLOADS[name]
        if w.inputs and (opts.inputs is None or not all(os.path.isfile(os.path.join(opts.inputs, f))
                                                        for f in w.inputs)):
            print(f"workload {name} skipped: {', '.join(w.inputs)} not found (use --inputs)", file=sys.stderr)
            continue
        threads = opts.threads or w.threads
        for engine in opts.engines:
            t = measure(engine, w, opts.images, threads, opts.inputs, opts.extra.split())
            print(f"[{name}/{engine}] " + " ".join(f"{x[0]:.3f}" for x in t["renders"]), file=sys.stderr, flush=True)
            rows.append((name, engine, threads, t))
    print(f"{opts.images} image(s) per engine, one process; workload flags in tools/benchmark.py"
          + (f", plus {opts.extra}" if opts.extra else "")
          + (f"; CHEBYSHEV_MAX_N = {opts.chebyshev_max_n}" if opts.chebyshev_max_n is not None else "")
          + ("; glibc's default heap thresholds" if opts.glibc_default_heap else ""))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
