"""Structure factors from MTZ, mmCIF and coordinate files (reference/reflections.py).

The files are written here, with gemmi (MTZ, PDB) or by hand (mmCIF); the
expected tables come from this file's own P1 expansion (the four rotations
of P 21 21 21 written out) and its own structure-factor sum.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

gemmi = pytest.importorskip("gemmi")

from reference import fileio, reflections                      # noqa: E402
from reference.cli import parse_args                           # noqa: E402
from reference.errors import InputError                        # noqa: E402
from tests.cli_helpers import expect_error, run_cli            # noqa: E402

CELL = (30.0, 40.0, 50.0, 90.0, 90.0, 90.0)
CELL_FLAGS = ["-cell"] + ["%g" % x for x in CELL]
# P 21 21 21: (x,y,z) (-x+1/2,-y,z+1/2) (x+1/2,-y+1/2,-z) (-x,y+1/2,-z+1/2)
ROTATIONS = [np.diag(d) for d in ((1, 1, 1), (-1, -1, 1), (1, -1, -1), (-1, 1, -1))]
TRANSLATIONS = [np.array(t) for t in ((0, 0, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (0, 0.5, 0.5))]

# asymmetric-unit reflections of P 21 21 21 (h, k, l >= 0) and amplitudes exact in float32
ASU = np.array([[1, 2, 3], [2, 0, 1], [0, 3, 2], [1, 1, 0], [0, 0, 2], [3, 2, 1], [2, 2, 2], [0, 1, 1]])
F_ASU = np.array([12.5, 3.25, 7.0, 100.0, 0.5, 42.75, 9.0, 1.0])


def _p1_by_hand(hkl, amplitudes):
    """The P1 list: h R for each rotation, and the Friedel mates."""
    table = {}
    for h, f in zip(hkl, amplitudes):
        for r in ROTATIONS:
            for sign in (1, -1):
                table[tuple(int(x) for x in sign * (h @ r))] = f
    return table


def _write_mtz(path, columns, hkl=ASU, cell=CELL, space_group="P 21 21 21", extra=None):
    """``columns``: (label, type, values) triples."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup(space_group)
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    mtz.add_dataset("sim")
    for label, kind, _ in columns:
        mtz.add_column(label, kind)
    data = np.column_stack([hkl] + [values for _, _, values in columns]).astype(np.float32)
    mtz.set_data(data)
    if extra:
        extra(mtz)
    mtz.write_to_file(str(path))
    return path


def _write_hkl(path, table):
    with open(path, "w") as out:
        for (h, k, l), f in sorted(table.items()):
            out.write(f"{h} {k} {l} {float(f)!r}\n")
    return path


def _same_table(a, b):
    assert (a.h_min, a.h_max, a.k_min, a.k_max, a.l_min, a.l_max) == (b.h_min, b.h_max, b.k_min, b.k_max,
                                                                      b.l_min, b.l_max)
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(a.given, b.given)


# ---------------------------------------------------------------------------
# MTZ
# ---------------------------------------------------------------------------

def test_mtz_expands_to_the_p1_table_of_the_equivalent_hkl_file(tmp_path):
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU), ("SIGFP", "Q", F_ASU / 10)])
    expected = _p1_by_hand(ASU, F_ASU)
    hkl = _write_hkl(tmp_path / "p1.hkl", expected)
    refl = reflections.read_mtz(mtz)
    assert refl.unique == len(ASU) and refl.space_group == "P 21 21 21"
    assert refl.cell == pytest.approx(CELL)
    assert dict(zip(map(tuple, refl.hkl.tolist()), refl.amplitudes.tolist())) == expected
    _same_table(reflections.hkl_table(refl, "x.mtz"), fileio.read_hkl(hkl))


def _render(tmp_path, name, source, extra=()):
    folder = tmp_path / name
    folder.mkdir()
    os.chdir(folder)
    argv = CELL_FLAGS + ["-N", "3", "-detpixels", "24", "-pixel", "0.5", "-distance", "60", "-lambda", "6",
                         "-nonoise", "-nopgm", "-noprogress", "-floatfile", "float.bin", "-intfile", "int.img"]
    from reference.cli import main
    assert main(argv + list(source) + list(extra)) == 0
    image = np.fromfile(folder / "float.bin", dtype=np.float32)
    return image, (folder / "Fdump.bin").read_bytes()


def test_mtz_renders_the_same_image_and_fdump_as_the_p1_hkl_file(tmp_path):
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU)])
    hkl = _write_hkl(tmp_path / "p1.hkl", _p1_by_hand(ASU, F_ASU))
    from_mtz, dump_mtz = _render(tmp_path, "a", ["-hkl", str(mtz)])
    from_hkl, dump_hkl = _render(tmp_path, "b", ["-hkl", str(hkl)])
    assert from_mtz.max() > 0 and np.count_nonzero(from_mtz) > 10
    assert np.array_equal(from_mtz, from_hkl)
    assert dump_mtz == dump_hkl


def test_intensities_become_sqrt_of_positive_part(tmp_path):
    intensities = np.array([156.25, 4.0, -3.0, 0.0, 2.25, 16.0, 81.0, 1.0])
    refl = reflections.read_mtz(_write_mtz(tmp_path / "i.mtz", [("IMEAN", "J", intensities)]))
    got = dict(zip(map(tuple, refl.hkl.tolist()), refl.amplitudes.tolist()))
    assert got == _p1_by_hand(ASU, np.sqrt(np.maximum(intensities, 0)))
    assert "F = sqrt(max(I, 0))" in refl.description


def test_missing_values_are_left_out(tmp_path):
    values = F_ASU.copy()
    values[2] = np.nan
    refl = reflections.read_mtz(_write_mtz(tmp_path / "m.mtz", [("FP", "F", values)]))
    keep = np.arange(len(ASU)) != 2
    assert dict(zip(map(tuple, refl.hkl.tolist()), refl.amplitudes.tolist())) == _p1_by_hand(ASU[keep], F_ASU[keep])


def test_column_choice(tmp_path):
    mtz = _write_mtz(tmp_path / "c.mtz", [("FC", "F", F_ASU * 2), ("FP", "F", F_ASU), ("IMEAN", "J", F_ASU ** 2)])
    assert reflections.read_mtz(mtz).description.startswith("column FP")
    assert reflections.read_mtz(mtz, "FC").amplitudes.max() == 200.0
    assert reflections.read_mtz(mtz, "IMEAN").amplitudes.max() == 100.0
    # one amplitude column of another name is taken; several without a known name are not
    assert reflections.read_mtz(_write_mtz(tmp_path / "o.mtz", [("Fobs_x", "F", F_ASU)])).unique == len(ASU)
    with pytest.raises(InputError, match=r"several amplitude columns \(FC, F2\).*-hkl_column"):
        reflections.read_mtz(_write_mtz(tmp_path / "s.mtz", [("FC", "F", F_ASU), ("F2", "F", F_ASU)]))


@pytest.mark.parametrize("columns, column, words", [
    ([("FP", "F", F_ASU)], "FOBS", "no column 'FOBS' (columns: H, K, L, FP)"),
    ([("FP", "F", F_ASU), ("SIGFP", "Q", F_ASU)], "SIGFP", "MTZ type Q"),
    ([("F(+)", "G", F_ASU)], "F(+)", "anomalous"),
    ([("SIGFP", "Q", F_ASU)], None, "no amplitude (type F) or intensity (type J) column"),
])
def test_bad_columns_are_one_clear_line(tmp_path, columns, column, words):
    path = _write_mtz(tmp_path / "b.mtz", columns)
    with pytest.raises(InputError) as info:
        reflections.read_mtz(path, column)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unmerged_mtz_is_refused(tmp_path):
    path = _write_mtz(tmp_path / "u.mtz", [("M/ISYM", "Y", np.ones(len(ASU))), ("I", "J", F_ASU)])
    with pytest.raises(InputError, match="unmerged"):
        reflections.read_mtz(path)


def test_not_an_mtz(tmp_path):
    (tmp_path / "junk.mtz").write_bytes(b"this is not an mtz file at all" * 10)
    with pytest.raises(InputError, match="junk.mtz: not a readable MTZ file"):
        reflections.read_mtz(tmp_path / "junk.mtz")
    with pytest.raises(InputError, match="no such file"):
        reflections.read_mtz(tmp_path / "absent.mtz")


# ---------------------------------------------------------------------------
# the P1 expansion in other space groups
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("symbol, cell", [
    ("P 31 2 1", (40, 40, 60, 90, 90, 120)), ("C 1 2 1", (50, 30, 40, 90, 105, 90)),
    ("I 41/a", (60, 60, 40, 90, 90, 90)), ("F 2 3", (70, 70, 70, 90, 90, 90)), ("P -1", (20, 25, 30, 80, 85, 95)),
])
def test_expansion_reaches_every_reflection_of_the_sphere_once(symbol, cell):
    space_group, unit_cell = gemmi.SpaceGroup(symbol), gemmi.UnitCell(*cell)
    dmin = 6.01
    unique = np.asarray(gemmi.make_miller_array(unit_cell, space_group, dmin, 0, True), dtype=np.int64)
    amplitudes = np.arange(1.0, len(unique) + 1)
    hkl, f = reflections.expand_to_p1(unique, amplitudes, space_group)
    sphere = np.asarray(gemmi.make_miller_array(unit_cell, space_group, dmin, 0, False), dtype=np.int64)
    # no reflection so near the limit that rounding decides whether it is in
    d = unit_cell.calculate_d_array(sphere.astype(np.int32))
    assert np.abs(d / dmin - 1).min() > 1e-6
    assert sorted(map(tuple, hkl.tolist())) == sorted(map(tuple, sphere.tolist()))
    # each carries the amplitude of the one asymmetric-unit reflection it is equivalent to
    asu = gemmi.ReciprocalAsu(space_group)
    ops = space_group.operations()
    back = {tuple(u): a for u, a in zip(unique.tolist(), amplitudes)}
    for h, value in zip(hkl.tolist(), f):
        assert back[tuple(asu.to_asu(h, ops)[0])] == value


def test_the_later_of_two_equivalents_wins_as_in_the_hkl_reader():
    space_group = gemmi.SpaceGroup("P 21 21 21")
    hkl, f = reflections.expand_to_p1([[1, 2, 3], [2, 0, 1], [-1, -2, 3]], [5.0, 1.0, 7.0], space_group)
    got = dict(zip(map(tuple, hkl.tolist()), f.tolist()))
    assert got == {**_p1_by_hand(ASU[[1]], [1.0]), **_p1_by_hand(ASU[[0]], [7.0])}


# ---------------------------------------------------------------------------
# mmCIF reflections
# ---------------------------------------------------------------------------

def _write_sf_cif(path, rows, columns=("F_meas_au",), cell=True, symmetry=True):
    lines = ["data_r0sim", ""]
    if cell:
        lines += ["_cell.length_a 30", "_cell.length_b 40", "_cell.length_c 50", "_cell.angle_alpha 90",
                  "_cell.angle_beta 90", "_cell.angle_gamma 90", ""]
    if symmetry:
        lines += ["_symmetry.space_group_name_H-M 'P 21 21 21'", ""]
    lines += ["loop_", "_refln.index_h", "_refln.index_k", "_refln.index_l", "_refln.status"]
    lines += [f"_refln.{c}" for c in columns]
    lines += [" ".join(str(x) for x in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mmcif_reflections_give_the_mtz_table(tmp_path):
    rows = [(h, k, l, "o", f, "?") for (h, k, l), f in zip(ASU.tolist(), F_ASU)]
    rows.append((4, 4, 4, "o", "?", 5.0))             # no amplitude: left out
    cif = _write_sf_cif(tmp_path / "r.cif", rows, ("F_meas_au", "intensity_meas"))
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU)])
    refl = reflections.read_structure_factors(cif)
    assert refl.description.startswith("column F_meas_au") and not refl.from_model
    _same_table(reflections.hkl_table(refl, "r.cif"), reflections.hkl_table(reflections.read_mtz(mtz), "x.mtz"))
    by_intensity = reflections.read_structure_factors(cif, column="_refln.intensity_meas")
    assert by_intensity.unique == 1 and by_intensity.amplitudes.max() == pytest.approx(math.sqrt(5.0))


def test_mmcif_without_a_cell_or_a_column(tmp_path):
    rows = [(h, k, l, "o", f) for (h, k, l), f in zip(ASU.tolist(), F_ASU)]
    with pytest.raises(InputError, match="no unit cell"):
        reflections.read_structure_factors(_write_sf_cif(tmp_path / "nc.cif", rows, cell=False))
    with pytest.raises(InputError, match="no space group"):
        reflections.read_structure_factors(_write_sf_cif(tmp_path / "ns.cif", rows, symmetry=False))
    with pytest.raises(InputError, match="no column 'F_calc'"):
        reflections.read_structure_factors(_write_sf_cif(tmp_path / "f.cif", rows), column="F_calc")
    with pytest.raises(InputError, match="no amplitude or intensity column"):
        reflections.read_structure_factors(_write_sf_cif(tmp_path / "s.cif", rows, ("phase_calc",)))


# ---------------------------------------------------------------------------
# coordinate models
# ---------------------------------------------------------------------------

# fractional x y z, element, B (A^2), occupancy: coordinates exact in the PDB's 3 decimals
ATOMS = [((0.1, 0.2, 0.3), "C", 12.0, 1.0), ((0.45, 0.05, 0.7), "N", 20.5, 1.0),
         ((0.8, 0.6, 0.15), "O", 7.25, 0.5), ((0.3, 0.85, 0.55), "S", 30.0, 1.0),
         ((0.6, 0.35, 0.9), "FE", 15.0, 0.75)]


def _write_pdb(path, cell=CELL, space_group="P 21 21 21"):
    st = gemmi.Structure()
    if cell is not None:
        st.cell = gemmi.UnitCell(*cell)
        st.spacegroup_hm = space_group
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for i, (xyz, element, b, occ) in enumerate(ATOMS):
        residue = gemmi.Residue()
        residue.name, residue.seqid = "UNK", gemmi.SeqId(i + 1, " ")
        atom = gemmi.Atom()
        atom.name, atom.element, atom.b_iso, atom.occ = element, gemmi.Element(element), b, occ
        atom.pos = gemmi.Position(*(np.array(xyz) * np.array(CELL[:3])))
        residue.add_atom(atom)
        chain.add_residue(residue)
    model.add_chain(chain)
    st.add_model(model)
    st.write_pdb(str(path))
    return path


def _direct_sum(h):
    """|F(h)| = |sum_j occ_j f_j(s) exp(-B_j s^2 / 4) exp(2 pi i h.x_j)| over every atom and symmetry mate."""
    h = np.asarray(h, dtype=np.float64)
    inv_d2 = (h[0] / CELL[0]) ** 2 + (h[1] / CELL[1]) ** 2 + (h[2] / CELL[2]) ** 2     # s^2 = 1/d^2
    total = 0j
    for xyz, element, b, occ in ATOMS:
        f = gemmi.Element(element).it92.calculate_sf(inv_d2 / 4)       # tabulated against (sin(theta)/lambda)^2
        for r, t in zip(ROTATIONS, TRANSLATIONS):
            x = r @ np.array(xyz) + t
            total += occ * f * math.exp(-b * inv_d2 / 4) * np.exp(2j * math.pi * (h @ x))
    return abs(total)


def _sphere(dmin):
    """Every (h, k, l) but (0, 0, 0) with d >= dmin in CELL."""
    n = [int(a / dmin) + 1 for a in CELL[:3]]
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in n], indexing="ij"), -1).reshape(-1, 3)
    inv_d2 = ((grid / np.array(CELL[:3])) ** 2).sum(axis=1)
    return {tuple(h) for h in grid[(inv_d2 <= 1 / dmin ** 2 * (1 + 1e-12)) & (grid != 0).any(axis=1)].tolist()}


# gemmi evaluates the form factors in single precision (3e-8 of one atom's f, measured):
# the direct route is 8.4e-8 of the mean |F| from this file's double-precision sum (measured);
# the FFT route's error is 3.2e-5 of the mean |F| (measured).  The bounds are about twice those.
@pytest.mark.parametrize("method, tolerance", [("direct", 2e-7), ("fft", 7e-5)])
def test_model_amplitudes_equal_the_direct_sum(tmp_path, method, tolerance):
    """Every P1 reflection to 4 A (some lie exactly at d = 4 A)."""
    refl = reflections.model_amplitudes(_write_pdb(tmp_path / "m.pdb"), 4.0, method=method)
    expected = np.array([_direct_sum(h) for h in refl.hkl])
    assert set(map(tuple, refl.hkl.tolist())) == _sphere(4.0)      # the whole sphere, F(000) aside
    error = np.abs(refl.amplitudes - expected).max() / expected.mean()
    print(method, "error / mean |F|:", error)
    assert error < tolerance, error
    # systematic absences are listed, with F = 0
    absent = [i for i, (h, k, l) in enumerate(refl.hkl.tolist()) if h == k == 0 and l % 2]
    assert absent and (refl.amplitudes[absent] == 0).all()
    assert expected[absent].max() < 1e-9 * expected.mean()


def test_model_through_the_command_line_writes_fdump(tmp_path):
    pdb = _write_pdb(tmp_path / "m.pdb")
    image, dump = _render(tmp_path, "a", ["-model", str(pdb), "-model_dmin", "5"])
    expected = reflections.hkl_table(reflections.model_amplitudes(pdb, 5.0), "m.pdb")
    assert np.array_equal(fileio.read_fdump(tmp_path / "a" / "Fdump.bin").values, expected.values)
    assert image.max() > 0
    # -hkl with a .pdb suffix is the same model; -dmin gives the resolution when -model_dmin is absent
    _, dump2 = _render(tmp_path, "b", ["-hkl", str(pdb), "-dmin", "5"])
    assert dump2 == dump


def test_model_errors(tmp_path):
    with pytest.raises(InputError, match="no unit cell"):
        reflections.model_amplitudes(_write_pdb(tmp_path / "nocell.pdb", cell=None), 3.0)
    (tmp_path / "empty.pdb").write_text("CRYST1   30.000   40.000   50.000  90.00  90.00  90.00 P 21 21 21\nEND\n")
    with pytest.raises(InputError, match="no atoms"):
        reflections.model_amplitudes(tmp_path / "empty.pdb", 3.0)
    with pytest.raises(InputError, match="resolution limit must be positive"):
        reflections.model_amplitudes(_write_pdb(tmp_path / "m.pdb"), 0.0)


def test_mmcif_model_is_recognised_by_its_content(tmp_path):
    pdb = _write_pdb(tmp_path / "m.pdb")
    st = gemmi.read_structure(str(pdb))
    st.setup_entities()
    st.make_mmcif_document().write_file(str(tmp_path / "m.cif"))
    from_cif = reflections.read_structure_factors(tmp_path / "m.cif", dmin=5.0)
    from_pdb = reflections.read_structure_factors(pdb, dmin=5.0)
    assert from_cif.from_model and np.allclose(from_cif.amplitudes, from_pdb.amplitudes, rtol=1e-12, atol=0)
    with pytest.raises(InputError, match="give its resolution limit"):
        reflections.read_structure_factors(tmp_path / "m.cif")


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

def test_cell_is_taken_from_the_file_without_cell_or_mat(tmp_path):
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU)])
    cfg = parse_args(["-hkl", str(mtz), "-N", "2"])
    assert cfg.user_cell and cfg.cell[:3] == pytest.approx(CELL[:3])
    assert cfg.cell[3:] == pytest.approx([math.pi / 2] * 3)
    assert any("taking the unit cell from" in note for note in cfg.header_notes)
    given = parse_args(["-hkl", str(mtz), "-cell", "31", "40", "50", "90", "90", "90"])
    assert given.cell[0] == pytest.approx(31.0)


def test_a_different_cell_is_warned_about(tmp_path, capsys):
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU)])
    os.chdir(tmp_path)
    rc, _, err = run_cli(capsys, ["-hkl", str(mtz), "-cell", "31", "40", "50", "90", "90", "90", "-N", "2",
                                  "-detpixels", "8", "-nonoise", "-nopgm", "-noprogress"])
    assert rc == 0 and "differs from -cell" in err and err.count("\n") == 1


def test_command_line_errors(tmp_path, capsys):
    os.chdir(tmp_path)
    mtz = _write_mtz(tmp_path / "x.mtz", [("FP", "F", F_ASU)])
    pdb = _write_pdb(tmp_path / "m.pdb")
    (tmp_path / "p1.hkl").write_text("1 2 3 4\n")
    run = ["-N", "2", "-detpixels", "8", "-noprogress"]
    expect_error(capsys, tmp_path, run + ["-hkl", str(mtz), "-hkl_column", "FOBS"], "no column 'FOBS'")
    expect_error(capsys, tmp_path, run + ["-model", str(pdb)], "-model_dmin")
    expect_error(capsys, tmp_path, run + ["-hkl", str(mtz), "-model", str(pdb), "-model_dmin", "3"],
                 "not both")
    expect_error(capsys, tmp_path, CELL_FLAGS + run + ["-hkl", "p1.hkl", "-hkl_column", "FP"],
                 "-hkl_column applies to MTZ and mmCIF")
    expect_error(capsys, tmp_path, run + ["-hkl", str(mtz), "-model_dmin", "3"], "-model_dmin applies")
    expect_error(capsys, tmp_path, run + ["-model", str(pdb), "-model_dmin", "-2"], "must be positive")
    expect_error(capsys, tmp_path, run + ["-model", str(tmp_path / "nope.pdb"), "-model_dmin", "3"], "nope.pdb")


def test_importing_the_package_does_not_import_gemmi():
    code = ("import sys, reference, reference.reflections, reference.structure_factors, reference.cli, "
            "reference.noise; assert 'gemmi' not in sys.modules, 'gemmi imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})
