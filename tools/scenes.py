"""Random whole scenes for nanoBragg-compatible programs, as hypothesis strategies.

One generator serves the parity tool (``nanobragg-parity``) and the test
suite's engine cross-check.  A drawn :class:`Scene` is a command line (the C
program's flags) plus the small input files it names (HKL tables, Fdump
caches, MOSFLM matrices, source lists, SMV headers and masks, amorphous
``stol`` tables), which :meth:`Scene.materialize` writes into an empty folder
before the scene runs.  Nothing here runs a simulation.

Every flag family the C program parses can appear; each family is drawn as
"absent or present", so hypothesis shrinks a failing scene towards the
fewest families.  Two profiles bound the cost: ``quick`` keeps detectors and
step counts small (CI), ``thorough`` widens every range.

Numbers are written with ``%g``-style formatting at a drawn precision, so
long header values (which once overflowed the SMV header) occur too.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

PROFILES = ("quick", "thorough")

# the families a scene can draw, in the order they are drawn (names used in reports)
FAMILIES = (
    "crystal_cell", "crystal_matrix", "misset", "misset_random", "crystal_size", "spot_shape",
    "hkl_file", "hkl_interpolation", "fdump_reuse", "default_F", "wavelength", "fluence",
    "detector_size", "pixel_size", "distance", "beam_centre", "convention", "pivot",
    "custom_vectors", "pix0_vector", "detector_rotation", "twotheta", "pixel_model",
    "sensor_layers", "oversample", "oversample_flags", "divergence", "dispersion", "source_file",
    "phi", "mosaic", "polarization", "roi", "dmin", "water", "img_header", "mask", "stol",
    "noise", "int_scale", "adc", "pgm", "spellings",
)

# output files every scene asks for (names relative to the scene's folder)
FLOAT_FILE, INT_FILE, NOISE_FILE, PGM_FILE = "float.bin", "int.img", "noise.img", "image.pgm"


@dataclass
class Scene:
    """A command line and the input files it reads.

    ``tokens`` are the C program's flags (no program name), output flags
    included; ``files`` maps a file name (relative to the scene's folder) to
    its bytes; ``families`` lists the flag families the scene uses.
    """

    tokens: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    families: list = field(default_factory=list)

    def command(self) -> str:
        """The flags as one shell-quoted string."""
        import shlex
        return " ".join(shlex.quote(t) for t in self.tokens)

    def materialize(self, folder) -> None:
        """Write the scene's input files into ``folder`` (which should be empty)."""
        os.makedirs(folder, exist_ok=True)
        for name, data in self.files.items():
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)

    def to_json(self) -> dict:
        """A JSON-ready dict: text files as text, binary ones (Fdump, SMV) in base64."""
        text, binary = {}, {}
        for name, data in self.files.items():
            try:
                decoded = data.decode("ascii")
                if all(c.isprintable() or c in "\n\t" for c in decoded):
                    text[name] = decoded
                    continue
            except UnicodeDecodeError:
                pass
            binary[name] = base64.b64encode(data).decode("ascii")
        return {"tokens": list(self.tokens), "families": list(self.families), "files": text,
                "binary_files": binary}

    @classmethod
    def from_json(cls, data: dict) -> "Scene":
        files = {k: v.encode("ascii") for k, v in data.get("files", {}).items()}
        files.update({k: base64.b64decode(v) for k, v in data.get("binary_files", {}).items()})
        return cls(list(data["tokens"]), files, list(data.get("families", [])))


# --------------------------------------------------------------------------
# numbers as the command line spells them
# --------------------------------------------------------------------------

def _text(x: float, digits: int) -> str:
    text = f"{x:.{digits}g}"
    return "0" if text in ("-0", "-0.0") else text


@st.composite
def number(draw, lo: float, hi: float, digits=None) -> str:
    """A finite number in [lo, hi], as text with 3 to 6 significant digits."""
    x = draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    d = digits if digits is not None else draw(st.sampled_from([4, 3, 6]))
    return _text(x, d)


def whole(lo: int, hi: int):
    return st.integers(lo, hi).map(str)


# --------------------------------------------------------------------------
# input files
# --------------------------------------------------------------------------

def _hkl_text(rng: np.random.Generator, span: int, fill: float, layout: str) -> bytes:
    """An HKL table: h k l F for |h|,|k|,|l| <= span, a fraction ``fill`` present."""
    rows = []
    for h in range(-span, span + 1):
        for k in range(-span, span + 1):
            for l in range(-span, span + 1):
                if rng.random() < fill:
                    rows.append(f"{h} {k} {l} {rng.uniform(1, 100):.3f}")
    if not rows:
        rows.append(f"0 0 0 {rng.uniform(1, 100):.3f}")
    if layout == "pairs":       # two reflections per line: C reads a stream of numbers
        lines = [" ".join(rows[i:i + 2]) for i in range(0, len(rows), 2)]
    else:
        lines = rows
    return ("\n".join(lines) + "\n").encode()


def _fdump_bytes(hkl_text: bytes, default_F: float) -> bytes:
    """The Fdump cache C would have written after reading ``hkl_text``."""
    import tempfile
    from reference import fileio
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "F.hkl")
        dst = os.path.join(tmp, "Fdump.bin")
        with open(src, "wb") as fh:
            fh.write(hkl_text)
        table = fileio.fill_default(fileio.read_hkl(src), default_F)
        fileio.write_fdump(dst, table)
        with open(dst, "rb") as fh:
            return fh.read()


def _rotation(angles) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, then y, then z."""
    out = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        r = np.eye(3)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def _mosflm_matrix_text(cell, angles, wavelength_A: float) -> bytes:
    """A MOSFLM matrix file: rows of (a*, b*, c*) x components times lambda, then y, z; then the cell."""
    a, b, c, al, be, ga = cell
    al, be, ga = (math.radians(x) for x in (al, be, ga))
    # real-space vectors in a standard frame (a along x, b in the xy plane)
    av = np.array([a, 0.0, 0.0])
    bv = np.array([b * math.cos(ga), b * math.sin(ga), 0.0])
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz = math.sqrt(max(c * c - cx * cx - cy * cy, 1e-6))
    cv = np.array([cx, cy, cz])
    rot = _rotation(angles)
    av, bv, cv = rot @ av, rot @ bv, rot @ cv
    volume = float(np.dot(av, np.cross(bv, cv)))
    recip = [np.cross(bv, cv) / volume, np.cross(cv, av) / volume, np.cross(av, bv) / volume]
    lines = []
    for i in range(3):
        lines.append("".join("%14.8f" % (recip[j][i] * wavelength_A) for j in range(3)))
    lines.append("%14.8f%14.8f%14.8f" % (0, 0, 0))
    lines.append("".join("%14.8f" % x for x in cell))
    return ("\n".join(lines) + "\n").encode()


def _smv_bytes(width: int, height: int, fields: list, pixels: np.ndarray) -> bytes:
    """An SMV file (header fields given as (key, value) pairs) holding ``pixels``."""
    from reference import fileio
    head = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", "little_endian"),
            ("TYPE", "unsigned_short"), ("SIZE1", width), ("SIZE2", height)] + fields
    return fileio.format_smv_header(head) + np.ascontiguousarray(pixels, dtype="<u2").tobytes()


# --------------------------------------------------------------------------
# the scene
# --------------------------------------------------------------------------

def _limits(profile: str) -> dict:
    if profile == "thorough":
        return dict(pixels=(6, 32), oversample=3, steps=4, domains=5, span=6, thick=4)
    return dict(pixels=(6, 14), oversample=2, steps=3, domains=3, span=4, thick=3)


@st.composite
def scenes(draw, profile: str = "quick", outputs: bool = True) -> Scene:
    """A whole scene: crystal, structure factors, beam, detector, sweep, outputs.

    ``outputs`` adds the output-file flags (float, int, noise, optional PGM);
    the engine cross-check, which renders in-process, leaves them out.
    """
    lim = _limits(profile)
    args: list = []
    files: dict = {}
    used: list = []

    def family(name: str, p: float = 0.5) -> bool:
        """Draw whether ``name`` is in the scene, with probability about ``p``.

        The draw shrinks towards 0, which means 'absent', so hypothesis
        shrinks a failing scene to the fewest families.
        """
        present = draw(st.integers(0, 999)) >= round((1 - p) * 1000)
        if present:
            used.append(name)
        return present

    seed_rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    wavelength = float(draw(st.floats(0.8, 2.5)))

    # ---- crystal: a cell on the command line, or a MOSFLM matrix file ----
    kind = draw(st.sampled_from(["cubic", "orthorhombic", "monoclinic", "triclinic"]))
    a = draw(st.floats(20, 80))
    if kind == "cubic":
        cell = (a, a, a, 90.0, 90.0, 90.0)
    else:
        lengths = (a, draw(st.floats(20, 80)), draw(st.floats(20, 80)))
        if kind == "orthorhombic":
            angles = (90.0, 90.0, 90.0)
        elif kind == "monoclinic":
            angles = (90.0, draw(st.floats(95, 120)), 90.0)
        else:
            angles = tuple(draw(st.floats(70, 110)) for _ in range(3))
        cell = lengths + angles
    cell = tuple(float(_text(x, 4)) for x in cell)
    if family("crystal_matrix", 0.2):
        orient = [draw(st.floats(-math.pi, math.pi)) for _ in range(3)]
        files["A.mat"] = _mosflm_matrix_text(cell, orient, wavelength)
        args += ["-mat", "A.mat"]
    else:
        used.append("crystal_cell")
        args += ["-cell"] + [_text(x, 4) for x in cell]

    if family("misset", 0.4):
        args += ["-misset", draw(number(-180, 180)), draw(number(-90, 90)), draw(number(-180, 180))]
    elif family("misset_random", 0.2):
        args += ["-misset", "random", "-misset_seed", draw(whole(1, 10000))]

    # ---- crystal size and spot shape ----
    if family("crystal_size", 0.8):
        if draw(st.booleans()):
            args += ["-N", draw(whole(1, 8))]
        else:
            args += ["-Na", draw(whole(1, 6)), "-Nb", draw(whole(1, 6)), "-Nc", draw(whole(1, 6))]
    shape = draw(st.sampled_from(["", "-round_xtal", "-gauss_xtal", "-tophat_spots", "-square_xtal"]))
    if shape:
        used.append("spot_shape")
        args += [shape]
        if shape != "-square_xtal" and draw(st.booleans()):
            args += ["-fudge", draw(number(0.5, 2))]

    # ---- structure factors ----
    default_F = draw(number(0, 20)) if draw(st.booleans()) else None
    if family("hkl_file", 0.35):
        text = _hkl_text(seed_rng, draw(st.integers(2, lim["span"])), draw(st.floats(0.5, 1.0)),
                         draw(st.sampled_from(["lines", "pairs"])))
        files["F.hkl"] = text
        args += ["-hkl", "F.hkl"]
        if family("hkl_interpolation", 0.6):
            args += [draw(st.sampled_from(["-interpolate", "-nointerpolate"]))]
    elif family("fdump_reuse", 0.25):
        text = _hkl_text(seed_rng, draw(st.integers(2, lim["span"])), 0.8, "lines")
        files["Fdump.bin"] = _fdump_bytes(text, float(default_F or 0.0))
    if "hkl_file" not in used and "fdump_reuse" not in used:
        default_F = draw(number(1, 100))         # the only structure factor: not zero
    if default_F is not None:
        used.append("default_F")
        args += ["-default_F", default_F]

    # ---- beam ----
    if family("wavelength", 0.9) or "crystal_matrix" in used:
        if "wavelength" not in used:
            used.append("wavelength")
        if draw(st.integers(0, 4)) == 0:
            args += ["-energy", _text(12398.42 / wavelength, 6)]
        else:
            args += [draw(st.sampled_from(["-lambda", "-lambda", "-wavelength"])), _text(wavelength, 4)]
    if family("fluence", 0.15):
        if draw(st.booleans()):
            args += ["-fluence", draw(number(1e20, 1e26))]
        else:
            args += ["-flux", draw(number(1e10, 1e14)), "-exposure", draw(number(0.01, 2)),
                     "-beamsize", draw(number(0.01, 0.2))]

    # ---- detector ----
    fpix = spix = draw(st.integers(*lim["pixels"]))
    if family("detector_size", 0.2):
        spix = draw(st.integers(*lim["pixels"]))
        args += ["-detpixels_f", str(fpix), "-detpixels_s", str(spix)]
    else:
        args += ["-detpixels", str(fpix)]
    pixel = draw(st.floats(0.5, 2.0))
    if family("pixel_size", 0.9):
        args += ["-pixel", _text(pixel, draw(st.sampled_from([3, 4, 6])))]
    else:
        pixel = 0.1
    if family("distance", 0.9):
        if draw(st.integers(0, 5)) == 0:
            args += ["-close_distance", draw(number(30, 120))]
        else:
            args += ["-distance", draw(number(30, 120))]
    if family("beam_centre", 0.3):
        span = pixel * min(fpix, spix)
        pair = draw(st.sampled_from([("-Xbeam", "-Ybeam"), ("-Xclose", "-Yclose"), ("-ORGX", "-ORGY")]))
        hi = span if pair[0] != "-ORGX" else min(fpix, spix)
        args += [pair[0], draw(number(0, hi)), pair[1], draw(number(0, hi))]
    if family("convention", 0.4):
        args += [draw(st.sampled_from(["-mosflm", "-xds", "-adxv", "-denzo", "-dials"]))]
    if family("custom_vectors", 0.2):
        # small tilts of the MOSFLM axes keep the frame non-degenerate
        tilt = _rotation([draw(st.floats(-0.2, 0.2)) for _ in range(3)])
        base = {"-fdet_vector": (0, 0, 1), "-sdet_vector": (0, -1, 0), "-odet_vector": (1, 0, 0),
                "-beam_vector": (1, 0, 0), "-polar_vector": (0, 0, 1), "-spindle_axis": (0, 0, 1)}
        for name, vec in base.items():
            if draw(st.booleans()):
                v = tilt @ np.array(vec, float) if name.startswith(("-f", "-s", "-o")) else np.array(vec, float)
                args += [name] + [_text(x, 6) for x in v]
    if family("pivot", 0.3):
        args += ["-pivot", draw(st.sampled_from(["sample", "beam"]))]
    if family("pix0_vector", 0.15):
        args += ["-pix0_vector", draw(number(0.03, 0.1)), draw(number(-0.01, 0.01)), draw(number(-0.01, 0.01))]
    if family("detector_rotation", 0.3):
        for axis in "xyz":
            if draw(st.booleans()):
                args += [f"-detector_rot{axis}", draw(number(-10, 10))]
    if family("twotheta", 0.35):
        args += ["-twotheta", draw(number(-20, 20))]
        if draw(st.integers(0, 3)) == 0:
            args += ["-twotheta_axis", "0", draw(st.sampled_from(["1", "-1"])), "0"]
    if family("pixel_model", 0.2):
        args += [draw(st.sampled_from(["-curved_det", "-point_pixel"]))]
    if family("sensor_layers", 0.2):
        args += ["-detector_abs", draw(number(50, 500)), "-detector_thick", draw(number(50, 500)),
                 draw(st.sampled_from(["-thicksteps", "-detector_thicksteps"])), draw(whole(1, lim["thick"]))]
    if family("oversample", 0.5):
        args += ["-oversample", draw(whole(1, lim["oversample"]))]
    if family("oversample_flags", 0.25):
        # without a sensor, -oversample_thick zeroes C's image (quirk (l)): such scenes prove little
        names = ("-oversample_omega", "-oversample_polar") + (("-oversample_thick",) if "sensor_layers" in used else ())
        for name in names:
            if draw(st.booleans()):
                args.append(name)

    # ---- sources ----
    if family("divergence", 0.2):
        if draw(st.booleans()):
            args += ["-hdivrange", draw(number(0.5, 3)), "-vdivrange", draw(number(0.5, 3)),
                     "-hdivsteps", draw(whole(1, lim["steps"])), "-vdivsteps", draw(whole(1, lim["steps"]))]
        else:
            args += ["-divergence", draw(number(0.5, 3)), "-divsteps", draw(whole(1, lim["steps"]))]
        if draw(st.booleans()):
            args += [draw(st.sampled_from(["-round_div", "-square_div"]))]
    if family("dispersion", 0.2):
        args += ["-dispersion", draw(number(0.5, 5)), "-dispsteps", draw(whole(1, lim["steps"]))]
    if family("source_file", 0.2):
        rows = []
        for _ in range(draw(st.integers(1, 4))):
            cols = ["-10", _text(draw(st.floats(-0.003, 0.003)), 3), _text(draw(st.floats(-0.003, 0.003)), 3)]
            extra = draw(st.integers(0, 2))
            if extra >= 1:
                cols.append(_text(draw(st.floats(0.2, 2)), 3))
            if extra == 2:
                cols.append(_text(wavelength * draw(st.floats(0.97, 1.03)) * 1e-10, 6))
            rows.append(" ".join(cols))
        files["sources.txt"] = ("\n".join(rows) + "\n").encode()
        args += ["-sourcefile", "sources.txt"]

    # ---- rotation ----
    if family("phi", 0.3):
        args += ["-phi", draw(st.sampled_from(["0", "1", "-2", "12.34"])), "-osc", draw(number(0.5, 5))]
        if draw(st.booleans()):
            args += ["-phisteps", draw(whole(1, lim["steps"]))]
        else:
            args += ["-phistep", draw(number(0.5, 3))]
    if family("mosaic", 0.25):
        args += ["-mosaic", draw(number(0.1, 2)), "-mosaic_dom", draw(whole(1, lim["domains"])),
                 "-mosaic_seed", draw(whole(1, 100))]

    # ---- per-pixel factors and cuts ----
    if family("polarization", 0.25):
        if draw(st.integers(0, 3)) == 0:
            args += ["-nopolar"]
        else:
            args += ["-polar", draw(number(0, 1))]
    if family("roi", 0.2):
        lo = draw(st.integers(0, fpix - 1))
        args += ["-roi", str(lo), str(draw(st.integers(lo, fpix))), str(draw(st.integers(0, spix - 1))), str(spix)]
    if family("dmin", 0.2):
        args += ["-dmin", draw(number(1, 5))]
    if family("water", 0.25):
        args += ["-water", draw(number(1, 50))]

    # ---- SMV headers that set the geometry ----
    # their size is the detector's: C indexes a mask with the final detector size
    width, height = fpix, spix
    if family("img_header", 0.15):
        fields = [("PIXEL_SIZE", draw(number(0.1, 1))), ("DISTANCE", draw(number(40, 120))),
                  ("WAVELENGTH", _text(wavelength, 4))]
        if draw(st.booleans()):
            fields += [("BEAM_CENTER_X", draw(number(0, 3))), ("BEAM_CENTER_Y", draw(number(0, 3)))]
        if draw(st.booleans()):
            fields += [("PHI", draw(number(0, 10))), ("OSC_RANGE", draw(number(0.1, 2)))]
        if draw(st.booleans()):
            fields += [("TWOTHETA", draw(number(0, 10)))]
        files["header.img"] = _smv_bytes(width, height, fields, np.zeros((height, width)))
        args += ["-img", "header.img"]
    if family("mask", 0.15):
        fields = [("PIXEL_SIZE", draw(number(0.1, 1))), ("DISTANCE", draw(number(40, 120)))]
        mask = (seed_rng.random((height, width)) > 0.2).astype(np.uint16)
        files["mask.img"] = _smv_bytes(width, height, fields, mask)
        args += ["-mask", "mask.img"]
    if family("stol", 0.15):
        files["water.stol"] = b"0 2.57\n0.0365 2.58\n0.0547 2.8\n0.1 3.2\n0.2 2.9\n0.5 1.8\n"
        args += ["-stol", "water.stol"]

    # ---- outputs ----
    if family("noise", 0.9):
        args += ["-seed", draw(whole(-20, 100000))]
    else:
        args += ["-nonoise"]
    if family("int_scale", 0.15):
        args += ["-scale", draw(number(0.1, 100))]
    if family("adc", 0.15):
        args += ["-adc", draw(number(0, 100))]
    pgm = family("pgm", 0.2)
    if pgm and draw(st.booleans()):
        args += ["-pgmscale", draw(number(0.5, 50))]
    if family("spellings", 0.2):
        # synonyms the C program's substring matching accepts
        swaps = {"-lambda": "-wave", "-detpixels_f": "-detpixels_x", "-detpixels_s": "-detpixels_y",
                 "-mosaic": "-mosaicity", "-mosaic_dom": "-mosaic_domains", "-thicksteps": "-detector_thicksteps",
                 "-tophat_spots": "-binary_spots", "-detector_abs": "-detector_absorption",
                 # not flag names, but C's substring matching reads them as one flag each
                 "-mat": "-matrix", "-hkl": "-hklfile", "-sourcefile": "-sourcefiles"}
        args = [swaps.get(t, t) for t in args]
    if outputs:
        args += ["-floatfile", FLOAT_FILE, "-intfile", INT_FILE]
        if "noise" in used:
            args += ["-noisefile", NOISE_FILE]
        args += ["-pgmfile", PGM_FILE] if pgm else ["-nopgm"]
    return Scene(args, files, used)
