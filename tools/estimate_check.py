"""Compare the pre-flight estimate with measured time and memory on the benchmark workloads.

Usage::

    python -m tools.estimate_check [--engines numba,torch,torch64] [--workload a|b|all]
                                   [--repeat R] [--inputs DIR]

For every (workload, engine) of ``tools.benchmark`` (same command lines, same
thread counts: (a) one thread, (b) two), the run's estimate is computed
exactly as the run computes it (``reference.preflight``: the scene is built
in-process, the estimate takes the workload's thread count), then the command
runs R times (after one warm-up run that fills Numba's cache) in a fresh
folder, each run measured for wall time and peak resident set (``/usr/bin/time
-v``'s "Maximum resident set size", or ``wait4``'s where that program is
missing: the same kernel figure).  The Markdown table gives the medians and
the ratios measured / estimated; the goal is a factor of 2 either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.benchmark import ENGINE_FLAGS, OUTPUT_ARGS, WORKLOADS, default_inputs_dir
from tools.compare_c import our_command, python_env

TIME_BIN = "/usr/bin/time"


def estimated(workload, engine: str, threads: int, folder: str):
    """The estimate the run prints, computed in-process in ``folder``."""
    from reference import preflight
    from reference.cli import parse_args
    from reference.scene import build_scene
    old = os.getcwd()
    os.chdir(folder)
    try:
        cfg = parse_args([*workload.args, *OUTPUT_ARGS, *ENGINE_FLAGS[engine]])
        with contextlib.redirect_stdout(io.StringIO()):
            sc = build_scene(cfg, echo=False)
        return preflight.estimate(preflight.scene_counts(sc), cfg, threads)
    finally:
        os.chdir(old)


def measure(cmd, folder: str, env) -> tuple[float, float, float, str]:
    """(wall seconds, peak resident bytes, CPU seconds, stdout) of one run of ``cmd`` in ``folder``."""
    report = os.path.join(folder, ".time-v.txt")
    use_time = os.access(TIME_BIN, os.X_OK)
    full = [TIME_BIN, "-v", "-o", report, *cmd] if use_time else list(cmd)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(full, cwd=folder, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"estimate_check: {' '.join(cmd)} exited with {code}: {err.read()[-1500:]}")
        peak = usage.ru_maxrss * 1024.0
        if use_time:
            with open(report) as handle:
                for line in handle:
                    if "Maximum resident set size" in line:
                        peak = float(line.rsplit(":", 1)[1]) * 1024.0
            os.remove(report)
        return wall, peak, usage.ru_utime + usage.ru_stime, out.read()


def fresh_folder(workload, inputs) -> str:
    folder = tempfile.mkdtemp(prefix=f"nb_estimate_{workload.name}_")
    for name in workload.inputs:
        shutil.copyfile(Path(inputs) / name, Path(folder) / name)
    return folder


def check(opts, log):
    rows = []
    for name in (list(WORKLOADS) if opts.workload == "all" else [opts.workload]):
        w = WORKLOADS[name]
        if w.inputs and (opts.inputs is None or not all((Path(opts.inputs) / f).is_file() for f in w.inputs)):
            log(f"workload {name} skipped: {', '.join(w.inputs)} not found (use --inputs)")
            continue
        for engine in opts.engines:
            cmd = our_command([*w.args, *OUTPUT_ARGS], ENGINE_FLAGS[engine])
            env = python_env(w.threads)
            folder = fresh_folder(w, opts.inputs)
            try:
                est = estimated(w, engine, w.threads, folder)
                log(f"[{name}/{engine}] estimate {est.seconds:.2f} s, {est.peak_bytes / 1e6:.0f} MB; warm-up")
                measure(cmd, folder, env)
                runs = []
                for r in range(opts.repeat):
                    shutil.rmtree(folder)
                    folder = fresh_folder(w, opts.inputs)
                    wall, peak, cpu, stdout = measure(cmd, folder, env)
                    runs.append((wall, peak, cpu))
                    log(f"[{name}/{engine}] run {r + 1}: {wall:.2f} s, {peak / 1e6:.0f} MB, {cpu:.2f} s CPU")
                printed = [line for line in stdout.splitlines() if line.startswith("estimate:")]
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            rows.append(dict(workload=name, engine=engine, threads=w.threads, est_s=est.seconds,
                             est_mb=est.peak_bytes / 1e6, wall=statistics.median(r[0] for r in runs),
                             peak=statistics.median(r[1] for r in runs) / 1e6,
                             cpu=statistics.median(r[2] for r in runs), printed=printed))
    return rows


def table(rows) -> str:
    out = ["| workload | engine | threads | estimated time [s] | measured time [s] | measured/estimated "
           "| estimated memory [MB] | measured peak [MB] | measured/estimated | measured CPU [s] |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['workload']} | {r['engine']} | {r['threads']} | {r['est_s']:.2f} | {r['wall']:.2f} | "
                   f"{r['wall'] / r['est_s']:.2f} | {r['est_mb']:.0f} | {r['peak']:.0f} | "
                   f"{r['peak'] / r['est_mb']:.2f} | {r['cpu']:.2f} |")
    ok = all(0.5 <= r["wall"] / r["est_s"] <= 2 and 0.5 <= r["peak"] / r["est_mb"] <= 2 for r in rows)
    out += ["", f"Every estimate within a factor of 2 of the measurement: {'yes' if ok else 'NO'}."]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.estimate_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="numba,torch,torch64",
                   help="comma-separated list from numba, torch (float32), torch64 (default: all three)")
    p.add_argument("--workload", choices=("a", "b", "all"), default="all")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per command (default 3)")
    p.add_argument("--inputs", help="folder with A.mat and P1.hkl (default: the shared C corpus inputs)")
    opts = p.parse_args(argv)
    opts.engines = [e.strip() for e in opts.engines.split(",") if e.strip()]
    bad = [e for e in opts.engines if e not in ("numba", "torch", "torch64")]
    if bad:
        p.error(f"unknown engine(s) {', '.join(bad)}")
    if opts.inputs is None:
        found = default_inputs_dir()
        opts.inputs = str(found) if found else None
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    load = os.getloadavg()[0]
    rows = check(opts, log)
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} "
          f"at the end; median of {opts.repeat} runs after a warm-up\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
