"""Careless and hostile input (issue 8): every number finite, messages that name the value.

* Numbers from input files (HKL, matrix, source list, Fdump, SMV header, stol
  table) must be finite: spec mode refuses a NaN or inf with one error line
  naming the file and the line; -c_parity reads it as the C program does and
  says so in one ``nanobragg: warning:`` line.
* A float image that would hold NaN or inf is refused in spec mode, naming the
  factor that overflowed, and written with one warning under -c_parity.
* Numbers on the command line are read as C reads them or refused:
  ``-distance 1_000`` is not 1000 mm.
* -cell takes negative numbers as its values and says which one is wrong;
  --version; -h anywhere; -h shows each flag's unit and default.

The C behaviours these tests hold -c_parity to were observed with the C binary
(specs/quirks.md (s)): it reads "nan" and "inf" in an HKL file or a matrix and
writes NaN/inf pixels, takes "nan" in a source list or an SMV header as a value
not given, and its maximum skips NaN pixels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from reference import fileio
from reference.cli import main, parse_args, usage
from tests.cli_helpers import CELL, GOOD, OUTPUTS, TINY, expect_error, run_cli  # noqa: F401
from reference.config import Config
from reference.flags import DEFAULTS, FLAGS, StrictNumbers, is_number

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def expect_warning(capsys, argv, *fragments):
    """``argv`` succeeds with exactly one warning line (no RuntimeWarning, no second line)."""
    rc, out, err = run_cli(capsys, argv)
    lines = err.splitlines()
    assert rc == 0, err
    assert len(lines) == 1, f"expected one warning line, got {lines!r}"
    assert lines[0].startswith("nanobragg: warning: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return out, lines[0]


def float_image(folder, n=8):
    return np.fromfile(folder / "floatimage.bin", dtype="<f4").reshape(n, n)


# ---------------------------------------------------------------------------
# numbers in input files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("amplitude", ["nan", "inf", "-inf", "1e400"])
def test_hkl_amplitude_not_finite_is_refused(work, capsys, amplitude):
    (work / "bad.hkl").write_text(f"0 0 1 10\n1 0 0 {amplitude}\n0 1 0 15\n")
    expect_error(capsys, work, GOOD + ["-hkl", "bad.hkl"], "bad.hkl:2", f"'{amplitude}'", "not a finite number")


# the reflection (0 0 0) lies on the direct beam: its F reaches the centre pixels
NAN_HKL = "0 0 0 nan\n1 0 0 10\n0 1 0 15\n1 1 1 7\n"
BRIGHT = ["-cell", "50", "60", "70", "90", "90", "90", "-N", "5", "-detpixels", "64", "-noprogress", "-seed", "1"]


def test_hkl_nan_under_c_parity_is_read_as_c_reads_it(work, capsys):
    (work / "nan.hkl").write_text(NAN_HKL)
    out, line = expect_warning(capsys, BRIGHT + ["-hkl", "nan.hkl", "-c_parity"], "nan.hkl:1", "'nan'",
                               "not a finite number", "-c_parity")
    image = float_image(work, 64)
    assert np.isnan(image).any() and np.isfinite(image).any()
    # C's maximum is a running '>' test, which a NaN pixel never passes: max_I is the
    # largest finite pixel (C printed max_I = 3.03017 on this scene), so the int image
    # is scaled by it rather than by 1
    max_I = float(re.search(r"max_I = (\S+)", out).group(1))
    assert max_I == pytest.approx(float(np.nanmax(image)), rel=1e-5) and max_I > 1.0
    assert "mean= nan" in out
    assert re.search(r"intfile_scale = (\S+)", out).group(1) == "%g" % (55000.0 / np.nanmax(image).astype(np.float64))
    # a NaN pixel becomes 0 in the int image, as C's conversion gives on x86-64
    smv = fileio.read_smv(work / "intimage.img")
    assert (smv.data[np.isnan(image)] == 0).all()


def test_matrix_holding_nan_names_the_file_not_a_singular_matrix(work, capsys):
    (work / "nan.mat").write_text("0.02 0 0\n0 nan 0\n0 0 0.0142857\n")
    line = expect_error(capsys, work, ["-mat", "nan.mat", "-default_F", "10"] + TINY,
                        "nan.mat:2", "'nan'", "not a finite number")
    assert "singular" not in line


def test_matrix_holding_nan_under_c_parity_gives_c_all_nan_image(work, capsys):
    (work / "nan.mat").write_text("nan 0 0\n0 0.0166667 0\n0 0 0.0142857\n")
    expect_warning(capsys, ["-mat", "nan.mat", "-default_F", "10", "-c_parity"] + TINY, "nan.mat:1")
    assert np.isnan(float_image(work)).all()       # what the C binary writes


@pytest.mark.parametrize("token", ["nan", "inf"])
def test_source_file_not_finite(work, capsys, token):
    (work / "src.txt").write_text(f"-10 0 0 1 1e-10\n-10 0.001 0 {token} 1e-10\n")
    expect_error(capsys, work, GOOD + ["-sourcefile", "src.txt"], "src.txt:2", f"'{token}'", "not a finite number")


def test_source_file_nan_under_c_parity_is_a_missing_value(work, capsys):
    # C fills its columns with NaN before reading, so a "nan" weight is the default weight 1
    (work / "nan.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 nan 1e-10\n")
    (work / "one.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 1 1e-10\n")
    expect_warning(capsys, GOOD + ["-sourcefile", "nan.txt", "-c_parity"], "nan.txt:2")
    with_nan = float_image(work)
    assert run_cli(capsys, GOOD + ["-sourcefile", "one.txt", "-c_parity"])[0] == 0
    assert np.array_equal(with_nan, float_image(work))


def test_stol_file_not_finite(work, capsys):
    (work / "bad.stol").write_text("0.1 1\n0.2 inf\n")
    expect_error(capsys, work, GOOD + ["-stol", "bad.stol"], "bad.stol:2", "not a finite number")
    expect_warning(capsys, GOOD + ["-stol", "bad.stol", "-c_parity"], "bad.stol:2")


def _write_fdump(path, value):
    values = np.zeros((3, 3, 3))
    values[:2, :2, :2] = 10.0
    values[1, 0, 1] = value
    fileio.write_fdump(path, fileio.HKLTable(0, 1, 0, 1, 0, 1, values=values, count=8))


def test_fdump_holding_nan(work, capsys):
    _write_fdump(work / "Fdump.bin", math.nan)
    argv = CELL + TINY
    expect_error(capsys, work, argv, "Fdump.bin", "(1 0 1)", "not a finite number")
    rc, _out, err = run_cli(capsys, argv + ["-c_parity"])
    warnings = [x for x in err.splitlines() if x.startswith("nanobragg: warning:")]
    assert rc == 0 and len(warnings) == 1 and "(1 0 1)" in warnings[0], err
    assert "Traceback" not in err and "RuntimeWarning" not in err


def _header_image(path, key, text):
    fields = fileio.smv_header_fields(8, 8, 0.1, 60.0, 1.0, 0.4, 0.4, 0, 0, 0, 0, 0, 0, (0, 0, 0), 0, 0, 60.0,
                                      0, 0, 0)
    fields = [(k, text if k == key else v) for k, v in fields]
    fileio.write_smv(path, np.ones((8, 8), dtype=np.uint16), fields)


@pytest.mark.parametrize("key, text", [("PHI", "nan"), ("BEAM_CENTER_X", "inf")])
def test_smv_header_value_not_finite(work, capsys, key, text):
    _header_image(work / "head.img", key, text)
    expect_error(capsys, work, GOOD + ["-img", "head.img"], "head.img", f"'{key}={text};'", "not a finite number")


def test_smv_header_nan_under_c_parity_is_a_value_not_given(work, capsys):
    # C's header reader skips a NaN (its own "not given"); PHI=nan is then the default 0
    _header_image(work / "nan.img", "PHI", "nan")
    _header_image(work / "zero.img", "PHI", 0.0)
    expect_warning(capsys, GOOD + ["-img", "nan.img", "-c_parity"], "nan.img", "ignores it")
    with_nan = float_image(work)
    assert np.isfinite(with_nan).all()
    assert run_cli(capsys, GOOD + ["-img", "zero.img", "-c_parity"])[0] == 0
    assert np.array_equal(with_nan, float_image(work))


# ---------------------------------------------------------------------------
# float images that overflow
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["-fluence", "1e300"], ["holds inf", "fluence x r_e^2", "largest factor is fluence x r_e^2", "lower -fluence"]),
    (["-default_F", "1e200"], ["holds inf", "largest factor is F^2", "overflows even double precision",
                               "-default_F"]),
    (["-water", "1e12"], ["holds inf", "water background", "-water"]),
    (["-water", "1e300"], ["holds inf", "water background", "m^2 x inf x"]),      # no OverflowError
    (["-flux", "1e300", "-exposure", "1e300"], ["fluence inf", "overflows even double precision"]),
])
def test_overflowing_image_is_refused_with_its_cause(work, capsys, argv, fragments):
    line = expect_error(capsys, work, GOOD + argv, "float32's largest number", "no file written", *fragments)
    assert "RuntimeWarning" not in line


@pytest.mark.parametrize("argv, factor", [
    (["-fluence", "1e300"], "fluence x r_e^2"),
    (["-default_F", "1e200"], "F^2"),
    (["-water", "1e12"], "water background"),
])
def test_overflowing_image_under_c_parity_is_written_with_one_warning(work, capsys, argv, factor):
    # the C binary writes these images full of inf and prints "mean= inf rms= inf rmsd= -nan"
    out, _line = expect_warning(capsys, GOOD + argv + ["-c_parity"], "holds inf", factor,
                                "written as the C program writes it")
    assert np.isinf(float_image(work)).all()
    assert "mean= inf rms= inf rmsd= -nan" in out
    assert "-nan photons on noise image" in out
    assert all((work / name).exists() for name in OUTPUTS)


@pytest.mark.parametrize("argv, fragments", [
    (["-mosaic", "1e308"], ["holds NaN", "mosaic domain orientations are not finite", "-mosaic"]),
    (["-detector_abs", "1e-320", "-detector_thick", "100"], ["holds NaN", "-detector_abs"]),  # no ZeroDivisionError
])
def test_non_finite_image_from_huge_or_tiny_flags(work, capsys, argv, fragments):
    expect_error(capsys, work, GOOD + argv, "no file written", *fragments)


def test_running_sum_overflow_of_quirk_b_is_only_a_warning_under_c_parity(work, capsys):
    argv = GOOD + ["-point_pixel", "-oversample_omega", "-oversample", "4", "-distance", "10"]
    expect_warning(capsys, argv + ["-c_parity"], "quirk (b)", "-oversample_omega multiplies")
    assert np.isinf(float_image(work)).all()               # as the C binary writes it
    rc, _out, err = run_cli(capsys, argv)                   # spec mode has no running product
    assert rc == 0 and err == ""
    assert np.isfinite(float_image(work)).all()


TORCH32 = ["-engine", "torch", "-dtype", "float32"]


def test_torch_float32_overflow_says_use_float64(work, capsys):
    pytest.importorskip("torch")
    # F^2 = 1e40 overflows float32 inside the engine, while the pixels (~6e35) would fit
    for mode in ([], ["-c_parity"]):                      # C would not overflow: refused in both modes
        expect_error(capsys, work, GOOD + TORCH32 + ["-default_F", "1e20"] + mode,
                     "float32 overflow in the torch engine", "F^2 = 1e+40", "use -dtype float64")
    assert run_cli(capsys, GOOD + ["-engine", "torch", "-default_F", "1e20"])[0] == 0


def test_torch_float32_image_beyond_float32_says_float64_would_not_help(work, capsys):
    pytest.importorskip("torch")
    expect_error(capsys, work, GOOD + TORCH32 + ["-default_F", "1e30"], "float32's largest number",
                 "-dtype float64 would not help", "largest factor is F^2")


def test_statistics_print_no_numpy_warnings(work, capsys, recwarn):
    expect_warning(capsys, GOOD + ["-fluence", "1e300", "-c_parity"], "holds inf")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_c_format_prints_the_sign_of_nan():
    assert fileio.c_format("%g", -math.nan) == "-nan"
    assert fileio.c_format("%g", math.nan) == "nan"
    assert fileio.c_format("%.0f", 2.6) == "3"


# ---------------------------------------------------------------------------
# numbers on the command line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, c_reads", [("1_000", "1"), (" 100", "100"), ("100 ", "100"),
                                           ("\uff11\uff10\uff10", "0")])
@pytest.mark.parametrize("mode", [[], ["-c_parity"]])
def test_numbers_python_reads_but_c_does_not_are_refused(work, capsys, text, c_reads, mode):
    expect_error(capsys, work, GOOD + ["-distance", text] + mode,
                 "-distance expects a plain decimal number", repr(text), f"would read it as {c_reads})")


@pytest.mark.parametrize("argv", [["-distance", "-1_000"], ["-cell", "50", "-6_0"]])
def test_malformed_negative_number_is_a_bad_value_not_a_flag(work, capsys, argv):
    # it starts like a number: the flag before it says what is wrong, instead of
    # "needs 1 value" or "unknown flag '-1_000'"
    expect_error(capsys, work, GOOD + argv, f"{argv[0]} expects a plain decimal number", repr(argv[-1]))


def test_whole_number_in_exponent_form_is_refused(work, capsys):
    # C's atoi reads "1e3" as 1: spec mode and -c_parity would disagree
    expect_error(capsys, work, GOOD + ["-detpixels", "1e3"], "-detpixels expects a whole number written in digits",
                 "'1e3'", "would read it as 1)")


def test_plain_spellings_still_read():
    assert parse_args(["-distance", "1e3", "-detpixels", "16.0", "-lambda", ".5"]).distance == 1.0
    assert parse_args(["-detpixels", "16.0"]).fpixels == 16
    assert StrictNumbers("-x").f("-2.5e-3") == -2.5e-3


def test_is_number_is_c_strict():
    for text in ("1", "-1.5", ".5", "5.", "1e-3", "inf", "-nan"):
        assert is_number(text), text
    for text in ("1_000", " 1", "1 ", "\uff11", "0x10", "", "-", "e5"):
        assert not is_number(text), text


# ---------------------------------------------------------------------------
# -cell
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell, fragments", [
    (["-50", "60", "70", "90", "90", "90"], ["cell length a must be positive", "'-50'"]),
    (["50", "-60"], ["cell length b must be positive", "'-60'"]),
    (["50", "60", "70", "90", "-10", "90"], ["cell angle beta must lie between 0 and 180 degrees", "'-10'"]),
    (["50", "60", "70", "90", "90", "180"], ["cell angle gamma must lie between 0 and 180 degrees", "'180'"]),
    (["50", "60", "70", "200"], ["cell angle alpha", "'200'"]),
    (["50", "0", "70"], ["cell length b must be positive", "'0'", "would read 0 as the length a"]),
])
def test_cell_value_errors_name_the_value(work, capsys, cell, fragments):
    line = expect_error(capsys, work, ["-cell"] + cell + ["-default_F", "10"] + TINY, "-cell", *fragments)
    assert "needs at least one value" not in line and "unexpected argument" not in line


def test_cell_zero_under_c_parity_is_read_as_c_reads_it(work, capsys):
    expect_warning(capsys, ["-cell", "50", "0", "70", "-default_F", "10", "-c_parity"] + TINY,
                   "cell length b of 0 as the length a")
    assert parse_args(["-cell", "50", "0", "70", "-c_parity"]).cell[1] == 0.0


def test_cell_stops_at_the_next_flag():
    cfg = parse_args(["-cell", "50", "60", "-default_F", "-5"])
    assert cfg.cell[:2] == [50.0, 60.0] and cfg.default_F == -5.0


# ---------------------------------------------------------------------------
# --version and -h
# ---------------------------------------------------------------------------

def _pyproject_version():
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.mark.parametrize("argv", [["--version"], ["-version"], GOOD + ["--version"]])
def test_version(work, capsys, argv):
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0 and err == ""
    assert out == f"nanobragg {_pyproject_version()}\n"
    assert not set(os.listdir(work)) & set(OUTPUTS)


def test_version_without_installed_metadata(work, capsys, monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    rc, out, _err = run_cli(capsys, ["--version"])
    assert rc == 0 and out == f"nanobragg {_pyproject_version()}\n"


@pytest.mark.parametrize("flag", ["-h", "-help", "--help"])
@pytest.mark.parametrize("where", ["first", "after", "among"])
def test_help_anywhere(work, capsys, flag, where):
    argv = {"first": [flag] + GOOD, "after": GOOD + [flag], "among": CELL + [flag, "-lamda", "x"]}[where]
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0 and err == ""
    assert out.startswith("usage: nanobragg") and "-distance" in out
    assert not set(os.listdir(work)) & set(OUTPUTS)


def test_help_shows_every_default_one_line_per_flag():
    lines = usage().splitlines()
    for f in FLAGS:
        mine = [x for x in lines if x.startswith("  " + " ".join(f.names) + " ")]
        assert len(mine) == 1, f.names
        assert f"[default: {DEFAULTS[f.names[0]]}]" in mine[0] and DEFAULTS[f.names[0]]
    assert "-version" in usage() and "--help" in usage()


@pytest.mark.parametrize("name, unit", [
    ("-distance", "(mm)"), ("-lambda", "(A)"), ("-phi", "(deg)"), ("-water", "(um)"), ("-divergence", "(mrad)"),
    ("-energy", "(eV)"), ("-exposure", "(s)"), ("-fluence", "(photons/m^2)"), ("-flux", "(photons/s)"),
    ("-adc", "(ADU)"), ("-default_F", "(electrons)"), ("-pixel", "(mm)"), ("-detector_thick", "(um)"),
    ("-memory_gb", "(GB)"), ("-pix0_vector", "m)"),
])
def test_help_shows_units(name, unit):
    line = next(x for x in usage().splitlines() if x.split()[:1] == [name])
    assert unit in line.split("[default:")[0]


# flags whose Config value is a "not given" sentinel that the auto-selection turns into the
# default shown (0): giving the default explicitly is not the same Config
SENTINELS = {"-mosaic", "-mosaic_dom", "-divergence", "-hdivrange", "-vdivrange"}


def _shown_as_a_value(default):
    """A default whose first word is a value the flag takes: a number, or one word such as a file name."""
    return re.match(r"[0-9.]", default) is not None or (" " not in default and default not in ("none", "auto"))


@pytest.mark.parametrize("f", [f for f in FLAGS if f.nvalues == 1 and f.names[0] not in SENTINELS
                               and _shown_as_a_value(DEFAULTS[f.names[0]])], ids=lambda f: f.names[0])
def test_help_default_is_the_config_default(f):
    """Giving a flag its shown default changes nothing in the Config."""
    value = DEFAULTS[f.names[0]].split()[0]
    given = dataclasses.asdict(parse_args([f.names[0], value]))
    plain = dataclasses.asdict(Config())
    for key in plain:
        a, b = given[key], plain[key]
        if isinstance(b, float) and isinstance(a, float):
            assert a == pytest.approx(b, rel=1e-5, nan_ok=True), (f.names[0], key)
        elif key not in ("spelling_notes", "pivot"):    # -twotheta also picks the pivot
            assert a == b, (f.names[0], key)


def test_default_table_matches_the_flags():
    assert set(DEFAULTS) == {f.names[0] for f in FLAGS}
