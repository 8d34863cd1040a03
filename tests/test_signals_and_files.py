"""Signals and output files: what a run leaves in the folder, and what it says about it.

* SIGINT, SIGTERM and SIGHUP stop a run with status 128 + n, one line on
  stderr, and no temporary or new output file (real signals, sent to the real
  entry point in a subprocess, during the render and during the writing; and
  in-process, during the final renames);
* nothing, ``Fdump.bin`` included, is written by a run that fails; an Fdump
  that cannot be written is only a warning, as in C;
* an output that is a symbolic link is written through the link;
* two outputs naming the same file are refused before any work;
* a run that reads an earlier ``Fdump.bin`` says so, with its path;
* the progress bar appears only on a terminal;
* an out-of-range ``-trace_pixel`` is refused before the render.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reference import fileio, interrupts, run as run_module
from reference.cli import main
from tests.cli_helpers import CELL, GOOD, OUTPUTS, TINY, run_cli  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.hkl").write_text("0 0 1 10\n1 0 0 20\n0 1 0 15.5\n1 1 1 7\n")
    return tmp_path


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if ".part-" in p or ".tmp-" in p)


# ---------------------------------------------------------------------------
# signals, through the real entry point
# ---------------------------------------------------------------------------

# the last line printed before the render starts
BEFORE_RENDER = "water droplet size"
SLOW_RENDER = CELL + ["-default_F", "10", "-N", "5", "-detpixels", "1000", "-oversample", "6", "-seed", "1"]
# a quick render of a large image: the writing and the noise image take a while
BIG_IMAGE = CELL + ["-default_F", "10", "-N", "1", "-detpixels", "2500", "-oversample", "1", "-seed", "1"]


def signal_run(folder, args, marker, signum, delay=0.0):
    """Start the command, send ``signum`` ``delay`` s after ``marker`` is printed; (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", "from reference.cli import console_main; console_main()"]
                            + args, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                time.sleep(delay)
                proc.send_signal(signum)
                break
        else:
            raise AssertionError(f"the run ended before printing {marker!r}: {lines[-3:]}")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + out, err


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_during_render_leaves_nothing(tmp_path, signame):
    signum = getattr(signal, signame)
    (tmp_path / "intimage.img").write_bytes(b"precious")
    # 0.3 s: inside the render kernel, which takes about 1 s; the signal acts when it returns
    rc, out, err = signal_run(tmp_path, SLOW_RENDER, BEFORE_RENDER, signum, delay=0.3)
    assert rc == 128 + signum
    assert err.splitlines() == [f"nanobragg: interrupted by {signame}"]
    assert "solid angle" not in out        # still rendering when the signal came
    assert sorted(os.listdir(tmp_path)) == ["intimage.img"]
    assert (tmp_path / "intimage.img").read_bytes() == b"precious"


# a render of about 10 s on this machine, without a progress bar
LONG_RENDER = CELL + ["-default_F", "10", "-N", "5", "-detpixels", "1024", "-oversample", "8", "-phisteps", "8",
                      "-osc", "1", "-seed", "1", "-noprogress"]


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_signal_stops_a_long_render_promptly(tmp_path, engine):
    """The kernel is called in blocks of about a quarter second, so a signal does not wait for the
    whole render (Python handles signals only between two calls into compiled code)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", "from reference.cli import console_main; console_main()"]
                            + LONG_RENDER + ["-engine", engine], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if BEFORE_RENDER in line:
                break
        time.sleep(1.5)                 # well inside the render (kernels compiled or cached by then)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        delay = time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert delay < 2.0, f"the run took {delay:.1f} s to stop"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signal_during_writing_removes_temporaries(tmp_path, signame):
    # "writing intimage.img" is printed after the float image went to its temporary file
    # and before the int, PGM and noise images are computed: a temporary is on disk
    signum = getattr(signal, signame)
    (tmp_path / "floatimage.bin").write_bytes(b"precious")
    rc, out, err = signal_run(tmp_path, BIG_IMAGE, "writing intimage.img", signum)
    assert rc == 128 + signum, err
    assert err.splitlines() == [f"nanobragg: interrupted by {signame}"]
    assert sorted(os.listdir(tmp_path)) == ["floatimage.bin"]
    assert (tmp_path / "floatimage.bin").read_bytes() == b"precious"


def test_signal_leaves_no_fdump(tmp_path):
    (tmp_path / "good.hkl").write_text("0 0 1 10\n1 0 0 20\n0 1 0 15.5\n1 1 1 7\n")
    rc, out, err = signal_run(tmp_path, SLOW_RENDER + ["-hkl", "good.hkl"], BEFORE_RENDER, signal.SIGTERM)
    assert rc == 143
    assert "writing dump file for next time: Fdump.bin" in out
    assert sorted(os.listdir(tmp_path)) == ["good.hkl"]


# ---------------------------------------------------------------------------
# signals in-process: the handlers, the staged writes, the final renames
# ---------------------------------------------------------------------------

@pytest.fixture
def handlers():
    """The entry point's signal handlers, installed for one test and then put back."""
    saved = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    interrupts.install()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_importing_the_library_installs_no_handler():
    code = ("import signal; import reference, reference.cli, reference.run, reference.interrupts; "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
            "signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr


def test_signal_while_writing_a_file(work, capsys, monkeypatch, handlers):
    """SIGTERM arrives while the int image is half written: both temporaries go."""
    real = fileio.write_smv

    def write_then_signal(path, *args):
        with open(path, "wb") as handle:
            handle.write(b"half")
        signal.raise_signal(signal.SIGTERM)   # to this (the main) thread: handled at once
        real(path, *args)                 # not reached: the handler raises first

    monkeypatch.setattr(fileio, "write_smv", write_then_signal)
    with pytest.raises(interrupts.Interrupted) as caught:
        main(GOOD)
    assert caught.value.exit_status == 143 and caught.value.name == "SIGTERM"
    assert "writing intimage.img" in capsys.readouterr().out
    assert os.listdir(work) == ["good.hkl"]


def test_signal_during_the_final_renames(work, capsys, monkeypatch, handlers):
    """A signal between two renames waits until every file is in place; no temporary stays."""
    real = os.replace
    calls = []

    def replace_then_signal(src, dst):
        real(src, dst)
        if ".part-" in os.fspath(dst):     # a file's own atomic write, not a final rename
            return
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGHUP)    # the handler runs here, inside the held section

    monkeypatch.setattr(run_module.os, "replace", replace_then_signal)
    with pytest.raises(interrupts.Interrupted) as caught:
        main(GOOD + ["-hkl", "good.hkl"])
    assert caught.value.signum == signal.SIGHUP
    assert len(calls) == 5                # float, int, PGM, noise and Fdump.bin all renamed
    assert sorted(os.listdir(work)) == sorted(["good.hkl", "Fdump.bin", *OUTPUTS])


def test_held_section_raises_the_signal_afterwards():
    reached = []
    with pytest.raises(interrupts.Interrupted) as caught:
        with interrupts.held():
            interrupts._handler(signal.SIGTERM, None)
            reached.append("end of section")
    assert reached == ["end of section"] and caught.value.signum == signal.SIGTERM
    with pytest.raises(interrupts.Interrupted):
        interrupts._handler(signal.SIGINT, None)


# ---------------------------------------------------------------------------
# Fdump.bin
# ---------------------------------------------------------------------------

def test_failed_run_writes_no_fdump(work, capsys, monkeypatch):
    """The noise image fails after the HKL file was read: no Fdump.bin appears."""
    from reference import rng

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(rng, "noise_image", broken)
    with pytest.raises(RuntimeError):
        main(GOOD + ["-hkl", "good.hkl"])
    assert "writing dump file for next time: Fdump.bin" in capsys.readouterr().out
    assert os.listdir(work) == ["good.hkl"]


def test_failed_run_keeps_the_old_fdump(work, capsys):
    (work / "Fdump.bin").write_bytes(b"old cache")
    rc, _, err = run_cli(capsys, GOOD + ["-hkl", "good.hkl", "-trace_pixel", "8", "0"])
    assert rc == 2 and "-trace_pixel" in err
    assert (work / "Fdump.bin").read_bytes() == b"old cache"


def test_successful_run_writes_fdump(work, capsys):
    rc, _, _ = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0
    table = fileio.read_fdump(work / "Fdump.bin")
    assert (table.h_min, table.h_max) == (0, 1)
    assert not leftovers(work)


def test_unwritable_fdump_is_a_warning_as_in_c(work, capsys):
    # C: fopen(dumpfilename, "wb") fails -> "WARNING: unable to open dump file: Fdump.bin", status 0
    (work / "Fdump.bin").mkdir()
    rc, out, err = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0 and err == ""
    assert "WARNING: unable to open dump file: Fdump.bin" in out.splitlines()
    assert "writing dump file" not in out
    assert (work / "floatimage.bin").is_file() and (work / "Fdump.bin").is_dir()
    assert not leftovers(work)


def test_fdump_failing_at_the_end_is_a_warning(work, capsys, monkeypatch):
    def cannot(path, table):
        raise fileio.InputError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(fileio, "write_fdump", cannot)
    rc, out, err = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0 and err == ""
    assert out.splitlines()[-1] == "WARNING: unable to open dump file: Fdump.bin"
    assert (work / "floatimage.bin").is_file() and not (work / "Fdump.bin").exists()
    assert not leftovers(work)


def test_fdump_rename_failing_is_a_warning(work, capsys, monkeypatch):
    real = os.replace

    def refuse_fdump(src, dst):
        if os.fspath(dst).endswith("Fdump.bin"):
            raise PermissionError(13, "Permission denied")
        real(src, dst)

    monkeypatch.setattr(run_module.os, "replace", refuse_fdump)
    rc, out, err = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0 and err == ""
    assert out.splitlines()[-1] == "WARNING: unable to open dump file: Fdump.bin"
    assert sorted(os.listdir(work)) == sorted(["good.hkl", *OUTPUTS])


# ---------------------------------------------------------------------------
# symbolic links
# ---------------------------------------------------------------------------

def test_symlinked_output_writes_the_target(work, capsys):
    (work / "store").mkdir()
    (work / "store" / "float.bin").write_bytes(b"old")
    os.symlink("store/float.bin", work / "floatimage.bin")
    os.symlink("store/new.img", work / "intimage.img")          # dangling: C creates the target
    rc, _, _ = run_cli(capsys, GOOD)
    assert rc == 0
    assert os.readlink(work / "floatimage.bin") == "store/float.bin"
    assert os.readlink(work / "intimage.img") == "store/new.img"
    assert (work / "store" / "float.bin").stat().st_size == 8 * 8 * 4
    assert (work / "store" / "new.img").stat().st_size == 512 + 8 * 8 * 2
    assert not leftovers(work) and not leftovers(work / "store")


def test_symlinked_fdump_writes_the_target(work, capsys):
    (work / "cache").mkdir()
    os.symlink("cache/F.bin", work / "Fdump.bin")
    rc, _, _ = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0
    assert os.path.islink(work / "Fdump.bin")
    assert fileio.read_fdump(work / "cache" / "F.bin").h_max == 1


def test_symlink_into_a_missing_folder_fails_before_work(work, capsys):
    os.symlink("nowhere/float.bin", work / "floatimage.bin")
    rc, out, err = run_cli(capsys, GOOD)
    assert rc == 2 and "nowhere" in err and out == ""


# ---------------------------------------------------------------------------
# two outputs, one file
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra, fragments", [
    (["-floatfile", "a.img", "-intfile", "a.img"], ["-floatfile and -intfile both name a.img"]),
    (["-floatfile", "a.img", "-noisefile", "./a.img"], ["-floatfile a.img", "-noisefile ./a.img"]),
    (["-pgmfile", "sub/../a.img", "-intfile", "a.img"], ["-intfile a.img", "-pgmfile sub/../a.img"]),
    (["-intfile", "floatimage.bin"], ["-floatfile and -intfile both name floatimage.bin"]),
    (["-hkl", "good.hkl", "-dump", "noiseimage.img"], ["-noisefile and -dump both name noiseimage.img"]),
    (["-floatfile", "a.img", "-intfile", "link.img"], ["-floatfile a.img", "-intfile link.img"]),
], ids=["same", "dot", "dotdot", "default", "dump", "symlink"])
def test_two_outputs_naming_one_file_are_refused(work, capsys, monkeypatch, extra, fragments):
    (work / "sub").mkdir()
    os.symlink("a.img", work / "link.img")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the scene was built")

    monkeypatch.setattr(run_module, "build_scene", must_not_run)
    before = sorted(os.listdir(work))
    rc, out, err = run_cli(capsys, GOOD + extra)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanobragg: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert sorted(os.listdir(work)) == before


def test_distinct_outputs_in_other_folders_are_fine(work, capsys):
    (work / "sub").mkdir()
    rc, _, _ = run_cli(capsys, GOOD + ["-floatfile", "sub/a.img", "-intfile", "a.img"])
    assert rc == 0 and (work / "sub" / "a.img").is_file() and (work / "a.img").is_file()


def test_a_switched_off_output_does_not_count(work, capsys):
    # -nonoise after -noisefile: no noise image, so its name may be any other output's
    rc, _, err = run_cli(capsys, GOOD + ["-noisefile", "floatimage.bin", "-nonoise"])
    assert rc == 0, err


# ---------------------------------------------------------------------------
# an earlier Fdump.bin
# ---------------------------------------------------------------------------

def test_reading_an_earlier_fdump_is_announced(work, capsys):
    assert run_cli(capsys, GOOD + ["-hkl", "good.hkl"])[0] == 0
    rc, _, err = run_cli(capsys, GOOD)
    assert rc == 0
    assert err.splitlines() == [f"nanobragg: note: reading structure factors from {work / 'Fdump.bin'} "
                                "(written by an earlier run); inside its h,k,l range it overrides -default_F"]


def test_earlier_fdump_without_default_F(work, capsys):
    assert run_cli(capsys, GOOD + ["-hkl", "good.hkl", "-dump", "cache.bin"])[0] == 0
    rc, _, err = run_cli(capsys, CELL + TINY + ["-dump", "cache.bin"])
    assert rc == 0
    assert err.splitlines() == [f"nanobragg: note: reading structure factors from {work / 'cache.bin'} "
                                "(written by an earlier run)"]


def test_no_note_when_the_run_reads_hkl(work, capsys):
    assert run_cli(capsys, GOOD + ["-hkl", "good.hkl"])[0] == 0
    rc, _, err = run_cli(capsys, GOOD + ["-hkl", "good.hkl"])
    assert rc == 0 and err == ""


# ---------------------------------------------------------------------------
# progress bar
# ---------------------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal, flags, shown", [
    (False, [], False), (True, [], True), (True, ["-noprogress"], False)],
    ids=["pipe", "terminal", "terminal-noprogress"])
def test_progress_bar_only_on_a_terminal(work, capsys, monkeypatch, terminal, flags, shown):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    argv = [a for a in GOOD if a != "-noprogress"] + flags
    assert main(argv) == 0
    text = stream.getvalue()
    assert ("rendering" in text) == shown
    if not shown:
        assert text == ""


# ---------------------------------------------------------------------------
# -trace_pixel out of range
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("pixel", [["8", "0"], ["0", "8"], ["-1", "3"]])
def test_trace_pixel_outside_is_refused_before_the_render(work, capsys, monkeypatch, pixel):
    def must_not_render(*args, **kwargs):
        raise AssertionError("rendered")

    monkeypatch.setattr(run_module, "render_float_image", must_not_render)
    rc, _, err = run_cli(capsys, GOOD + ["-trace_pixel"] + pixel)
    assert rc == 2
    assert err.startswith(f"nanobragg: error: -trace_pixel {pixel[0]} {pixel[1]} ") and "outside" in err
    assert os.listdir(work) == ["good.hkl"]


def test_trace_pixel_on_the_last_pixel_runs(work, capsys):
    rc, out, _ = run_cli(capsys, GOOD + ["-trace_pixel", "7", "7"])
    assert rc == 0 and "TRACE pixel slow=7 fast=7" in out
