"""Fuzz: careless and hostile command lines never give a traceback, a silent NaN or a leftover.

Hypothesis starts from a valid generated scene (the parity tool's generator)
and mutates it: values dropped or repeated, numbers replaced by hostile ones,
input files replaced by garbage, empty or odd content.  Whatever happens, the
command line answers with an exit status and at most clean message lines:
no exception escapes, no temporary file is left, a failed run writes no
output, and a successful spec-mode run writes only finite float images.

A second test runs such command lines as real processes, with SIGINT,
SIGTERM or SIGHUP sent during some of them: a stopped run exits with
128 + n and leaves nothing, and no run grows beyond the peak memory it
announced before starting (within the estimate's stated accuracy, a factor
of 2: specs/cli.md, pre-flight).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from reference.cli import main
from tools.scenes import FLOAT_FILE, scenes

HOSTILE_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "1e308", "-1e308", "1e-320", "", "abc", "-", "1_000",
                   "0x10", "2147483648", "-2147483649", "1e30", "3.5", "--"]
GARBAGE_FILES = [b"", b"\0" * 64, b"nan nan nan nan\n", b"1 2 3\n", b"{\nHEADER_BYTES=512;\n}", b"\xff" * 600,
                 b"inf 0 0 1e400\n", b"0 0 0 1e308\n1 1 1 1e308\n"]


@st.composite
def hostile_scenes(draw, least: int = 1):
    """A generated scene with ``least`` to 3 mutations."""
    scene = draw(scenes(outputs=True))
    tokens = list(scene.tokens)
    for _ in range(draw(st.integers(least, 3))):
        kind = draw(st.sampled_from(["drop", "repeat", "number", "file"]))
        i = draw(st.integers(0, len(tokens) - 1))
        if kind == "drop":
            del tokens[i]
        elif kind == "repeat":
            tokens.insert(i, tokens[i])
        elif kind == "number":
            tokens[i] = draw(st.sampled_from(HOSTILE_NUMBERS))
        elif scene.files:
            name = draw(st.sampled_from(sorted(scene.files)))
            scene.files[name] = draw(st.sampled_from(GARBAGE_FILES))
        if not tokens:
            tokens = ["-cell"]
    scene.tokens = tokens
    return scene


@given(scene=hostile_scenes(), parity=st.booleans())
def test_hostile_command_lines_fail_cleanly(scene, parity, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    scene.materialize(folder)
    inputs = set(os.listdir(folder))
    argv = scene.tokens + (["-c_parity"] if parity else []) + ["-noprogress"]
    note(" ".join(argv))
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        os.chdir(here)
    event("ran" if status == 0 else "refused")
    assert isinstance(status, int)
    check_outcome(folder, inputs, status, err.getvalue(), parity)


def check_outcome(folder, inputs, status, stderr, parity, signame=None):
    """What every run must leave: clean messages, no temporaries, nothing from a failed run."""
    assert "Traceback" not in stderr and "RuntimeWarning" not in stderr, stderr
    for line in stderr.splitlines():
        assert line.startswith(("nanobragg: ", "WARNING", " ")) or not line.strip(), line
    files = set(os.listdir(folder))
    assert not [f for f in files if ".part-" in f]
    if status != 0:
        assert files <= inputs, f"a failed run wrote {sorted(files - inputs)}"
    elif not parity and FLOAT_FILE in files:
        image = np.fromfile(folder / FLOAT_FILE, np.float32)
        assert np.isfinite(image).all(), "spec mode wrote a non-finite float image"
    if signame is not None and status == 128 + getattr(signal, signame):
        assert stderr.splitlines()[-1] == f"nanobragg: interrupted by {signame}"


REPO = Path(__file__).resolve().parents[1]
UNITS = {"bytes": 1.0, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
ANNOUNCED = re.compile(r"estimate: peak memory ([0-9.]+) (bytes|kB|MB|GB|TB)")
# the estimate's stated accuracy (specs/cli.md, pre-flight): within a factor of 2
MEMORY_FACTOR = 2.0


def _wait_for_handlers(pid) -> bool:
    """Wait until process ``pid`` catches SIGTERM and SIGHUP (Linux: SigCgt in /proc), which
    means ours are installed (all three at once; Python catches SIGINT from its start, so that
    one says nothing); False if the process ended first."""
    mask = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    while True:
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            return False                            # gone
        if fields.get("State", "").strip().startswith(("Z", "X")):
            return False                            # ended, not yet reaped
        caught = int(fields.get("SigCgt", "0").strip(), 16)
        if caught & mask == mask:
            return True
        time.sleep(0.005)


# Started from the test, a process's peak resident set (ru_maxrss) would include the test
# process's own: Linux keeps the high-water mark of the memory a process had before exec, and a
# fork (or vfork) of pytest, with torch loaded, holds hundreds of MB then.  So a small launcher
# starts the run and reports the run's own exit status and peak.
LAUNCHER = """
import json, os, subprocess, sys
report, argv = sys.argv[1], sys.argv[2:]
proc = subprocess.Popen(argv)
with open(report + ".pid", "w") as f:
    f.write(str(proc.pid))
_, status, usage = os.wait4(proc.pid, 0)
with open(report, "w") as f:
    json.dump({"status": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


def run_measured(argv, folder, env, out, err, signame, delay, report):
    """(exit status, peak resident bytes) of one process, sent ``signame`` after ``delay`` s if given."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report)] + argv, cwd=folder, env=env,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        if signame is not None:
            while not os.path.exists(f"{report}.pid") and launcher.poll() is None:
                time.sleep(0.005)
            time.sleep(0.005)                  # the launcher writes the number just after creating the file
            pid = int(open(f"{report}.pid").read() or 0) if os.path.exists(f"{report}.pid") else 0
            if pid and _wait_for_handlers(pid):
                time.sleep(delay)
                with contextlib.suppress(ProcessLookupError):       # it may have ended meanwhile
                    os.kill(pid, getattr(signal, signame))
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, "the launcher failed"
    with open(report) as f:
        result = json.load(f)
    return result["status"], result["maxrss_kb"] * 1024.0        # Linux reports kilobytes


# a process costs about a second: a quarter of the profile's examples (10 in CI's quick profile)
@settings(max_examples=max(10, settings.default.max_examples // 4), deadline=None)
# half the scenes unmutated, so that runs render and signals meet renders and writes
@given(scene=st.one_of(hostile_scenes(), hostile_scenes(least=0)), parity=st.booleans(), engine=st.sampled_from(["numba", "torch"]),
       signame=st.sampled_from([None, None, "SIGINT", "SIGTERM", "SIGHUP"]), delay=st.floats(0.0, 1.5))
def test_hostile_runs_as_processes(scene, parity, engine, signame, delay, tmp_path_factory):
    """The real entry point in a process: signals at a random moment, peak memory measured.

    Signals come up to 1.5 s after the handlers are installed (seen in
    /proc): reference/entry.py installs them before its first import, about
    0.05 s after the start; before that the interpreter's defaults act.
    """
    folder = tmp_path_factory.mktemp("fuzz")
    logs = tmp_path_factory.mktemp("logs")
    scene.materialize(folder)
    inputs = set(os.listdir(folder))
    argv = scene.tokens + (["-c_parity"] if parity else []) + ["-noprogress", "-engine", engine]
    note(" ".join(argv))
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        status, peak = run_measured([sys.executable, "-c", "from reference.entry import console_main; "
                                     "console_main()"] + argv, folder, env, out, err, signame, delay, logs / "report")
    stdout, stderr = (logs / "out").read_text(), (logs / "err").read_text()
    event("stopped by a signal" if signame and status == 128 + getattr(signal, signame)
          else "ran" if status == 0 else "refused")
    assert status >= 0, f"killed by signal {-status}: a handler was missing"
    check_outcome(folder, inputs, status, stderr, parity, signame)
    announced = ANNOUNCED.search(stdout)
    if announced:
        limit = float(announced.group(1)) * UNITS[announced.group(2)] * MEMORY_FACTOR
        assert peak <= limit, f"peak memory {peak / 1e6:.0f} MB, announced {announced.group(0)}"
