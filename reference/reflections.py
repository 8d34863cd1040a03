"""Structure factors from the files crystallographers have, through gemmi.

nanoBragg reads one table of amplitudes |F(h,k,l)| for the whole sphere of
reflections (it applies no symmetry of its own).  Besides its HKL text files
(:func:`reference.fileio.read_hkl`), this module gives that table from

* **MTZ** and **mmCIF** reflection files (``-hkl data.mtz``, ``-hkl r1abcsf.cif``):
  one column of amplitudes, or of intensities converted to amplitudes with
  ``F = sqrt(max(I, 0))`` (no French-Wilson treatment: a negative intensity
  gives F = 0);
* **coordinate models** (``-model model.pdb`` or ``.cif``, or ``-hkl model.pdb``):
  amplitudes computed by gemmi's direct summation to a resolution limit.

Either way the reflections of the file's asymmetric unit are expanded to P1
with the space group's rotations and to their Friedel mates (|F(-h)| =
|F(h)|: no anomalous scattering), and the result is the same
:class:`~reference.fileio.HKLTable` the text reader returns, written to the
Fdump cache as before.

gemmi is imported inside the functions that need it, so that importing the
package never imports gemmi.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from reference.errors import InputError, warn

MTZ_SUFFIXES = (".mtz",)
CIF_SUFFIXES = (".cif", ".mmcif", ".cif.gz", ".mmcif.gz")
MODEL_SUFFIXES = (".pdb", ".ent", ".pdb.gz", ".ent.gz")

# The columns taken when -hkl_column is not given, in order of preference.
# MTZ column types: F amplitude, J intensity (G, K: their anomalous halves).
MTZ_AMPLITUDES = ("FP", "F", "FOBS", "F-obs", "F_obs", "FMEAN", "F-obs-filtered")
MTZ_INTENSITIES = ("IMEAN", "I", "IOBS", "I-obs", "I_obs")
CIF_AMPLITUDES = ("F_meas_au", "F_meas", "F_calc_au", "F_calc")
CIF_INTENSITIES = ("intensity_meas", "intensity_calc")

_MTZ_KINDS = {"F": "amplitude", "J": "intensity"}
_MTZ_ANOMALOUS = {"G": "anomalous amplitude F(+)/F(-)", "K": "anomalous intensity I(+)/I(-)",
                  "D": "anomalous difference", "L": "anomalous difference"}


@dataclass
class Reflections:
    """Amplitudes expanded to P1, as nanoBragg's table wants them.

    ``hkl`` is an int64 (n, 3) array, every reflection with its Friedel mate
    and symmetry equivalents; ``amplitudes`` the (n,) |F| (electrons).
    ``cell`` is the file's unit cell (a, b, c in A; alpha, beta, gamma in
    degrees); ``space_group`` its Hermann-Mauguin symbol; ``unique`` the
    number of reflections read or computed before the expansion;
    ``description`` says what was taken (a column, or the model and its
    resolution).
    """

    hkl: np.ndarray
    amplitudes: np.ndarray
    cell: tuple
    space_group: str
    unique: int
    description: str
    from_model: bool = False


# ---------------------------------------------------------------------------
# What kind of file
# ---------------------------------------------------------------------------

def source_kind(path: str, model: bool = False) -> str:
    """``"model"``, ``"mtz"``, ``"cif"`` (reflections or model: its content decides) or ``"text"``.

    ``model`` is True for ``-model``; otherwise the suffix decides, and any
    suffix not listed here is an HKL text file, as for the C program.
    """
    if model:
        return "model"
    lower = os.fspath(path).lower()
    if lower.endswith(MTZ_SUFFIXES):
        return "mtz"
    if lower.endswith(MODEL_SUFFIXES):
        return "model"
    if lower.endswith(CIF_SUFFIXES):
        return "cif"
    return "text"


def _gemmi():
    try:
        import gemmi
    except ImportError:
        raise InputError("reading MTZ, mmCIF or PDB files needs gemmi (pip install 'nanobragg[dataset]')") from None
    return gemmi


def _check_readable(path) -> str:
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise InputError(f"{name}: no such file" if not os.path.exists(name) else f"{name}: not a file")
    if not os.access(name, os.R_OK):
        raise InputError(f"{name}: not readable")
    return name


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------
# Symmetry: from the asymmetric unit to P1
# ---------------------------------------------------------------------------

def expand_to_p1(hkl: np.ndarray, amplitudes: np.ndarray, space_group) -> tuple[np.ndarray, np.ndarray]:
    """Every symmetry equivalent and Friedel mate of each reflection, with its amplitude.

    ``space_group`` is a gemmi SpaceGroup.  A rotation R of the group (in
    fractional coordinates) maps reflection h (a row vector) to h R, whose
    amplitude is the same; the Friedel mate -h has it too.  Equivalents that
    coincide (centric or special reflections, centring) appear once.  When
    the input lists two equivalents with different amplitudes, the one
    listed later wins, as in the HKL text reader.

    Returns (hkl int64 (m, 3), amplitudes float64 (m,)).
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    # the rotation parts, in units of 1/DEN (centring repeats them: kept once)
    rotations = sorted({(tuple(map(tuple, op.rot)), op.DEN) for op in space_group.operations()})
    images_h, images_f = [], []
    for rot, den in rotations:
        r = np.array(rot, dtype=np.int64) // den
        images_h += [hkl @ r, -(hkl @ r)]
        images_f += [amplitudes, amplitudes]
    # order: every image of reflection 0, then of reflection 1, ... so "later wins" follows the input
    all_h = np.stack(images_h, axis=1).reshape(-1, 3)
    all_f = np.stack(images_f, axis=1).reshape(-1)
    _, last = np.unique(all_h[::-1], axis=0, return_index=True)
    keep = np.sort(len(all_h) - 1 - last)
    return all_h[keep], all_f[keep]


def _cell_tuple(cell) -> tuple:
    return (cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma)


def _check_cell(cell, name, where):
    if not cell.is_crystal() or min(cell.a, cell.b, cell.c) <= 0.0:
        raise InputError(f"{name}: no unit cell ({where})")


def _format_cell(cell: tuple) -> str:
    return "%g %g %g %g %g %g" % tuple(cell)


# ---------------------------------------------------------------------------
# MTZ
# ---------------------------------------------------------------------------

def _pick_mtz_column(mtz, column, name):
    labels = [c.label for c in mtz.columns]
    if column is not None:
        col = mtz.column_with_label(column)
        if col is None:
            raise InputError(f"{name}: no column '{column}' (columns: {', '.join(labels)})")
        if col.type in _MTZ_ANOMALOUS:
            raise InputError(f"{name}: column '{column}' is an {_MTZ_ANOMALOUS[col.type]} (MTZ type {col.type}); "
                             "nanoBragg has no anomalous scattering: choose a mean amplitude (type F) or "
                             "intensity (type J) column")
        if col.type not in _MTZ_KINDS:
            raise InputError(f"{name}: column '{column}' has MTZ type {col.type}, neither an amplitude (F) "
                             "nor an intensity (J)")
        return col
    for wanted_type, preferred in (("F", MTZ_AMPLITUDES), ("J", MTZ_INTENSITIES)):
        of_type = [c for c in mtz.columns if c.type == wanted_type]
        for label in preferred:
            for c in of_type:
                if c.label == label:
                    return c
        if len(of_type) == 1:
            return of_type[0]
        if of_type:
            raise InputError(f"{name}: several {_MTZ_KINDS[wanted_type]} columns "
                             f"({', '.join(c.label for c in of_type)}): choose one with -hkl_column")
    raise InputError(f"{name}: no amplitude (type F) or intensity (type J) column (columns: {', '.join(labels)})")


def read_mtz(path, column: str | None = None) -> Reflections:
    """Amplitudes from one column of a merged MTZ file, expanded to P1.

    ``column`` names the column; None takes the first of
    :data:`MTZ_AMPLITUDES` present, else the only amplitude column, else the
    same for intensities.  Missing values (NaN in MTZ) are left out: those
    reflections take ``-default_F``.
    """
    gemmi = _gemmi()
    name = _check_readable(path)
    try:
        mtz = gemmi.read_mtz_file(name)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{name}: not a readable MTZ file ({_one_line(exc)})") from None
    if mtz.column_with_label("M/ISYM") is not None or len(mtz.batches) > 0:
        raise InputError(f"{name}: unmerged reflections (an M/ISYM column or batches); merge them first")
    if mtz.spacegroup is None:
        raise InputError(f"{name}: no space group")
    _check_cell(mtz.cell, name, "the MTZ cell is not a crystal cell")
    col = _pick_mtz_column(mtz, column, name)
    values = np.array(col.array, dtype=np.float64)
    hkl = np.asarray(mtz.make_miller_array(), dtype=np.int64)
    return _finish(hkl, values, _MTZ_KINDS[col.type], mtz.spacegroup, _cell_tuple(mtz.cell), name,
                   f"column {col.label}")


def _finish(hkl, values, kind, space_group, cell, name, what) -> Reflections:
    """Drop missing values, turn intensities into amplitudes, expand to P1."""
    present = np.isfinite(values)
    hkl, values = hkl[present], values[present]
    if len(values) == 0:
        raise InputError(f"{name}: {what} holds no values")
    if kind == "intensity":
        amplitudes = np.sqrt(np.maximum(values, 0.0))
    else:
        if (values < 0).any():
            raise InputError(f"{name}: {what} holds negative amplitudes; is it an amplitude column?")
        amplitudes = values
    if not (hkl != 0).any(axis=1).all():
        keep = (hkl != 0).any(axis=1)          # F(000) has no place in a reflection file's table
        hkl, amplitudes = hkl[keep], amplitudes[keep]
    full_h, full_f = expand_to_p1(hkl, amplitudes, space_group)
    label = "intensities, F = sqrt(max(I, 0))" if kind == "intensity" else "amplitudes"
    return Reflections(full_h, full_f, cell, space_group.hm, len(values), f"{what} ({label})")


# ---------------------------------------------------------------------------
# mmCIF reflections
# ---------------------------------------------------------------------------

def _cif_kind(tag: str, name: str) -> str:
    low = tag.lower()
    if "plus" in low or "minus" in low or "anom" in low:
        raise InputError(f"{name}: column '{tag}' holds anomalous data; nanoBragg has no anomalous scattering: "
                         "choose a mean amplitude or intensity column")
    if low.startswith("intensity") or low.startswith("i_") or low.startswith("pdbx_i_"):
        return "intensity"
    if low.startswith("f_") or low.startswith("pdbx_f_"):
        return "amplitude"
    raise InputError(f"{name}: cannot tell whether column '{tag}' holds amplitudes or intensities "
                     "(expected a name like F_meas_au or intensity_meas)")


def _cif_document(name):
    gemmi = _gemmi()
    try:
        return gemmi.cif.read(name)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{name}: not a readable CIF file ({_one_line(exc)})") from None


def _has_reflections(doc) -> bool:
    return any(block.find_mmcif_category("_refln.") for block in doc)


def read_cif_reflections(path, column: str | None = None, doc=None) -> Reflections:
    """Amplitudes from an mmCIF reflection file (``_refln`` loop), expanded to P1.

    The first data block with a ``_refln`` loop (and the column) is used.
    ``column`` is a ``_refln`` tag (with or without ``_refln.``); None takes
    the first of :data:`CIF_AMPLITUDES`, then of :data:`CIF_INTENSITIES`.
    Values written ``?`` or ``.`` are left out.
    """
    gemmi = _gemmi()
    name = _check_readable(path)
    doc = _cif_document(name) if doc is None else doc
    blocks = [rb for rb in gemmi.as_refln_blocks(doc) if rb.default_loop is not None]
    if not blocks:
        raise InputError(f"{name}: no reflections (no _refln loop)")
    wanted = None if column is None else column.removeprefix("_refln.")
    for rb in blocks:
        labels = list(rb.column_labels())
        if wanted is not None:
            if wanted not in labels:
                continue
            tag = wanted
        else:
            tag = next((t for t in CIF_AMPLITUDES + CIF_INTENSITIES if t in labels), None)
            if tag is None:
                continue
        kind = _cif_kind(tag, name)
        if rb.spacegroup is None:
            raise InputError(f"{name}: no space group (_symmetry.space_group_name_H-M or _space_group)")
        _check_cell(rb.cell, name, "no _cell lengths and angles")
        values = np.array(rb.make_float_array(tag), dtype=np.float64)
        hkl = np.asarray(rb.make_miller_array(), dtype=np.int64)
        return _finish(hkl, values, kind, rb.spacegroup, _cell_tuple(rb.cell), name, f"column {tag}")
    labels = sorted({t for rb in blocks for t in rb.column_labels()})
    if wanted is not None:
        raise InputError(f"{name}: no column '{wanted}' in _refln (columns: {', '.join(labels)})")
    raise InputError(f"{name}: no amplitude or intensity column in _refln (columns: {', '.join(labels)}); "
                     "choose one with -hkl_column")


# ---------------------------------------------------------------------------
# Coordinate models
# ---------------------------------------------------------------------------

def _read_structure(name, doc=None):
    gemmi = _gemmi()
    try:
        if doc is not None:
            structure = gemmi.make_structure_from_block(doc[0])
        else:
            known = name.lower().endswith(MODEL_SUFFIXES + CIF_SUFFIXES)
            # -model with another suffix: gemmi tells PDB from mmCIF by the content
            structure = gemmi.read_structure(name, format=gemmi.CoorFormat.Unknown if known
                                             else gemmi.CoorFormat.Detect)
    except (RuntimeError, ValueError, OSError, IndexError) as exc:
        raise InputError(f"{name}: not a readable coordinate file ({_one_line(exc)})") from None
    if len(structure) == 0 or not any(True for _ in _atoms(structure[0])):
        raise InputError(f"{name}: no atoms")
    _check_cell(structure.cell, name, "no CRYST1 record or _cell category")
    space_group = structure.find_spacegroup()
    if space_group is None:
        raise InputError(f"{name}: unknown space group '{structure.spacegroup_hm}'")
    structure.setup_cell_images()
    return structure, space_group


def _atoms(model):
    for chain in model:
        for residue in chain:
            yield from residue


#: Above this many atom-image-reflection terms a model's amplitudes come from an FFT
#: of its electron density instead of the direct sum (the direct sum costs about
#: 0.1 us a term, so the limit is some tens of seconds).
DIRECT_SUM_TERMS = 2.0e8

# gemmi's density calculation for the FFT route: grid spacing dmin / (2 rate),
# atoms rendered out to where their density falls to cutoff
_FFT_RATE = 2.0
_FFT_CUTOFF = 1.0e-6


def model_amplitudes(path, dmin: float, doc=None, method: str = "auto") -> Reflections:
    """|F| computed from the first model of a PDB or mmCIF coordinate file, to ``dmin`` (A).

    Every reflection of the space group's asymmetric unit with d >= dmin is
    computed from every atom and its symmetry mates:
    ``F(h) = sum_j occ_j f_j(s) exp(-B_j s^2 / 4) exp(2 pi i h.x_j)``, with
    s = 1/d, f_j the neutral-atom X-ray form factor (International Tables
    4-Gaussian fit) and the atom's isotropic B (or its anisotropic U when
    the file gives one).  Hydrogens and alternative conformations count as
    written (with their occupancies).  Ignored: bulk solvent, anomalous
    scattering (f', f''), charges, and F(000).  Systematic absences within
    the sphere are listed with F = 0.

    ``method``: ``"direct"`` sums the formula above (gemmi's
    StructureFactorCalculatorX); ``"fft"`` Fourier-transforms the electron
    density gemmi renders on a grid (DensityCalculatorX), much faster for
    large structures and accurate to a small fraction of the mean |F|
    (tests/test_reflections.py measures it); ``"auto"`` takes the direct sum
    up to :data:`DIRECT_SUM_TERMS` terms.
    """
    gemmi = _gemmi()
    name = _check_readable(path)
    if not (dmin > 0.0 and math.isfinite(dmin)):
        raise InputError(f"{name}: the resolution limit must be positive, got {dmin!r}")
    structure, space_group = _read_structure(name, doc)
    cell = structure.cell
    # reflections at d = dmin are in or out by rounding, and differently for equivalents:
    # compute a hair beyond the limit, and list the absences a hair within it
    unique = np.asarray(gemmi.make_miller_array(cell, space_group, dmin * (1 - 1e-9), 0.0, True), dtype=np.int64)
    if len(unique) == 0:
        raise InputError(f"{name}: no reflection within {dmin:g} A for this cell")
    model = structure[0]
    atoms = sum(1 for _ in _atoms(model))
    terms = atoms * (1 + len(cell.images)) * len(unique)
    if method == "auto":
        method = "direct" if terms <= DIRECT_SUM_TERMS else "fft"
    try:
        if method == "direct":
            amplitudes = _direct_amplitudes(gemmi, structure, unique)
        else:
            amplitudes = _fft_amplitudes(gemmi, structure, unique, dmin)
    except RuntimeError as exc:       # e.g. an element without a form factor
        raise InputError(f"{name}: {_one_line(exc)}") from None
    hkl, amplitudes = expand_to_p1(unique, amplitudes, space_group)
    # the absences: every P1 reflection of the sphere that no equivalent reached is 0
    sphere = np.asarray(gemmi.make_miller_array(cell, gemmi.SpaceGroup("P 1"), dmin * (1 + 1e-9), 0.0, False),
                        dtype=np.int64)
    hkl = np.concatenate([sphere, hkl])
    amplitudes = np.concatenate([np.zeros(len(sphere)), amplitudes])     # later (computed) entries win
    _, last = np.unique(hkl[::-1], axis=0, return_index=True)
    keep = np.sort(len(hkl) - 1 - last)
    return Reflections(hkl[keep], amplitudes[keep], _cell_tuple(cell), space_group.hm, len(unique),
                       f"amplitudes of {atoms} atoms to {dmin:g} A ({method})", from_model=True)


def _direct_amplitudes(gemmi, structure, unique) -> np.ndarray:
    calculator = gemmi.StructureFactorCalculatorX(structure.cell)
    model = structure[0]
    return np.array([abs(calculator.calculate_sf_from_model(model, [int(i) for i in h])) for h in unique])


def _fft_amplitudes(gemmi, structure, unique, dmin) -> np.ndarray:
    """|F| of ``unique`` from the FFT of the model's density (gemmi's blurred-atom method, unblurred)."""
    density = gemmi.DensityCalculatorX()
    density.d_min = dmin
    density.rate = _FFT_RATE
    density.cutoff = _FFT_CUTOFF
    # a little extra B on every atom keeps the grid coarse; it is divided out below
    density.set_refmac_compatible_blur(structure[0])
    density.grid.setup_from(structure)
    density.put_model_density_on_grid(structure[0])
    coefficients = np.array(gemmi.transform_map_to_f_phi(density.grid, half_l=False), copy=False)
    n = coefficients.shape
    values = coefficients[unique[:, 0] % n[0], unique[:, 1] % n[1], unique[:, 2] % n[2]]
    inv_d2 = structure.cell.calculate_1_d2_array(unique.astype(np.int32))
    return np.abs(values).astype(np.float64) * np.exp(density.blur * 0.25 * inv_d2)


# ---------------------------------------------------------------------------
# The front door
# ---------------------------------------------------------------------------

def read_structure_factors(path, column: str | None = None, model: bool = False,
                           dmin: float | None = None) -> Reflections:
    """Amplitudes in P1 from an MTZ, mmCIF or coordinate file (see :func:`source_kind`).

    ``column`` applies to reflection files, ``dmin`` (A) to models.  An
    mmCIF file holds reflections when it has a ``_refln`` loop, else a model.
    """
    name = os.fspath(path)
    kind = source_kind(name, model)
    if kind == "text":
        raise InputError(f"{name}: not an MTZ, mmCIF or coordinate file")
    doc = None
    if kind == "cif":
        doc = _cif_document(_check_readable(name))
        kind = "reflections" if _has_reflections(doc) else "model"
    if kind == "mtz":
        return read_mtz(name, column)
    if kind == "reflections":
        return read_cif_reflections(name, column, doc)
    if column is not None:
        raise InputError(f"-hkl_column applies to reflection files; {name} is a coordinate model")
    if dmin is None:
        raise InputError(f"{name} is a coordinate model: give its resolution limit with -model_dmin (A) or -dmin")
    return model_amplitudes(name, dmin, doc)


def hkl_table(refl: Reflections, name: str):
    """The dense :class:`~reference.fileio.HKLTable` of expanded reflections."""
    from reference import fileio
    return fileio.hkl_table(refl.hkl, refl.amplitudes, name)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

def model_dmin_angstrom(cfg) -> float | None:
    """The resolution limit for a model, A: -model_dmin, else -dmin, else None."""
    if cfg.model_dmin > 0.0:
        return cfg.model_dmin * 1e10
    if cfg.dmin > 0.0:
        return cfg.dmin * 1e10
    return None


def check_options(cfg) -> None:
    """Refuse -hkl_column and -model_dmin where they cannot apply; a model needs a resolution."""
    kind = None if cfg.hkl_file is None else source_kind(cfg.hkl_file, cfg.hkl_from_model)
    if cfg.hkl_column is not None and kind not in ("mtz", "cif"):
        raise InputError("-hkl_column applies to MTZ and mmCIF reflection files"
                         + ("" if cfg.hkl_file is None else f", not {cfg.hkl_file}"))
    if cfg.model_dmin != 0.0 and kind not in ("model", "cif"):
        raise InputError("-model_dmin applies to a coordinate model (-model)")
    if kind == "model" and model_dmin_angstrom(cfg) is None:
        raise InputError(f"{cfg.hkl_file} is a coordinate model: give its resolution limit with "
                         "-model_dmin (A) or -dmin")


def file_cell(cfg) -> tuple | None:
    """The unit cell (A, degrees) that -hkl or -model's file gives, or None for a text file."""
    kind = None if cfg.hkl_file is None else source_kind(cfg.hkl_file, cfg.hkl_from_model)
    if kind in (None, "text"):
        return None
    gemmi = _gemmi()
    name = _check_readable(cfg.hkl_file)
    if kind == "mtz":
        try:
            mtz = gemmi.read_mtz_file(name, with_data=False)
        except (RuntimeError, ValueError, OSError) as exc:
            raise InputError(f"{name}: not a readable MTZ file ({_one_line(exc)})") from None
        _check_cell(mtz.cell, name, "the MTZ cell is not a crystal cell")
        return _cell_tuple(mtz.cell)
    if kind == "cif":
        doc = _cif_document(name)
        if _has_reflections(doc):
            blocks = [rb for rb in gemmi.as_refln_blocks(doc) if rb.default_loop is not None]
            _check_cell(blocks[0].cell, name, "no _cell lengths and angles")
            return _cell_tuple(blocks[0].cell)
        structure, _ = _read_structure(name, doc)
        return _cell_tuple(structure.cell)
    structure, _ = _read_structure(name)
    return _cell_tuple(structure.cell)


def adopt_file_cell(cfg) -> None:
    """Without -cell or -mat, take the unit cell from an MTZ, mmCIF or model file.

    Sets ``cfg.cell`` (A and radians, as -cell does) and adds a line saying
    so to the notes printed when the run starts.
    """
    if cfg.user_cell or cfg.mat_file is not None:
        return
    cell = file_cell(cfg)
    if cell is None:
        return
    cfg.cell = [cell[0], cell[1], cell[2]] + [math.radians(x) for x in cell[3:]]
    cfg.user_cell = True
    cfg.header_notes.append(f"taking the unit cell from {cfg.hkl_file}: {_format_cell(cell)}")


def warn_if_cell_differs(cfg, refl: Reflections) -> None:
    """A warning when -cell differs from the file's cell (0.5% in a length, 0.5 degree in an angle)."""
    if not cfg.user_cell or cfg.mat_file is not None:
        return
    given = tuple(cfg.cell[:3]) + tuple(math.degrees(x) for x in cfg.cell[3:])
    lengths = any(abs(g - f) > 0.005 * f for g, f in zip(given[:3], refl.cell[:3]))
    angles = any(abs(g - f) > 0.5 for g, f in zip(given[3:], refl.cell[3:]))
    if lengths or angles:
        warn(f"the unit cell of {cfg.hkl_file} ({_format_cell(refl.cell)}) differs from -cell "
             f"({_format_cell(given)}): its structure factors are placed on -cell's lattice",
             topic="cell differs")


def load_table(cfg, log):
    """The HKLTable of -hkl/-model's MTZ, mmCIF or coordinate file, with a log line on what was read."""
    name = os.fspath(cfg.hkl_file)
    log("reading structure factors from %s" % name)
    refl = read_structure_factors(name, cfg.hkl_column, cfg.hkl_from_model, model_dmin_angstrom(cfg))
    log("  %s: %d reflections in %s, %d in P1 with Friedel mates"
        % (refl.description, refl.unique, refl.space_group, len(refl.amplitudes)))
    if cfg.model_dmin != 0.0 and not refl.from_model:
        raise InputError(f"-model_dmin applies to a coordinate model; {name} holds reflections")
    warn_if_cell_differs(cfg, refl)
    return hkl_table(refl, name)
