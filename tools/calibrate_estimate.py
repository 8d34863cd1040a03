"""Measure the cost constants of ``reference.preflight.COSTS`` on this machine.

Usage::

    python -m tools.calibrate_estimate [--engines numba,torch-float32,torch-float64] [--repeat R]

For each engine it measures, and prints as a ``COSTS`` table to paste into
``reference/preflight.py``:

* CPU seconds per rendered pixel, per sub-pixel (and sensor layer) and per
  evaluation: in-process renders of six scenes that vary one count at a time,
  one thread, CPU time (``time.process_time``, best of R), fitted by
  non-negative least squares; the tricubic-interpolation multiplier from one
  scene rendered with and without ``-interpolate``;
* the speed-up of a second thread (wall time of one scene on 2 threads vs 1);
* start-up: wall time and peak resident set of a tiny whole run;
* after the render: wall seconds per detector pixel (statistics, int image,
  writing), per pixel of the ROI, and for the PGM and noise images, from
  whole runs of a 3000 x 3000 detector with a 1-pixel ROI and a full one,
  one evaluation per pixel;
* peak bytes per detector pixel and per ROI pixel from the same runs
  (``/usr/bin/time -v``'s Maximum resident set size, or ``wait4``'s, which is
  the same number), and for torch the resident fraction of a chunk's budget.

Renders are timed in CPU seconds of one thread and whole runs in CPU seconds
(user + system) on one thread, which a busy machine inflates little; the
speed-up of a second thread can only be measured on an idle machine (the
tool prints the load average first: with more runnable processes than CPUs,
keep the previous ``parallel``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tools.compare_c import python_env

ENGINE_FLAGS = {
    "numba": ["-engine", "numba"],
    "torch-float32": ["-engine", "torch", "-dtype", "float32"],
    "torch-float64": ["-engine", "torch", "-dtype", "float64"],
}
BASE = ("-cell 50 50 50 90 90 90 -default_F 10 -N 5 -lambda 1 -distance 100 -pixel 0.1 "
        "-nonoise -nopgm -noprogress -seed 1").split()
SCENES = {
    "pixels": "-detpixels 1024 -oversample 1",
    "subpixels": "-detpixels 512 -oversample 2",
    "phi": "-detpixels 512 -oversample 1 -phi 0 -osc 1 -phisteps 8",
    "mosaic": "-detpixels 256 -oversample 1 -mosaic 1 -mosaic_dom 32",
    "mixed": "-detpixels 256 -oversample 2 -phi 0 -osc 1 -phisteps 4 -dispersion 1 -dispsteps 2",
    "layers": "-detpixels 256 -oversample 2 -detector_thick 100 -detector_thicksteps 4 -phi 0 -osc 1 -phisteps 2",
}
INTERP = "-cell 50 50 50 90 90 90 -hkl synth.hkl -N 2 -lambda 1 -distance 100 -pixel 0.1 -detpixels 256 " \
         "-oversample 1 -phi 0 -osc 1 -phisteps 8 -nonoise -nopgm -noprogress -seed 1"
BIG = 3000


# ---------------------------------------------------------------------------
# child: in-process render timings
# ---------------------------------------------------------------------------

def _child(engine: str, scenes: dict, repeat: int) -> dict:
    from reference import preflight
    from reference.cli import parse_args
    from reference.scene import build_scene
    if engine == "numba":
        from reference.render import render
    else:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        from torchsim.engine import render
    out = {}
    first = True
    for name, args in scenes.items():
        cfg = parse_args(args.split() + ENGINE_FLAGS[engine])
        sc = build_scene(cfg, echo=False)
        c = preflight.scene_counts(sc)
        if first:
            render(sc, progress=False)          # compile / load caches
            first = False
        best_cpu = best_wall = float("inf")
        for _ in range(repeat):
            t0, w0 = time.process_time(), time.perf_counter()
            render(sc, progress=False)
            best_cpu = min(best_cpu, time.process_time() - t0)
            best_wall = min(best_wall, time.perf_counter() - w0)
        out[name] = dict(rendered=c.rendered, subpixels=c.subpixels, evaluations=c.evaluations,
                         cpu=best_cpu, wall=best_wall)
    return out


def _write_hkl(folder: Path) -> None:
    r = np.arange(-15, 16)
    h, k, l = np.meshgrid(r, r, r, indexing="ij")
    rows = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    (folder / "synth.hkl").write_text("".join("%d %d %d 10\n" % tuple(x) for x in rows))


def in_process(engine: str, scenes: dict, threads: int, repeat: int, folder: Path) -> dict:
    env = python_env(threads)
    proc = subprocess.run([sys.executable, "-m", "tools.calibrate_estimate", "--child", engine,
                           "--repeat", str(repeat), "--scenes", json.dumps(scenes)],
                          cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"calibration child failed ({engine}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# whole runs: wall time and peak resident set
# ---------------------------------------------------------------------------

def measured_run(args, threads: int, folder: Path) -> tuple[float, float, str]:
    """(seconds, peak resident bytes, stdout) of one whole run, from its own wait4 figures.

    The seconds are CPU seconds (user + system): on one thread that is the
    wall time of an idle machine, and a busy machine inflates it far less
    than the wall time.
    """
    cmd = [sys.executable, "-m", "reference.cli", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=folder, env=python_env(threads), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"run failed: {' '.join(args)}: {err.read()[-1500:]}")
        return wall, usage.ru_maxrss * 1024.0, out.read()


def best_run(args, threads, folder, repeat):
    runs = [measured_run(args, threads, folder) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]


# ---------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------

def nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (few unknowns: drop the negative ones and refit)."""
    active = list(range(A.shape[1]))
    x = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], b, rcond=None)
        if (sol >= 0).all():
            x[:] = 0.0
            x[active] = sol
            return x
        active.pop(int(np.argmin(sol)))
    return x


def calibrate(engine: str, repeat: int, log) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="nb_calib_"))
    _write_hkl(folder)
    flags = ENGINE_FLAGS[engine]
    scenes = {name: " ".join(BASE) + " " + extra for name, extra in SCENES.items()}
    log(f"[{engine}] in-process renders, 1 thread")
    one = in_process(engine, scenes, 1, repeat, folder)
    names = list(one)
    A = np.array([[one[n]["rendered"], one[n]["subpixels"], one[n]["evaluations"]] for n in names], float)
    b = np.array([one[n]["cpu"] for n in names])
    x = nnls(A / A.max(axis=0), b) / A.max(axis=0)
    pixel_s, subpixel_s, eval_s = (float(v) for v in x)
    for n in names:
        pred = A[names.index(n)] @ x
        log(f"    {n:10s} {one[n]['cpu']:.3f} s CPU (fit {pred:.3f})")

    interp = in_process(engine, {"interp": INTERP, "nointerp": INTERP + " -nointerpolate"}, 1, repeat, folder)
    fixed = interp["nointerp"]["rendered"] * pixel_s + interp["nointerp"]["subpixels"] * subpixel_s
    interp_x = max(1.0, (interp["interp"]["cpu"] - fixed) / max(interp["nointerp"]["cpu"] - fixed, 1e-9))
    log(f"    interpolation: {interp['interp']['cpu']:.3f} s vs {interp['nointerp']['cpu']:.3f} s")

    # a scene of about a second: on small ones torch's threads cost more than they bring
    big = {"parallel": " ".join(BASE) + " -detpixels 1024 -oversample 2 -phi 0 -osc 1 -phisteps 4"}
    one_big = in_process(engine, big, 1, repeat, folder)
    two = in_process(engine, big, 2, repeat, folder)
    speedup = one_big["parallel"]["cpu"] / two["parallel"]["wall"]
    parallel = min(1.0, max(0.0, speedup - 1.0))
    log(f"    2 threads: {one_big['parallel']['cpu']:.3f} s CPU on one thread -> {two['parallel']['wall']:.3f} s wall "
        f"(x{speedup:.2f}; load average {os.getloadavg()[0]:.1f})")

    log(f"[{engine}] whole runs, 1 thread, CPU seconds")
    tiny = BASE + ["-detpixels", "16", "-oversample", "1"] + flags
    start_s, base, _ = best_run(tiny, 1, folder, max(repeat, 3))
    big = BASE + ["-detpixels", str(BIG), "-oversample", "1"] + flags
    N = BIG * BIG
    render_cpu = N * (pixel_s + subpixel_s + eval_s)
    t_small, m_small, _ = best_run(big + ["-roi", "0", "0", "0", "0"], 1, folder, repeat)
    t_full, m_full, _ = best_run(big, 1, folder, repeat)
    with_outputs = [t for t in big if t not in ("-nonoise", "-nopgm")]
    t_all, _, _ = best_run(with_outputs, 1, folder, repeat)
    output_s = max(0.0, (t_small - start_s) / N)
    roi_s = max(0.0, (t_full - t_small - render_cpu) / N)
    extra_s = max(0.0, (t_all - t_full) / N)
    work_fraction = 0.0
    retained = 0.0
    if engine != "numba":
        chunky = BASE + ["-detpixels", "128", "-oversample", "1", "-phi", "0", "-osc", "1", "-phisteps", "200",
                         "-memory_gb", "0.2"] + flags
        _, m_chunk, _ = best_run(chunky, 1, folder, 1)
        work_fraction = max(0.0, (m_chunk - base) / 0.2e9)
        retained = work_fraction * 256e6
    out_bytes = max(0.0, (m_small - base) / N)
    roi_bytes = max(0.0, (m_full - m_small - retained) / N)
    log(f"    start {start_s:.2f} s, {base / 1e6:.0f} MB; {BIG}^2 pixels: 1-pixel ROI {t_small:.2f} s "
        f"{m_small / 1e6:.0f} MB, full {t_full:.2f} s {m_full / 1e6:.0f} MB, with PGM and noise {t_all:.2f} s")
    return dict(start_s=round(start_s, 2), base_mb=round(base / 1e6), pixel_s=float("%.2g" % pixel_s),
                subpixel_s=float("%.2g" % subpixel_s), eval_s=float("%.2g" % eval_s),
                interp_x=round(interp_x, 1), parallel=round(parallel, 2),
                output_s=float("%.2g" % (output_s + roi_s)), extras_s=float("%.2g" % extra_s),
                out_bytes=round(out_bytes, 1), roi_bytes=round(roi_bytes, 1),
                work_fraction=round(work_fraction, 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.calibrate_estimate", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(ENGINE_FLAGS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--scenes", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        print(json.dumps(_child(opts.child, json.loads(opts.scenes), opts.repeat)))
        return 0
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    table = {}
    for engine in [e.strip() for e in opts.engines.split(",") if e.strip()]:
        if engine not in ENGINE_FLAGS:
            p.error(f"unknown engine {engine}; choose from {', '.join(ENGINE_FLAGS)}")
        table[engine] = calibrate(engine, opts.repeat, log)
    print("COSTS = {")
    for engine, k in table.items():
        print(f"    {engine!r}: dict(" + ", ".join(f"{name}={value!r}" for name, value in k.items()) + "),")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
