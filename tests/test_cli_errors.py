"""Bad input on the command line: one clear error line, a non-zero exit, no files left behind.

Every case runs ``reference.cli.main`` in-process in a fresh working folder
(``tmp_path``) with a tiny detector, and checks that

* stderr holds exactly one line, starting ``nanobragg: error:``, and no traceback;
* the exit status is not zero;
* the folder holds nothing new: no float/int/noise/PGM image, no Fdump.bin,
  no temporary file.

Two tests run the real entry point in a subprocess, to prove that it prints
no traceback either: on bad input, and when its standard output is a pipe
that the reader has already closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import fileio
from reference.cli import main
from tests.cli_helpers import CELL, GOOD, OUTPUTS, TINY, expect_error, run_cli  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CORPUS_INPUTS = REPO.parent / "shared" / "c_corpus" / "inputs"
needs_corpus = pytest.mark.skipif(not (CORPUS_INPUTS / "mask.img").is_file(),
                                  reason=f"C corpus inputs not found at {CORPUS_INPUTS} (team's shared/ folder)")



@pytest.fixture
def work(tmp_path, monkeypatch):
    """A fresh working folder holding small, valid input files of our own."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.hkl").write_text("0 0 1 10\n1 0 0 20\n0 1 0 15.5\n1 1 1 7\n")
    # a MOSFLM matrix: reciprocal vectors (1/A) times lambda (1 A); a 50 x 60 x 70 A cell
    (tmp_path / "good.mat").write_text("0.02 0 0\n0 0.0166667 0\n0 0 0.0142857\n0 0 0\n50 60 70 90 90 90\n")
    (tmp_path / "good_src.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 1 1e-10\n")
    return tmp_path


def write_mask(path, width, height, zero_at=None):
    """A small SMV mask (1 = use pixel) whose header sets the detector geometry."""
    data = np.ones((height, width), dtype=np.uint16)
    if zero_at is not None:
        data[zero_at] = 0
    fields = fileio.smv_header_fields(width, height, 0.2, 60.0, 1.0, width * 0.1, height * 0.1,
                                      0, 0, 0, 0, 0, 0, (0, 0, 0), 0, 0, 60.0, 0, 0, 0)
    fileio.write_smv(path, data, fields)


# ---------------------------------------------------------------------------
# the good run really is good (so that every failure below is the bad flag's)
# ---------------------------------------------------------------------------

def test_good_run_writes_all_outputs(work, capsys):
    rc, out, err = run_cli(capsys, GOOD)
    assert rc == 0 and err == ""
    assert sorted(p for p in os.listdir(work) if p in OUTPUTS) == sorted(OUTPUTS)
    assert (work / "floatimage.bin").stat().st_size == 8 * 8 * 4


# ---------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------

def test_missing_hkl_file(work, capsys):
    expect_error(capsys, work, GOOD + ["-hkl", "nope.hkl"], "nope.hkl")


def test_directory_given_as_hkl(work, capsys):
    (work / "adir").mkdir()
    expect_error(capsys, work, GOOD + ["-hkl", "adir"], "adir")


def test_malformed_hkl_line_names_file_and_line(work, capsys):
    (work / "bad.hkl").write_text("1 2 3 4\n# comment\n1 2 x 4\n")
    expect_error(capsys, work, GOOD + ["-hkl", "bad.hkl"], "bad.hkl:3", "'x'")


def test_hkl_line_with_too_few_columns(work, capsys):
    (work / "short.hkl").write_text("1 2 3 4\n1 2 3\n")
    expect_error(capsys, work, GOOD + ["-hkl", "short.hkl"], "short.hkl:2")


def test_missing_mat_file(work, capsys):
    expect_error(capsys, work, ["-mat", "nope.mat", "-default_F", "10"] + TINY, "nope.mat")


def test_matrix_with_too_few_numbers(work, capsys):
    (work / "short.mat").write_text("0.02 0 0\n0 0.0166667\n")
    expect_error(capsys, work, ["-mat", "short.mat", "-default_F", "10"] + TINY, "short.mat", "nine numbers")


def test_singular_matrix(work, capsys):
    (work / "zero.mat").write_text("0 0 0\n0 0 0\n0 0 0\n")
    expect_error(capsys, work, ["-mat", "zero.mat", "-default_F", "10"] + TINY, "singular")


def test_missing_sourcefile(work, capsys):
    expect_error(capsys, work, GOOD + ["-sourcefile", "nope.txt"], "nope.txt")


def test_empty_sourcefile_fails_before_fdump_is_written(work, capsys):
    (work / "empty.txt").write_text("")
    # with -hkl the run would write Fdump.bin before it reads the sources: it must not
    expect_error(capsys, work, GOOD + ["-hkl", "good.hkl", "-sourcefile", "empty.txt"], "empty.txt", "no sources")
    assert not (work / "Fdump.bin").exists()


def test_malformed_sourcefile_names_line(work, capsys):
    (work / "bad_src.txt").write_text("-10 0 0\n-10 zero 0\n")
    expect_error(capsys, work, GOOD + ["-sourcefile", "bad_src.txt"], "bad_src.txt:2")


@pytest.mark.parametrize("flag", ["-mask", "-img"])
def test_missing_smv_file(work, capsys, flag):
    expect_error(capsys, work, GOOD + [flag, "nope.img"], "nope.img")


def test_non_smv_file_as_mask(work, capsys):
    expect_error(capsys, work, GOOD + ["-mask", "good.hkl"], "good.hkl", "not an SMV image")


def test_truncated_smv_mask(work, capsys):
    write_mask(work / "m.img", 8, 6)
    (work / "cut.img").write_bytes((work / "m.img").read_bytes()[:600])
    expect_error(capsys, work, GOOD + ["-mask", "cut.img"], "cut.img", "truncated")


def test_corrupt_fdump_in_working_folder(work, capsys):
    (work / "Fdump.bin").write_text("garbage")
    expect_error(capsys, work, CELL + TINY, "Fdump.bin")


# ---------------------------------------------------------------------------
# numbers and flags
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["-lambda", "abc"], "-lambda expects a number, got 'abc'"),
    (["-N", "2.5"], "-N expects a whole number"),
    (["-distance", "1e999"], "-distance expects a finite number"),
    (["-distance", "nan"], "-distance expects a finite number"),
    (["-seed", "3000000000"], "-seed expects a whole number below 2^31"),
    (["-detpixels", "1000000000000"], "-detpixels expects a whole number below 2^31"),
])
def test_malformed_number(work, capsys, argv, fragment):
    expect_error(capsys, work, GOOD + argv, fragment)


@pytest.mark.parametrize("argv, fragment", [
    (["-cell"], "-cell needs at least one value"),
    (["-misset", "1", "2"], "-misset needs 3 values"),
    (["-roi", "1", "2", "3"], "-roi needs 4 values"),
    (["-lambda"], "-lambda needs 1 value"),
])
def test_too_few_values_after_flag(work, capsys, argv, fragment):
    expect_error(capsys, work, GOOD + argv, fragment)


def test_flag_cut_short_by_next_flag(work, capsys):
    expect_error(capsys, work, ["-cell", "-default_F", "10"] + TINY, "-cell needs")


def test_unknown_flag_suggests_the_close_one(work, capsys):
    line = expect_error(capsys, work, GOOD + ["-lamda", "1"], "unknown flag '-lamda'")
    assert "did you mean -lambda?" in line


@pytest.mark.parametrize("argv", [["stray"] + GOOD, GOOD[:2] + ["stray"] + GOOD[2:], GOOD + ["-N", "2", "3"]])
def test_stray_value_without_flag(work, capsys, argv):
    expect_error(capsys, work, argv, "unexpected argument")


@pytest.mark.parametrize("argv, fragment", [
    (["-detpixels", "0"], "-detpixels must be positive"),
    (["-detpixels", "-5"], "-detpixels must be positive"),
    (["-detpixels_f", "0"], "-detpixels_f must be positive"),
    (["-pixel", "0"], "-pixel must be positive"),
    (["-lambda", "0"], "-lambda must be positive"),
    (["-lambda", "-1"], "-lambda must be positive"),
    (["-energy", "0"], "-energy must be positive"),
    (["-oversample", "0"], "-oversample must be positive"),
    (["-oversample", "-3"], "-oversample must be positive"),
])
def test_non_positive_value(work, capsys, argv, fragment):
    expect_error(capsys, work, GOOD + argv, fragment)


@pytest.mark.parametrize("argv", [["-engine", "fast"], ["-dtype", "float16"], ["-device", "tpu"]])
def test_bad_choice(work, capsys, argv):
    expect_error(capsys, work, GOOD + argv, f"{argv[0]} expects one of", f"'{argv[1]}'")


def test_c_parity_mode_is_just_as_strict(work, capsys):
    expect_error(capsys, work, GOOD + ["-c_parity", "-N", "two"], "-N expects a number")


# ---------------------------------------------------------------------------
# impossible requests
# ---------------------------------------------------------------------------

def test_inverted_roi(work, capsys):
    expect_error(capsys, work, GOOD + ["-roi", "50", "10", "0", "10"], "-roi is inverted")


def test_nothing_to_render(work, capsys):
    expect_error(capsys, work, CELL + TINY, "nothing to render")


def test_no_cell(work, capsys):
    expect_error(capsys, work, ["-default_F", "1"] + TINY, "no crystal")


@pytest.mark.parametrize("cell", [
    ["10", "10", "10", "120", "120", "120"],   # flat: the three axes lie in one plane
    ["10", "10", "10", "170", "170", "170"],  # angles summing past 360 degrees
    ["10", "10", "10", "60", "60", "120"],
    ["10", "10", "10", "10", "10", "80"],      # no such cell: gamma > alpha + beta
    ["1e300"],
])
def test_impossible_cell(work, capsys, cell):
    expect_error(capsys, work, ["-cell"] + cell + ["-default_F", "10"] + TINY, "impossible unit cell")


def test_zero_length_beam_vector(work, capsys):
    expect_error(capsys, work, GOOD + ["-beam_vector", "0", "0", "0"], "-beam_vector has zero length")


@pytest.mark.parametrize("argv", [["-distance", "0"], ["-close_distance", "0"]])
def test_detector_through_sample(work, capsys, argv):
    expect_error(capsys, work, GOOD + argv, "passes through the sample")


def test_flux_with_zero_beamsize(work, capsys):
    expect_error(capsys, work, GOOD + ["-flux", "1e12", "-beamsize", "0"], "-beamsize must be positive")


def test_trace_pixel_outside_detector(work, capsys):
    expect_error(capsys, work, GOOD + ["-trace_pixel", "100", "1"], "outside the 8x8 detector")


# ---------------------------------------------------------------------------
# the mask's size
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("parity", [[], ["-c_parity"]])
def test_mask_header_sets_detector_size(work, capsys, parity):
    write_mask(work / "m.img", 6, 4, zero_at=(1, 2))
    argv = CELL + ["-default_F", "10", "-N", "2", "-noprogress", "-seed", "1", "-mask", "m.img"] + parity
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0 and err == ""
    assert "(6x4 pixels)" in out
    image = np.fromfile(work / "floatimage.bin", dtype="<f4").reshape(4, 6)
    assert image[1, 2] == 0.0 and image.max() > 0.0


@pytest.mark.parametrize("parity", [[], ["-c_parity"]])
@pytest.mark.parametrize("where", ["before", "after"])
def test_mask_and_detpixels_disagree(work, capsys, parity, where):
    # C takes the mask's size from its header, then lets -detpixels change the detector
    # and reads the mask with the wrong row length: here that is an error
    write_mask(work / "m.img", 6, 4)
    mask = ["-mask", "m.img"]
    argv = (mask + GOOD if where == "before" else GOOD + mask) + parity
    expect_error(capsys, work, argv, "m.img is 6x4 pixels but the detector is 8x8")


@needs_corpus
def test_corpus_mask_with_other_detpixels(work, capsys):
    expect_error(capsys, work, GOOD + ["-mask", str(CORPUS_INPUTS / "mask.img"), "-detpixels", "16"],
                 "is 96x80 pixels but the detector is 16x16")


# ---------------------------------------------------------------------------
# valid spellings that must keep working
# ---------------------------------------------------------------------------

def test_detector_abs_inf_works(work, capsys):
    rc, out, err = run_cli(capsys, GOOD + ["-detector_abs", "inf", "-detector_thick", "100"])
    assert rc == 0 and err == ""
    assert "mu= 0" in out
    assert (work / "floatimage.bin").stat().st_size == 8 * 8 * 4


def test_help_prints_usage_and_exits_zero(capsys):
    rc, out, err = run_cli(capsys, ["-h"])
    assert rc == 0 and out.startswith("usage: nanobragg") and "-lambda" in out


def test_no_arguments_prints_usage_and_exits_two(capsys):
    rc, out, err = run_cli(capsys, [])
    assert rc == 2 and "usage: nanobragg" in out + err


# ---------------------------------------------------------------------------
# output files: nothing the user had is overwritten silently, nothing half-written
# ---------------------------------------------------------------------------

def test_unwritable_floatfile(work, capsys):
    expect_error(capsys, work, GOOD + ["-floatfile", "/nonexistent/dir/x.bin"], "/nonexistent/dir/x.bin")


def test_output_into_directory(work, capsys):
    (work / "adir").mkdir()
    expect_error(capsys, work, GOOD + ["-intfile", "adir"], "adir", "directory")


def test_empty_output_name(work, capsys):
    expect_error(capsys, work, GOOD + ["-floatfile", ""], "empty")


def test_unwritable_noisefile_writes_no_float_image(work, capsys):
    # checked before rendering: the float image (written first) must not appear
    expect_error(capsys, work, GOOD + ["-floatfile", "float.bin", "-noisefile", "/nonexistent/dir/n.img"],
                 "/nonexistent/dir/n.img")
    assert not (work / "float.bin").exists()


def test_existing_output_is_replaced_with_a_note(work, capsys):
    (work / "float.bin").write_bytes(b"precious")
    rc, out, err = run_cli(capsys, GOOD + ["-floatfile", "float.bin"])
    assert rc == 0 and err == ""
    assert "note: replacing existing file float.bin" in out.splitlines()
    assert "note: replacing existing file intimage.img" not in out
    assert (work / "float.bin").stat().st_size == 8 * 8 * 4


def test_no_note_when_outputs_are_new(work, capsys):
    rc, out, _ = run_cli(capsys, GOOD)
    assert rc == 0 and "note: replacing" not in out


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_after_float_image_leaves_nothing(work, capsys, monkeypatch, failure):
    """The noise image fails after the float and int images are done: no file may appear
    or change, and no temporary file may stay."""
    from reference import rng

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(rng, "noise_image", broken)
    (work / "intimage.img").write_bytes(b"precious")
    before = set(os.listdir(work))
    if isinstance(failure, KeyboardInterrupt):
        rc, out, err = run_cli(capsys, GOOD)
        assert rc == 130 and "interrupted" in err and "Traceback" not in err
    else:
        with pytest.raises(RuntimeError):
            main(GOOD)
        out = capsys.readouterr().out
    assert "writing floatimage.bin" in out            # it got that far
    assert set(os.listdir(work)) == before
    assert (work / "intimage.img").read_bytes() == b"precious"


def test_all_outputs_appear_together(work, capsys):
    rc, out, _ = run_cli(capsys, GOOD + ["-floatfile", "f.bin", "-intfile", "i.img", "-pgmfile", "p.pgm",
                                         "-noisefile", "n.img"])
    assert rc == 0
    assert {"f.bin", "i.img", "p.pgm", "n.img"} <= set(os.listdir(work))
    assert not [p for p in os.listdir(work) if ".part-" in p or ".tmp-" in p]


# ---------------------------------------------------------------------------
# the real entry point
# ---------------------------------------------------------------------------

def test_module_entry_point_prints_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "reference.cli"] + GOOD + ["-hkl", "nope.hkl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nanobragg: error: ") and len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["-h"], GOOD], ids=["help", "run"])
def test_closed_standard_output_stops_quietly(tmp_path, args, buffered):
    # A real pipe whose reading end is closed before the program starts, as when
    # `nanobragg -h | head` has already exited: the first write or flush of stdout
    # fails.  Buffered (the usual case), output is still pending when the
    # interpreter exits and flushes it once more.
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-c", "from reference.cli import console_main; console_main()"]
                              + args, cwd=tmp_path, env=env, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert proc.stderr == ""
    assert proc.returncode == 141          # 128 + SIGPIPE, as a shell reports a program killed by the pipe
