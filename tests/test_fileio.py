"""Tests for reference.fileio: round trips, the C reference corpus, and error messages."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from reference.errors import InputError
from reference.fileio import (
    HKLTable,
    _scanf_double,
    _scanf_int,
    check_writable,
    fill_default,
    format_smv_header,
    read_fdump,
    read_hkl,
    read_mosflm_matrix,
    read_smv,
    read_source_file,
    smv_header_fields,
    write_fdump,
    write_float_image,
    write_pgm,
    write_smv,
)

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "c_corpus"
INPUTS = CORPUS / "inputs"
CASES = CORPUS / "cases"

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"C reference corpus not found at {CORPUS}")


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _header_fields_from(image) -> list:
    """Rebuild C's header fields from the values an SMV header holds."""
    e = image.entries()
    number = lambda key: float(e[key])  # noqa: E731
    return smv_header_fields(
        fpixels=int(e["SIZE1"]), spixels=int(e["SIZE2"]),
        pixel_size_mm=number("PIXEL_SIZE"), distance_mm=number("DISTANCE"),
        wavelength_A=number("WAVELENGTH"),
        beam_center_x_mm=number("BEAM_CENTER_X"), beam_center_y_mm=number("BEAM_CENTER_Y"),
        adxv_x=number("ADXV_CENTER_X"), adxv_y=number("ADXV_CENTER_Y"),
        mosflm_x=number("MOSFLM_CENTER_X"), mosflm_y=number("MOSFLM_CENTER_Y"),
        denzo_x=number("DENZO_X_BEAM"), denzo_y=number("DENZO_Y_BEAM"),
        dials_origin=[float(x) for x in e["DIALS_ORIGIN"].split(",")],
        orgx=number("XDS_ORGX"), orgy=number("XDS_ORGY"),
        close_distance_mm=number("CLOSE_DISTANCE"), phi_deg=number("PHI"),
        osc_deg=number("OSC_RANGE"), twotheta_deg=number("TWOTHETA"),
    )


# ---------------------------------------------------------------------------
# HKL and Fdump
# ---------------------------------------------------------------------------

def test_hkl_dense_layout_and_padding(tmp_path):
    path = _write_text(tmp_path / "a.hkl", "# comment\n\n 0 0 0 10\n1 -1 2 20.5\t\r\n-2 0 1 5\n")
    table = read_hkl(path)
    assert (table.h_min, table.h_max, table.k_min, table.k_max, table.l_min, table.l_max) == (-2, 1, -1, 0, 0, 2)
    assert table.values.shape == (5, 3, 4)  # range + 1 padding slot per axis
    assert table.count == 3 and table.warnings == []
    assert table.values[0 + 2, 0 + 1, 0] == 10
    assert table.values[1 + 2, -1 + 1, 2] == 20.5
    assert table.values[-2 + 2, 0 + 1, 1] == 5
    assert table.given.sum() == 3


def test_hkl_duplicate_reflection_last_wins(tmp_path):
    table = read_hkl(_write_text(tmp_path / "d.hkl", "0 0 0 1\n0 0 0 2\n1 0 0 3\n0 0 0 4\n"))
    assert table.values[0, 0, 0] == 4 and table.count == 4


def test_hkl_non_integer_index_warns_like_c(tmp_path):
    table = read_hkl(_write_text(tmp_path / "w.hkl", "0 0 0 1\n1.6 0 -0.2 2\n"))
    assert table.warnings == [
        "WARNING: non-integer value for h (1.6) at line 2",
        "WARNING: non-integer value for l (-0.2) at line 2",
    ]
    assert table.h_max == 2 and table.values[2, 0, 0] == 2  # nearest integers 2 and 0


def test_fill_default_leaves_padding_zero(tmp_path):
    table = read_hkl(_write_text(tmp_path / "f.hkl", "0 0 0 3\n1 1 1 4\n"))
    fill_default(table, 7.0)
    real = table.values[:-1, :-1, :-1]
    assert real[0, 0, 0] == 3 and real[1, 1, 1] == 4
    assert np.count_nonzero(real == 7.0) == real.size - 2
    assert not table.values[-1].any() and not table.values[:, -1].any() and not table.values[:, :, -1].any()


def test_fdump_round_trip_and_c_layout(tmp_path):
    table = read_hkl(_write_text(tmp_path / "r.hkl", "-1 0 2 1.5\n1 2 3 -2.25\n0 1 2 1e300\n"))
    fill_default(table, 0.125)
    path = tmp_path / "Fdump.bin"
    write_fdump(path, table)
    raw = path.read_bytes()
    header = b"-1 1 0 2 2 3\n\f"
    assert raw.startswith(header)
    assert len(raw) == len(header) + 8 * 4 * 4 * 3
    # h slowest, l fastest, little-endian doubles, padding included
    def stored(i):
        return struct.unpack_from("<d", raw, len(header) + 8 * i)[0]
    assert stored(0) == 1.5                  # (-1, 0, 2), the first grid point
    assert stored(1) == 0.125                # (-1, 0, 3), filled with default_F
    assert stored(2) == 0.0                  # l padding slot
    assert stored(2 * 12 + 2 * 3 + 1) == -2.25  # (1, 2, 3)
    again = read_fdump(path)
    assert np.array_equal(again.values, table.values)
    assert (again.h_min, again.h_max, again.k_min, again.k_max, again.l_min, again.l_max) == (-1, 1, 0, 2, 2, 3)
    assert again.count == 3 * 3 * 2
    assert not list(tmp_path.glob("*.tmp-*"))


def test_fdump_truncated(tmp_path):
    table = read_hkl(_write_text(tmp_path / "t.hkl", "0 0 0 1\n1 1 1 2\n"))
    path = tmp_path / "Fdump.bin"
    write_fdump(path, table)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        read_fdump(path)


def test_fdump_bad_header(tmp_path):
    path = tmp_path / "Fdump.bin"
    path.write_bytes(b"1 2 3\n\f" + bytes(64))
    with pytest.raises(InputError, match="Fdump.bin"):
        read_fdump(path)


@pytest.mark.parametrize("text, line, what", [
    ("0 0 0 1\n1 1 1\n", 2, "found 3"),
    ("0 0 0 1\n\n# c\n1 x 1 2\n", 4, "'x' is not a number"),
    ("0 0 0 1_0\n", 1, "not a number"),
    ("0 0 0 10 0.5\n1 0 0 20 0.6\n", 1, "found 5"),          # h k l F sigma
    ("0 0 0 10 1 0 0\n20\n", 1, "found 7"),                  # a reflection split over lines
    ("0 0 0 1\n1 0 0 2 # note\n", 2, "'#' is not a number"),  # only whole lines are comments
])
def test_hkl_malformed_line_names_file_and_line(tmp_path, text, line, what):
    path = _write_text(tmp_path / "bad.hkl", text)
    with pytest.raises(InputError) as info:
        read_hkl(path)
    message = str(info.value)
    assert f"{path}:{line}:" in message and what in message and "\n" not in message


# Files checked against the C binary: the expected grids below are what its Fdump.bin
# held (limits, count printed as "initialized hkls", non-zero values; -default_F 0).
_TWO_PER_LINE = "0 0 0 10 1 0 0 20\n-1 1 0 30\n"
_FIVE_COLUMNS = "0 0 0 10 0.5\n1 0 0 20 0.6\n2 0 0 30 0.7\n"
_COMMENT_INSIDE = "0 0 0 10\n# comment\n1 0 0 20\n"
_INDEX_ONE_POINT_ZERO = "0 0 0 10\n1.0 0 0 20\n2 0 0 30\n"


def _limits(table):
    return (table.h_min, table.h_max, table.k_min, table.k_max, table.l_min, table.l_max)


def _listed(table):
    """{(h, k, l): F} for every non-zero slot, padding slots included."""
    lows = (table.h_min, table.k_min, table.l_min)
    return {tuple(int(i) + low for i, low in zip(slot, lows)): float(table.values[slot])
            for slot in zip(*np.nonzero(table.values))}


@pytest.mark.parametrize("c_parity", [False, True])
def test_hkl_two_reflections_on_one_line(tmp_path, c_parity):
    table = read_hkl(_write_text(tmp_path / "two.hkl", _TWO_PER_LINE), c_parity=c_parity)
    assert _limits(table) == (-1, 1, 0, 1, 0, 0) and table.count == 3
    assert _listed(table) == {(0, 0, 0): 10.0, (1, 0, 0): 20.0, (-1, 1, 0): 30.0}


def test_hkl_five_columns(tmp_path):
    path = _write_text(tmp_path / "five.hkl", _FIVE_COLUMNS)
    with pytest.raises(InputError, match=r"five\.hkl:1: expected 'h k l F' .*found 5"):
        read_hkl(path)
    # C reads (0 0 0 10) (0.5 1 0 0) (20 0.6 2 0): 3 reflections whose bounds it truncates
    # to ints; the second pass reads h = 0 from "0.5" and stops at ".5"
    table = read_hkl(path, c_parity=True)
    assert _limits(table) == (0, 20, 0, 1, 0, 2) and table.count == 3
    assert _listed(table) == {(0, 0, 0): 10.0}
    assert table.warnings[:2] == ["WARNING: non-integer value for h (0.5) at line 1",
                                  "WARNING: non-integer value for k (0.6) at line 2"]
    fill_default(table, 3.0)
    assert table.values[1, 0, 0] == 3.0 and table.values[20, 1, 2] == 3.0


def test_hkl_comment_line_inside_the_file(tmp_path):
    path = _write_text(tmp_path / "comment.hkl", _COMMENT_INSIDE)
    table = read_hkl(path)
    assert _limits(table) == (0, 1, 0, 0, 0, 0) and table.count == 2
    parity = read_hkl(path, c_parity=True)
    assert _limits(parity) == (0, 0, 0, 0, 0, 0) and parity.count == 1  # C stops at '#'
    assert _listed(parity) == {(0, 0, 0): 10.0}
    assert any("comment.hkl line 2" in w and "'#'" in w for w in parity.warnings)


def test_hkl_index_written_as_real_number(tmp_path):
    path = _write_text(tmp_path / "real.hkl", _INDEX_ONE_POINT_ZERO)
    table = read_hkl(path)
    assert table.warnings == [] and _listed(table) == {(0, 0, 0): 10.0, (1, 0, 0): 20.0, (2, 0, 0): 30.0}
    # C: the first pass counts 3 reflections for the ranges, the second stops inside "1.0"
    parity = read_hkl(path, c_parity=True)
    assert _limits(parity) == (0, 2, 0, 0, 0, 0) and parity.count == 3
    assert _listed(parity) == {(0, 0, 0): 10.0}
    fill_default(parity, 7.0)
    assert parity.values[1, 0, 0] == 7.0 and parity.values[2, 0, 0] == 7.0


def test_hkl_parity_non_integer_bounds_and_stream_shift(tmp_path):
    # non-integer indices: C's int bounds truncate toward zero (1.6 -> 1, -0.7 -> 0) and
    # C's warning numbers the reflections from 0
    table = read_hkl(_write_text(tmp_path / "frac.hkl", "0 0 0 10\n1.6 0 -0.7 20\n-1 0 1 30\n"),
                     c_parity=True)
    assert _limits(table) == (-1, 1, 0, 0, 0, 1) and table.count == 3
    assert _listed(table) == {(0, 0, 0): 10.0}
    assert table.warnings[:2] == ["WARNING: non-integer value for h (1.6) at line 1",
                                  "WARNING: non-integer value for l (-0.7) at line 1"]
    # "1.5" as l: the second pass reads l = 1 and F = .5, then (1 0 2 5), which lands in
    # C's padding slots and shows in its Fdump.bin
    shifted = read_hkl(_write_text(tmp_path / "shift.hkl", "0 0 0 10\n0 0 1.5 1 0 2 5\n"), c_parity=True)
    assert _limits(shifted) == (0, 0, 0, 0, 0, 1) and shifted.count == 2
    assert _listed(shifted) == {(0, 0, 0): 10.0, (0, 0, 1): 0.5, (1, 0, 2): 5.0}
    # glibc's spellings: "1e" reads 1, "0x10" 16; "%d" stops inside "0x2"
    odd = read_hkl(_write_text(tmp_path / "odd.hkl", "0 0 0 1e\n1 0 0 0x10\n0x2 0 0 4\n"), c_parity=True)
    assert _limits(odd) == (0, 2, 0, 0, 0, 0) and odd.count == 3
    assert _listed(odd) == {(0, 0, 0): 1.0, (1, 0, 0): 16.0}


def test_hkl_parity_store_outside_c_table_is_an_error(tmp_path):
    # the shifted second pass would store (1 0 7) past the l axis: undefined in C
    path = _write_text(tmp_path / "oob.hkl", "0 0 0 10\n0 0 1.5 1\n0 7 5 3\n")
    with pytest.raises(InputError, match=r"oob\.hkl:3: .*\(1 0 7\) outside"):
        read_hkl(path, c_parity=True)
    with pytest.raises(InputError, match=r"stops at line 1, '#'"):
        read_hkl(_write_text(tmp_path / "c.hkl", "# header\n0 0 0 1\n"), c_parity=True)


def test_c_scanf_emulation_matches_glibc():
    # (text, value, characters consumed), measured with glibc's fscanf on the C program's machine
    doubles = [("1e x", 1.0, 2), ("1e+x", 1.0, 3), ("1.x", 1.0, 2), ("-.5x", -0.5, 3), (".x", None, 0),
               ("-x", None, 0), ("0x1p3x", 8.0, 5), ("0xg", None, 0), ("0x.x", 0.0, 3), ("0x.p3x", 0.0, 3),
               ("infx", math.inf, 3), ("infinityx", math.inf, 8), ("infinx", None, 0),
               ("nan(12)x", math.nan, 3), ("1,2", 1.0, 1), ("1e400x", math.inf, 5), ("4.9e-330x", 0.0, 8),
               ("-0x1.8p1x", -3.0, 8), ("  \f\v7", 7.0, 5)]
    for text, value, used in doubles:
        got, end = _scanf_double(text, 0)
        if value is None:
            assert got is None, text
        else:
            assert (got == value or (math.isnan(got) and math.isnan(value))) and end == used, text
    ints = [("1.0x", 1, 1), ("+3x", 3, 2), ("-x", None, 0), ("0x10", 0, 1), ("2147483648x", -2147483648, 10),
            ("99999999999x", 1215752191, 11), ("-2147483649x", 2147483647, 11), ("1e2x", 1, 1)]
    for text, value, used in ints:
        got, end = _scanf_int(text, 0)
        assert got == value and (value is None or end == used), text


@pytest.mark.parametrize("c_parity", [False, True])
def test_hkl_clean_file_shortcut_agrees_with_careful_readers(tmp_path, c_parity):
    rng = np.random.default_rng(5)
    rows = [f"{h} {k} {l} {f:.3f}" for h, k, l, f in zip(rng.integers(-4, 5, 300), rng.integers(-3, 4, 300),
                                                          rng.integers(-2, 3, 300), rng.uniform(0, 100, 300))]
    clean = _write_text(tmp_path / "clean.hkl", "\n".join(rows) + "\n\n")
    careful = _write_text(tmp_path / "careful.hkl", "\n".join(rows) + "\n#\n")  # the '#' defeats the shortcut
    fast, slow = read_hkl(clean, c_parity=c_parity), read_hkl(careful, c_parity=c_parity)
    assert _limits(fast) == _limits(slow) and fast.count == slow.count == 300
    assert np.array_equal(fast.values, slow.values) and np.array_equal(fast.given, slow.given)


def test_hkl_mode_reaches_the_reader_from_the_command_line(capsys):
    from reference.cli import main

    Path("comment.hkl").write_text(_COMMENT_INSIDE)
    args = ["-hkl", "comment.hkl", "-cell", "50", "-detpixels", "8", "-pixel", "0.1", "-distance", "100",
            "-nonoise", "-nopgm", "-noprogress"]
    for mode, count, limits in [([], 2, b"0 1 0 0 0 0\n\f"), (["-c_parity"], 1, b"0 0 0 0 0 0\n\f")]:
        assert main(args + mode) == 0
        assert f"  {count} initialized hkls" in capsys.readouterr().out
        assert Path("Fdump.bin").read_bytes().startswith(limits)


def test_hkl_empty_and_missing(tmp_path):
    with pytest.raises(InputError, match="no reflections"):
        read_hkl(_write_text(tmp_path / "e.hkl", "# nothing\n\n"))
    with pytest.raises(InputError, match="missing.hkl"):
        read_hkl(tmp_path / "missing.hkl")
    with pytest.raises(InputError, match="Fdump.bin"):
        read_fdump(tmp_path / "Fdump.bin")


# ---------------------------------------------------------------------------
# Matrix and source files
# ---------------------------------------------------------------------------

def test_matrix_any_line_structure(tmp_path):
    path = _write_text(tmp_path / "m.mat", "1 2 3 4\n5\n6 7 8 9 10 11\nU matrix text ignored\n")
    matrix = read_mosflm_matrix(path)
    assert np.array_equal(matrix, np.arange(1, 10, dtype=float).reshape(3, 3))


def test_matrix_with_eight_numbers(tmp_path):
    path = _write_text(tmp_path / "m.mat", "1 2 3\n4 5 6\n7 8\n")
    with pytest.raises(InputError, match="found 8"):
        read_mosflm_matrix(path)
    with pytest.raises(InputError, match="nope.mat"):
        read_mosflm_matrix(tmp_path / "nope.mat")


def test_source_file_delimiters_and_short_rows(tmp_path):
    path = _write_text(tmp_path / "s.txt", "1,2;3:4!5 6\n\n \t\n7\t8\n-1e-10 .5 +2\n")
    rows = read_source_file(path)
    assert rows.shape == (3, 5)
    assert np.array_equal(rows[0], [1, 2, 3, 4, 5])  # the sixth value is ignored
    assert rows[1, :2].tolist() == [7, 8] and np.isnan(rows[1, 2:]).all()
    assert rows[2, :3].tolist() == [-1e-10, 0.5, 2] and np.isnan(rows[2, 3:]).all()


def test_source_file_errors(tmp_path):
    with pytest.raises(InputError, match="no sources"):
        read_source_file(_write_text(tmp_path / "e.txt", "\n \n"))
    with pytest.raises(InputError, match=r"b\.txt:2: 'abc'"):
        read_source_file(_write_text(tmp_path / "b.txt", "1 2 3\n4 abc\n"))
    with pytest.raises(InputError, match="gone.txt"):
        read_source_file(tmp_path / "gone.txt")


# ---------------------------------------------------------------------------
# SMV, PGM and float images
# ---------------------------------------------------------------------------

def _example_fields(fpixels=6, spixels=4):
    return smv_header_fields(
        fpixels, spixels, 0.1, 100.0, 6.2, 8.05, 8.05, 8.1, 7.9, 8.05, 8.05, 8.1, 8.1,
        (-8.1, 8.1, -100.0), 81.5, 81.5, 100.0, 0.0, 0.0, 0.0)


def test_smv_header_text_matches_c_format():
    header = format_smv_header(_example_fields())
    assert len(header) == 512
    text = header.rstrip(b" ").decode()
    assert text.startswith("{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
                           "SIZE1=6;\nSIZE2=4;\nPIXEL_SIZE=0.1;\nDISTANCE=100;\n")
    assert "DIALS_ORIGIN=-8.1,8.1,-100\nXDS_ORGX=81.5;\n" in text
    assert text.endswith("DETECTOR_SN=000;\nBEAMLINE=fake;\n}\f")


def test_smv_round_trip(tmp_path):
    image = (np.arange(24, dtype=np.uint16) * 2731).reshape(4, 6)
    path = tmp_path / "x.img"
    write_smv(path, image, _example_fields())
    assert path.stat().st_size == 512 + 2 * 24
    back = read_smv(path)
    assert (back.width, back.height, back.header_bytes) == (6, 4, 512)
    assert back.data.dtype == np.uint16 and np.array_equal(back.data, image)
    assert back.value("WAVELENGTH") == 6.2
    assert back.value("ORGX") == 81.5          # substring match, as in C
    assert back.value("DISTANCE") == 100.0     # last match is CLOSE_DISTANCE
    assert back.value("NOT_THERE") is None
    assert not list(tmp_path.glob("*.tmp-*"))


def test_smv_value_follows_c_rules(tmp_path):
    header = ("{\nHEADER_BYTES=  512;\nBYTE_ORDER=big_endian;\nSIZE1=3;\nSIZE2=2;\n"
              "QQ=1;\nQQ= 1.5e3xyz;\nB=junk;\nTAIL\n}").encode().ljust(512, b" ")
    data = np.array([[1, 2, 258], [65535, 0, 4]], dtype=">u2")
    path = tmp_path / "big.img"
    path.write_bytes(header + data.tobytes())
    image = read_smv(path)
    assert image.value("QQ") == 1500.0     # last occurrence, atof prefix
    assert image.value("A") == 0.0         # substring: last 'A' is in "TAIL", no '=' after it
    assert image.value("B") == 0.0         # atof of non-number
    assert image.value("TAIL") == 0.0      # no '=' after the keyword
    assert image.byte_order == "big_endian"
    assert np.array_equal(image.data, data.astype(np.uint16))


def test_smv_detector_dimensions_fallback(tmp_path):
    header = b"{\nHEADER_BYTES=512;\nDETECTOR_DIMENSIONS=2;\n}".ljust(512, b" ")
    path = tmp_path / "dd.img"
    path.write_bytes(header + bytes(8))
    assert read_smv(path).data.shape == (2, 2)


def test_smv_errors(tmp_path):
    path = tmp_path / "t.img"
    write_smv(path, np.zeros((4, 6), np.uint16), _example_fields())
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(InputError, match="truncated"):
        read_smv(path)
    path.write_bytes(b"P5\n" + bytes(600))
    with pytest.raises(InputError, match="not an SMV"):
        read_smv(path)
    with pytest.raises(InputError, match="none.img"):
        read_smv(tmp_path / "none.img")


def _header_of_length(length):
    """Fields whose header text, written with HEADER_BYTES=512, is ``length`` bytes long."""
    base = len(b"{\nHEADER_BYTES=512;\nX=;\n}\f")
    return [("HEADER_BYTES", "512"), ("X", "y" * (length - base))]


@pytest.mark.parametrize("length, size", [(512, 512), (513, 1024), (1023, 1024), (1024, 1536)])
def test_smv_header_grows_in_512_byte_blocks(length, size):
    header = format_smv_header(_header_of_length(length))
    assert len(header) == size
    assert header.startswith(b"{\nHEADER_BYTES=%d;\nX=yyy" % size)
    # 1024 bytes of text fit with "512" but not with "1024": the size is decided on the final text
    text = header.rstrip(b" ")
    assert text.endswith(b";\n}\f") and len(text) == length + len(str(size)) - 3


# C's own output for this command line: a 517-byte header text, first row of pixels
# (verified against the C binary, whose pixels equal ours; C writes them at byte 517
# under HEADER_BYTES=512, we at byte 1024).
_LONG_HEADER_ARGS = ["-cell", "50", "-default_F", "1", "-detpixels", "32", "-pixel", "0.0531",
                     "-twotheta", "11.79", "-phi", "12.34"]
_LONG_HEADER_FIRST_PIXELS = [54478, 54479, 54480, 54481, 54481, 54482]


@pytest.mark.parametrize("mode", [[], ["-c_parity"]], ids=["spec", "c_parity"])
def test_smv_long_header_written_in_1024_bytes(mode, capsys):
    import fabio

    from reference.cli import main

    assert main(_LONG_HEADER_ARGS + mode + ["-noprogress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    for name in ("intimage.img", "noiseimage.img"):
        path = Path(name)
        assert path.stat().st_size == 1024 + 2 * 32 * 32
        ours = read_smv(path)
        assert ours.header_bytes == 1024 and ours.data.shape == (32, 32)
        assert ours.entries()["HEADER_BYTES"] == "1024"
        assert ours.value("PIXEL_SIZE") == 0.0531
        assert ours.value("TWOTHETA") == 11.79 and ours.value("PHI") == 12.34
        theirs = fabio.open(name)
        assert int(theirs.header["HEADER_BYTES"]) == 1024
        assert float(theirs.header["PIXEL_SIZE"]) == 0.0531
        assert float(theirs.header["TWOTHETA"]) == 11.79 and float(theirs.header["PHI"]) == 12.34
        assert theirs.data.shape == (32, 32) and np.array_equal(theirs.data, ours.data)
        # the pixels are where HEADER_BYTES says: the last bytes of the file
        tail = np.frombuffer(path.read_bytes()[-2 * 32 * 32:], "<u2").reshape(32, 32)
        assert np.array_equal(ours.data, tail)
    assert read_smv("intimage.img").data[0, :6].tolist() == _LONG_HEADER_FIRST_PIXELS


def test_pgm_and_float_images(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_pgm(tmp_path / "p.pgm", grey, 1.23456789)
    raw = (tmp_path / "p.pgm").read_bytes()
    header = b"P5\n4 3\n# pixels scaled by 1.23457\n255\n"
    assert raw == header + grey.tobytes()

    photons = np.linspace(-1, 1e6, 12).reshape(3, 4)
    write_float_image(tmp_path / "f.bin", photons)
    back = np.fromfile(tmp_path / "f.bin", dtype="<f4").reshape(3, 4)
    assert np.array_equal(back, photons.astype(np.float32))


def test_unwritable_outputs(tmp_path):
    missing_dir = tmp_path / "no_such_dir" / "out.img"
    with pytest.raises(InputError, match="does not exist"):
        check_writable(missing_dir)
    with pytest.raises(InputError, match="cannot write"):
        check_writable(tmp_path)  # a directory, not a file name
    not_a_dir = tmp_path / "plain_file"
    not_a_dir.write_text("x")
    for writer, args in [(write_float_image, (np.zeros(3),)),
                         (write_pgm, (np.zeros((1, 1), np.uint8), 1.0)),
                         (write_smv, (np.zeros((4, 6), np.uint16), _example_fields()))]:
        with pytest.raises(InputError, match=r"cannot write .*out\.bin"):
            writer(not_a_dir / "out.bin", *args)
    check_writable(tmp_path / "fine.bin")  # no exception


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_writable(locked / "x.img")
        with pytest.raises(InputError, match="cannot write"):
            write_float_image(locked / "x.bin", np.zeros(2))
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------
# The C reference corpus
# ---------------------------------------------------------------------------

@needs_corpus
def test_corpus_p1_hkl():
    table = read_hkl(INPUTS / "P1.hkl")
    assert table.count == 25 ** 3 and table.warnings == []
    assert (table.h_min, table.h_max, table.k_min, table.k_max, table.l_min, table.l_max) == (-12, 12) * 3
    assert table.values.shape == (26, 26, 26)
    assert table.values[0, 0, 0] == 9.487 and table.values[0, 0, 1] == 9.194
    assert table.given[:-1, :-1, :-1].all()


@needs_corpus
def test_corpus_sparse_hkl_with_default():
    table = read_hkl(INPUTS / "sparse.hkl")
    assert table.count == 10
    assert (table.h_min, table.h_max, table.k_min, table.k_max, table.l_min, table.l_max) == (-1, 2, -1, 2, -1, 1)
    assert table.values[2 + 1, 0 + 1, 0 + 1] == 150.0
    fill_default(table, 80.0)
    real = table.values[:-1, :-1, :-1]
    assert (real[~table.given[:-1, :-1, :-1]] == 80.0).all()
    assert table.values[1 + 1, 0 + 1, 0 + 1] == 80.0  # listed in the file with F = 80
    assert table.values[-1].sum() == 0 and table.values[:, :, -1].sum() == 0


@needs_corpus
def test_corpus_matrices():
    a = read_mosflm_matrix(INPUTS / "A.mat")
    assert a[0].tolist() == [0.00074787, 0.00282891, 0.01412328]
    assert a[2, 1] == 0.01629621
    b = read_mosflm_matrix(INPUTS / "B.mat")
    assert b[1].tolist() == [0.01095414, 0.02442879, 0.00187908]


@needs_corpus
def test_corpus_sources():
    rows = read_source_file(INPUTS / "sources.txt")
    assert rows.shape == (4, 5)
    assert rows[0].tolist() == [-10.0, 0.0, 0.0, 1.0, 1.0e-10]
    assert rows[2, :4].tolist() == [-10.0, 0.0, 0.002, 2.0] and math.isnan(rows[2, 4])
    assert np.isnan(rows[3, 3:]).all()
    xds = read_source_file(INPUTS / "sources_xds.txt")
    assert xds.shape == (3, 5) and not np.isnan(xds).any()


@needs_corpus
def test_corpus_mask_and_header_images():
    mask = read_smv(INPUTS / "mask.img")
    assert (mask.width, mask.height, mask.header_bytes) == (96, 80, 512)
    assert set(np.unique(mask.data)) <= {0, 1} and mask.data.any() and not mask.data.all()
    assert mask.value("PIXEL_SIZE") == 0.12 and mask.value("DISTANCE") == 90.0
    assert mask.value("PHI") is None
    header = read_smv(INPUTS / "header.img")
    assert header.value("WAVELENGTH") == 1.3 and header.value("BEAM_CENTER_Y") == 3.9
    assert header.value("PHI") == 5.0 and header.value("TWOTHETA") == 3.0
    assert header.value("ORGX") is None


@needs_corpus
def test_corpus_cubic_basic_header_regenerated_exactly():
    path = CASES / "cubic_basic" / "int.img"
    image = read_smv(path)
    produced = format_smv_header(_header_fields_from(image))
    assert produced == path.read_bytes()[:512]


@needs_corpus
def test_corpus_every_int_image_rewrites_byte_identically(tmp_path):
    paths = sorted(CASES.glob("*/int.img"))
    assert paths, "corpus has no int.img files"
    for path in paths:
        image = read_smv(path)
        out = tmp_path / "copy.img"
        write_smv(out, image.data, _header_fields_from(image))
        assert out.read_bytes() == path.read_bytes(), path.parent.name


def test_hkltable_rejects_wrong_shape():
    with pytest.raises(ValueError):
        HKLTable(0, 1, 0, 1, 0, 1, values=np.zeros((2, 2, 2)), count=0)


def test_fdump_first_value_starting_with_white_space_is_read_shifted_under_parity(tmp_path):
    """quirk (t): C's header format "%d...%d\\n\\f" skips white space, also the first value's bytes."""
    from reference.fileio import read_fdump
    shape = (3, 3, 3)
    values = np.arange(1, 28, dtype="<f8").reshape(shape) * 1.5
    values[0, 0, 0] = 46.33                       # lowest byte 0x0a: a newline to fscanf
    data = values.tobytes()
    assert data[0:1] == b"\n"
    path = tmp_path / "Fdump.bin"
    path.write_bytes(b"0 1 0 1 0 1\n\f" + data)
    np.testing.assert_array_equal(read_fdump(path).values, values)
    shifted = np.frombuffer(data[1:] + b"\0", "<f8").reshape(shape)
    np.testing.assert_array_equal(read_fdump(path, c_parity=True).values, shifted)
