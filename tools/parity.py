"""``nanobragg-parity``: generated scenes through any nanoBragg-compatible program and our oracle.

Usage::

    nanobragg-parity --program "COMMAND [ARGS]"
                     [--against numba|torch64|torch32|simulator64|simulator32]
                     [--count N] [--seed S] [--jobs J] [--profile quick|thorough]
                     [--time-limit SEC] [--out DIR]
    nanobragg-parity --replay DIR_OR_FLAGS --program "COMMAND [ARGS]"

Hypothesis draws whole scenes (:mod:`tools.scenes`).  Each scene runs in its
own empty folder through the program under test and, in another empty
folder, through our reference with ``-c_parity`` (``--against`` picks the
numba engine or the torch engine in float64 or float32); the outputs are
compared with specs/tolerances.md (:mod:`tools.compare_outputs`).  The first
scene that disagrees in a new way is shrunk by hypothesis to a minimal
command line, saved under ``DIR/failures/`` and the search goes on.

Writes ``DIR/report.md`` and ``DIR/report.json``.  Exit status 0 when every
scene agrees, 1 when any disagrees, 2 on a usage error.  A program that
crashes, hangs, writes nothing or writes garbage is reported, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from tools.compare_outputs import FLOAT32_OF_MAX, RunOutput, Verdict, compare
from tools.scenes import FAMILIES, FLOAT_FILE, INT_FILE, NOISE_FILE, PGM_FILE, PROFILES, Scene, scenes

AGAINST = {
    "numba": ["-c_parity", "-noprogress"],
    "torch64": ["-c_parity", "-noprogress", "-engine", "torch", "-dtype", "float64"],
    "torch32": ["-c_parity", "-noprogress", "-engine", "torch", "-dtype", "float32"],
    # the differentiable Simulator's forward pass as the float image (files and printout as torch's)
    "simulator64": ["-c_parity", "-noprogress", "-engine", "torch", "-dtype", "float64"],
    "simulator32": ["-c_parity", "-noprogress", "-engine", "torch", "-dtype", "float32"],
}
DEFAULT_COUNT = {"quick": 40, "thorough": 2000}


class UsageError(Exception):
    pass


class _Disagreement(Exception):
    """Raised inside the hypothesis test to make it shrink a failing scene."""


def _disagree(signature: str):
    # one raising line: hypothesis tells failures apart by where they are raised
    raise _Disagreement(signature)


# --------------------------------------------------------------------------
# running one scene
# --------------------------------------------------------------------------

def output_files(tokens) -> dict:
    """The outputs a scene's flags ask for: kind -> file name."""
    files = {"float": FLOAT_FILE, "int": INT_FILE}
    if NOISE_FILE in tokens:
        files["noise"] = NOISE_FILE
    if PGM_FILE in tokens:
        files["pgm"] = PGM_FILE
    return files


def run_program(program: list, scene: Scene, folder: str, timeout: float) -> RunOutput:
    """Run the program under test on ``scene`` in ``folder`` (a fresh, empty folder)."""
    scene.materialize(folder)
    env = dict(os.environ, OMP_NUM_THREADS="1")     # C's interpolation cut-off is a race with threads
    start = time.perf_counter()
    try:
        proc = subprocess.run(program + scene.tokens, cwd=folder, env=env, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    except OSError as exc:
        rc, out, err = 127, b"", str(exc).encode()
    return RunOutput(rc, out.decode("latin-1"), err.decode("latin-1"), time.perf_counter() - start, folder)


def run_reference(against: str, scene: Scene, folder: str) -> RunOutput:
    """Run our reference in this process (no start-up cost per scene) inside ``folder``."""
    from reference.cli import main as reference_main
    scene.materialize(folder)
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    start = time.perf_counter()
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _simulator_images(against):
            rc = reference_main(AGAINST[against] + scene.tokens)
    except Exception as exc:          # a bug of ours: report it as the reference failing
        rc = 99
        err.write(f"reference raised {type(exc).__name__}: {exc}\n")
    finally:
        os.chdir(here)
    return RunOutput(rc, out.getvalue(), err.getvalue(), time.perf_counter() - start, folder)


@contextlib.contextmanager
def _simulator_images(against: str):
    """For ``simulator*``: the command line's float image comes from ``torchsim.Simulator``.

    The torch engine still renders (for the printout's solid angle and the
    interpolation warning); its image is replaced by the Simulator's forward
    pass, so the outputs and statistics test the differentiable model.
    """
    if not against.startswith("simulator"):
        yield
        return
    import dataclasses

    import numpy as np
    import torch

    from reference import run as run_module
    from torchsim.simulator import Simulator
    engine_render = run_module.render_float_image
    dtype = torch.float64 if against == "simulator64" else torch.float32

    def render(sc, progress):
        result = engine_render(sc, progress)
        with torch.no_grad():
            image = Simulator(sc.cfg, dtype=dtype)().cpu().numpy()
        return dataclasses.replace(result, image=np.asarray(image, dtype=np.float32))

    run_module.render_float_image = render
    try:
        yield
    finally:
        run_module.render_float_image = engine_render


def scene_key(scene: Scene) -> str:
    digest = hashlib.sha1(json.dumps(scene.to_json(), sort_keys=True).encode())
    return digest.hexdigest()


class Evaluator:
    """Runs scenes through both sides and remembers the verdicts (shrinking revisits scenes)."""

    def __init__(self, program: list, against: str, precision: str, timeout: float, workdir: str):
        self.program, self.against, self.precision = program, against, precision
        self.timeout, self.workdir = timeout, workdir
        self.cache: dict = {}

    def evaluate(self, scene: Scene, keep: str | None = None) -> tuple[Verdict, RunOutput, RunOutput]:
        """Run ``scene`` on both sides; ``keep`` is a folder to keep both runs' files in."""
        key = scene_key(scene)
        if key in self.cache and keep is None:
            return self.cache[key]
        base = keep or tempfile.mkdtemp(prefix="scene-", dir=self.workdir)
        try:
            prog_dir, ref_dir = os.path.join(base, "program"), os.path.join(base, "reference")
            os.makedirs(prog_dir)
            os.makedirs(ref_dir)
            ours = run_program(self.program, scene, prog_dir, self.timeout)
            ref = run_reference(self.against, scene, ref_dir)
            verdict = compare(prog_dir, ours, ref_dir, ref, output_files(scene.tokens), self.precision)
            if ref.returncode == 99:
                verdict.agree = False
                verdict.kinds.insert(0, "exit status")
                verdict.details.insert(0, "the reference itself failed: " + ref.stderr.strip()[-300:])
        finally:
            if keep is None:
                shutil.rmtree(base, ignore_errors=True)
        result = (verdict, _trim(ours), _trim(ref))
        self.cache[key] = result
        return result


def _trim(run: RunOutput) -> RunOutput:
    return RunOutput(run.returncode, run.stdout[-4000:], run.stderr[-2000:], run.seconds, "")


# --------------------------------------------------------------------------
# the search: generate, and shrink each new kind of disagreement
# --------------------------------------------------------------------------

def search(program: list, against: str, precision: str, profile: str, count: int, seed: int,
           deadline: float, timeout: float, shrink_seconds: float, workdir: str, progress=None) -> dict:
    """Run ``count`` generated scenes; returns tallies and the shrunk failures."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hyp_seed

    evaluator = Evaluator(program, against, precision, timeout, workdir)
    tallies = {"scenes": 0, "agree": 0, "bit_identical": 0, "all_zero": 0, "seconds_program": 0.0,
               "seconds_reference": 0.0, "families": {f: [0, 0, 0] for f in FAMILIES}, "deliberate": {}}
    failures = []
    known: list = []          # (kind, families) of each shrunk failure
    attempt = 0

    def is_new(scene, verdict, kind=None):
        """A disagreement not explained by a failure already shrunk (same kind, its families present)."""
        if verdict.agree or (kind is not None and verdict.signature != kind):
            return False
        return not any(k == verdict.signature and fams <= set(scene.families) for k, fams in known)

    while tallies["scenes"] < count and time.time() < deadline:
        state = {"target": None, "last": None, "shrink_until": 0.0, "ran": 0}

        def record(scene, verdict, ours, ref):
            tallies["scenes"] += 1
            state["ran"] += 1
            tallies["agree"] += verdict.agree
            tallies["bit_identical"] += verdict.bit_identical
            tallies["all_zero"] += verdict.all_zero
            tallies["seconds_program"] += ours.seconds
            tallies["seconds_reference"] += ref.seconds
            for name in scene.families:
                tallies["families"][name][0] += 1
                tallies["families"][name][1] += not verdict.agree
                tallies["families"][name][2] += verdict.all_zero
            for text in verdict.deliberate:
                tallies["deliberate"][text] = tallies["deliberate"].get(text, 0) + 1
            if progress is not None:
                progress(1)

        @settings(max_examples=max(count - tallies["scenes"], 1), database=None, deadline=None,
                  phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                  verbosity=Verbosity.quiet, report_multiple_bugs=False)
        @hyp_seed(seed * 1000003 + attempt)
        @given(scenes(profile))
        def check(scene):
            if state["target"] is None:
                if tallies["scenes"] >= count or time.time() >= deadline:
                    return
                verdict, ours, ref = evaluator.evaluate(scene)
                record(scene, verdict, ours, ref)
                if is_new(scene, verdict):
                    state["target"] = verdict.signature
                    state["last"], state["details"] = scene, verdict.details
                    state["shrink_until"] = min(time.time() + shrink_seconds, deadline + shrink_seconds)
                    _disagree(verdict.signature)
                return
            # shrinking: only the same kind of disagreement counts; past the budget only known scenes run
            if time.time() > state["shrink_until"] and scene_key(scene) not in evaluator.cache:
                return
            verdict, _, _ = evaluator.evaluate(scene)
            if is_new(scene, verdict, state["target"]):
                state["last"], state["details"] = scene, verdict.details
                _disagree(verdict.signature)

        try:
            check()
        except _Disagreement:
            pass
        except Exception as exc:      # hypothesis's own complaints (flaky, ...): keep what we have
            print(f"nanobragg-parity: note: hypothesis stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        attempt += 1
        if state["target"] is not None:
            known.append((state["target"], explaining_families(state["last"])))
            failures.append({"scene": state["last"].to_json(), "kind": state["target"],
                             "details": state["details"]})
        elif state["ran"] == 0:
            break
    return {"tallies": tallies, "failures": failures}


# families (nearly) every scene has one of: a shrunk failure that keeps one of them is not
# explained by it, so they do not tell one failure from another
BASELINE_FAMILIES = {"crystal_cell", "crystal_matrix", "default_F", "hkl_file", "fdump_reuse", "wavelength"}


def explaining_families(scene: Scene) -> set:
    """The families of a shrunk failure that identify it (all of them if only baseline ones are left)."""
    families = set(scene.families)
    return (families - BASELINE_FAMILIES) or families


def _worker(job):
    return search(**job)


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------

def _merge(parts: list) -> dict:
    total = {"scenes": 0, "agree": 0, "bit_identical": 0, "all_zero": 0, "seconds_program": 0.0,
             "seconds_reference": 0.0, "families": {f: [0, 0, 0] for f in FAMILIES}, "deliberate": {}}
    failures = []
    for part in parts:
        t = part["tallies"]
        for key in ("scenes", "agree", "bit_identical", "all_zero", "seconds_program", "seconds_reference"):
            total[key] += t[key]
        for name, counts in t["families"].items():
            for i, n in enumerate(counts):
                total["families"][name][i] += n
        for text, n in t["deliberate"].items():
            total["deliberate"][text] = total["deliberate"].get(text, 0) + n
        failures += part["failures"]
    return {"tallies": total, "failures": failures}


def describe_failures(evaluator: Evaluator, failures: list, out_dir: str) -> list:
    """Re-run each shrunk failure, keep its files under DIR/failures/, and describe it.

    A failure that does not happen again on this second run is still reported,
    marked ``"reproduced": false`` with what differed the first time.
    """
    entries, seen = [], []
    for found in sorted(failures, key=lambda f: len(f["scene"]["tokens"])):
        scene = Scene.from_json(found["scene"])
        # the same failure found by two workers: keep the shorter
        if any(kind == found["kind"] and fams <= set(scene.families) for kind, fams in seen):
            continue
        seen.append((found["kind"], explaining_families(scene)))
        folder = os.path.join(out_dir, "failures", "%03d-%s" % (len(entries) + 1, found["kind"].replace(" ", "_")))
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        verdict, ours, ref = evaluator.evaluate(scene, keep=folder)
        with open(os.path.join(folder, "scene.json"), "w") as fh:
            json.dump(scene.to_json(), fh, indent=1)
        with open(os.path.join(folder, "command.txt"), "w") as fh:
            fh.write(scene.command() + "\n")
        reproduced = not verdict.agree
        entries.append({
            "command": scene.command(), "kind": found["kind"], "reproduced": reproduced,
            "differed": verdict.details if reproduced else found["details"] + ["(agreed when run again)"],
            "figures": verdict.figures, "families": scene.families,
            "input_files": sorted(scene.files), "program_exit": ours.returncode,
            "reference_exit": ref.returncode, "stderr_tail": ours.stderr.strip()[-800:],
            "reference_stderr_tail": ref.stderr.strip()[-400:], "replay": folder,
        })
    return entries


def write_reports(out_dir: str, meta: dict, tallies: dict, failures: list) -> dict:
    scenes_run = tallies["scenes"]
    report = dict(meta)
    report.update({
        "scenes": scenes_run, "agree": tallies["agree"], "disagree": scenes_run - tallies["agree"],
        "bit_identical": tallies["bit_identical"],
        "all_zero_fraction": tallies["all_zero"] / scenes_run if scenes_run else 0.0,
        "seconds_program": round(tallies["seconds_program"], 2),
        "seconds_reference": round(tallies["seconds_reference"], 2),
        "families": {k: {"scenes": n, "disagree": bad, "all_zero": zero}
                     for k, (n, bad, zero) in tallies["families"].items()},
        "deliberate_differences": tallies["deliberate"],
        "failures": failures,
    })
    os.makedirs(out_dir, exist_ok=True)
    _atomic_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1, default=float) + "\n")
    _atomic_text(os.path.join(out_dir, "report.md"), format_markdown(report))
    return report


def _atomic_text(path: str, text: str) -> None:
    tmp = f"{path}.part-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def format_markdown(r: dict) -> str:
    lines = ["# nanobragg-parity report", "",
             f"- program: `{r['program']}`", f"- against: our reference `{r['against']}` with `-c_parity`"
             f" ({r['precision']} criteria)",
             f"- profile `{r['profile']}`, seed {r['seed']}, {r['jobs']} job(s), {r['wall_seconds']:.0f} s wall",
             f"- scenes: **{r['scenes']}**, agree: **{r['agree']}**, disagree: **{r['disagree']}**, "
             f"bit-identical float/int/noise images: {r['bit_identical']}",
             f"- all-zero reference images: {100 * r['all_zero_fraction']:.1f}%",
             f"- time in the program: {r['seconds_program']:.1f} s, in the reference: {r['seconds_reference']:.1f} s",
             ""]
    if r["failures"]:
        lines += ["## Failures (shrunk)", ""]
        for i, f in enumerate(r["failures"], 1):
            flaky = "" if f["reproduced"] else " (did not happen again when re-run)"
            lines += [f"### {i}. {f['kind']}{flaky}", "", "```", f["command"], "```", ""]
            if f["input_files"]:
                lines.append(f"Input files (written by the generator): {', '.join(f['input_files'])}.")
            lines += [f"- {d}" for d in f["differed"]]
            if f["stderr_tail"]:
                lines += ["", "Program's stderr (tail):", "", "```", f["stderr_tail"][-600:], "```"]
            lines += ["", f"Replay: `nanobragg-parity --replay {f['replay']} --program ...`", ""]
    else:
        lines += ["No disagreements.", ""]
    if r["deliberate_differences"]:
        lines += ["## Documented deliberate differences seen (not failures)", ""]
        lines += [f"- {text} ({n} scenes)" for text, n in r["deliberate_differences"].items()]
        lines.append("")
    lines += ["## Scenes per flag family", "", "| family | scenes | disagree | all-zero images |", "|---|---:|---:|---:|"]
    for name, counts in r["families"].items():
        lines.append(f"| {name} | {counts['scenes']} | {counts['disagree']} | {counts['all_zero']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="nanobragg-parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--program", help='the program under test and its fixed arguments, e.g. "$NB_C_BIN" '
                                     'or "nanobragg -engine torch -dtype float64 -c_parity"')
    p.add_argument("--against", choices=sorted(AGAINST), default="numba",
                   help="our side, always with -c_parity: the numba reference (default), the torch "
                        "engine, or the differentiable Simulator, in float64 or float32")
    p.add_argument("--precision", choices=("float64", "float32"), default=None,
                   help="criteria: float64 (specs/tolerances.md) or float32 (%.0e of the maximum); "
                        "default float32 with a float32 --against, else float64" % FLOAT32_OF_MAX)
    p.add_argument("--count", type=int, default=None, help="scenes to run (default: 40 quick, 2000 thorough)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene generator (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="scenes run in parallel processes (default 1)")
    p.add_argument("--profile", choices=PROFILES, default="quick", help="size of the scenes (default quick)")
    p.add_argument("--time-limit", type=float, default=None, help="stop generating after SEC seconds")
    p.add_argument("--scene-timeout", type=float, default=120.0, help="seconds one program run may take")
    p.add_argument("--shrink-time", type=float, default=300.0, help="seconds spent shrinking one failure")
    p.add_argument("--out", default="parity-report", help="report folder (default ./parity-report)")
    p.add_argument("--replay", help="a failure folder (or scene.json) to re-run, or a quoted flag string")
    p.add_argument("--noprogress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.program:
        raise UsageError("--program is required (the command that runs the program under test)")
    try:
        args.program_argv = shlex.split(args.program)
    except ValueError as exc:
        raise UsageError(f"--program: {exc}") from None
    if not args.program_argv:
        raise UsageError("--program is empty")
    exe = args.program_argv[0]
    if shutil.which(exe) is None:
        raise UsageError(f"--program: cannot run '{exe}' (not found or not executable)")
    if args.count is None:
        args.count = DEFAULT_COUNT[args.profile]
    if args.count < 1 or args.jobs < 1:
        raise UsageError("--count and --jobs must be at least 1")
    if args.precision is None:
        args.precision = "float32" if args.against.endswith("32") else "float64"
    return args


def _replay(args) -> int:
    target = args.replay
    if os.path.isdir(target):
        target = os.path.join(target, "scene.json")
    if os.path.isfile(target):
        with open(target) as fh:
            scene = Scene.from_json(json.load(fh))
    else:
        try:
            tokens = shlex.split(target)
        except ValueError as exc:
            raise UsageError(f"--replay: {exc}") from None
        if not tokens:
            raise UsageError("--replay needs a failure folder or a flag string")
        tokens += [] if "-floatfile" in tokens else ["-floatfile", FLOAT_FILE, "-intfile", INT_FILE,
                                                     "-noisefile", NOISE_FILE]
        scene = Scene(tokens, {}, [])
    workdir = tempfile.mkdtemp(prefix="nanobragg-parity-")
    try:
        evaluator = Evaluator(args.program_argv, args.against, args.precision, args.scene_timeout, workdir)
        verdict, ours, ref = evaluator.evaluate(scene)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("scene: " + scene.command())
    print(f"program exit {ours.returncode} ({ours.seconds:.2f} s), reference exit {ref.returncode} ({ref.seconds:.2f} s)")
    for text in verdict.deliberate:
        print("deliberate difference: " + text)
    if verdict.agree:
        print("agree" + (" (bit-identical)" if verdict.bit_identical else ""))
        return 0
    for text in verdict.details:
        print("differs: " + text)
    if ours.stderr.strip():
        print("program stderr (tail):\n" + ours.stderr.strip()[-800:])
    return 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        if args.replay:
            return _replay(args)
        return _run(args)
    except UsageError as exc:
        print(f"nanobragg-parity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanobragg-parity: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    started = time.time()
    deadline = started + args.time_limit if args.time_limit else math.inf
    out_dir = os.path.abspath(args.out)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create {out_dir}: {exc.strerror}") from None
    shutil.rmtree(os.path.join(out_dir, "failures"), ignore_errors=True)
    workdir = tempfile.mkdtemp(prefix="nanobragg-parity-")
    counts = [args.count // args.jobs + (i < args.count % args.jobs) for i in range(args.jobs)]
    jobs = [dict(program=args.program_argv, against=args.against, precision=args.precision,
                 profile=args.profile, count=n, seed=args.seed * 101 + i, deadline=deadline,
                 timeout=args.scene_timeout, shrink_seconds=args.shrink_time, workdir=workdir)
            for i, n in enumerate(counts) if n > 0]
    bar = None
    if not args.noprogress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=args.count, unit="scene", desc="parity")
    try:
        if len(jobs) == 1:
            parts = [search(**jobs[0], progress=bar.update if bar else None)]
        else:
            parts = _run_parallel(jobs, bar)
        merged = _merge(parts)
        evaluator = Evaluator(args.program_argv, args.against, args.precision, args.scene_timeout, workdir)
        failures = describe_failures(evaluator, merged["failures"], out_dir)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"program": args.program, "against": args.against, "precision": args.precision,
            "profile": args.profile, "seed": args.seed, "jobs": args.jobs, "count_requested": args.count,
            "wall_seconds": round(time.time() - started, 1)}
    report = write_reports(out_dir, meta, merged["tallies"], failures)
    print(f"{report['scenes']} scenes: {report['agree']} agree, {report['disagree']} disagree "
          f"({len(failures)} kind(s) of failure, shrunk); all-zero images {100 * report['all_zero_fraction']:.1f}%; "
          f"report: {os.path.join(out_dir, 'report.md')}")
    for f in failures:
        print(f"  {f['kind']}: {f['command']}")
    return 0 if report["disagree"] == 0 and not failures else 1


def _run_parallel(jobs: list, bar) -> list:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        futures = [pool.submit(_worker, job) for job in jobs]
        parts = []
        for fut in futures:
            parts.append(fut.result())
            if bar is not None:
                bar.update(parts[-1]["tallies"]["scenes"])
    return parts


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
