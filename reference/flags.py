"""The nanoBragg command-line flags: spellings, value counts and effects.

The C program matches each argument against its handlers with substring
tests (``strstr``), so one spelling can trigger several handlers: for example
``-misset_seed 5`` also runs the ``-misset`` handler and ``-twotheta_axis``
also runs ``-twotheta``.  Every handler below therefore carries two
descriptions of when it fires:

* ``names``: the exact spellings that mean this flag (what the user intends);
* ``c_match``: the C program's own test on the argument.

In spec mode an argument runs only the handler whose ``names`` contain it; a
token that is no exact spelling is the flag of the one handler whose
``c_match`` (and ``c_need``) would accept it, as C would run it.
With ``-c_parity`` the arguments are replayed the C way: every handler whose
``c_match`` accepts the argument runs, in the C program's order, reading its
values with C's ``atof``/``atoi``.  The handler list is in the C order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from reference.errors import InputError

RTD = 180.0 * (1.0 / math.pi)   # C computes RTD as 180*M_1_PI

# --------------------------------------------------------------------------
# number conversion: strict for what the user typed, C-like for collisions
# --------------------------------------------------------------------------

_C_FLOAT = re.compile(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))", re.I | re.ASCII)
_C_INT = re.compile(r"\s*([+-]?\d+)", re.ASCII)
# What the strict converters accept: a plain decimal number, ASCII digits only.  Every
# such token reads the same through C's atof (so both modes see the same value).
# Python's float() also takes "1_000", surrounding white space and non-ASCII digits,
# which C's atof reads differently ("1_000" is 1) or not at all: those are refused.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.I)


def is_number(text: str) -> bool:
    """True when ``text`` is a plain decimal number, or inf or nan (so "-0.5" is a value, not a flag).

    Stricter than Python's float(): no '_' separators, no surrounding white
    space, ASCII digits only, as C's strtod reads numbers.
    """
    return _DECIMAL.fullmatch(text) is not None or _SPECIAL.fullmatch(text) is not None


def c_atof(text: str) -> float:
    """C's atof: the longest numeric prefix, 0.0 when there is none."""
    m = _C_FLOAT.match(text)
    return float(m.group(1)) if m else 0.0


def c_atoi(text: str) -> int:
    """C's atoi: the longest integer prefix, 0 when there is none."""
    m = _C_INT.match(text)
    return int(m.group(1)) if m else 0


def _python_reads(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class StrictNumbers:
    """Converters that reject anything but a well-formed finite number."""

    def __init__(self, flag: str):
        self.flag = flag

    def f(self, text: str) -> float:
        if _DECIMAL.fullmatch(text) is None:
            if _SPECIAL.fullmatch(text) is not None:
                raise InputError(f"{self.flag} expects a finite number, got '{text}'")
            if _python_reads(text):
                # "1_000", " 5", non-ASCII digits: Python would take them, C would not
                raise InputError(f"{self.flag} expects a plain decimal number, got {text!r} "
                                 f"(the C program would read it as {c_atof(text):g})")
            raise InputError(f"{self.flag} expects a number, got '{text}'")
        value = float(text)
        if not math.isfinite(value):
            raise InputError(f"{self.flag} expects a finite number, got '{text}' (beyond the double-precision range)")
        return value

    def i(self, text: str) -> int:
        value = self.f(text)
        if value != int(value):
            raise InputError(f"{self.flag} expects a whole number, got '{text}'")
        if c_atoi(text) != value:
            # "1e3": C's atoi stops at the 'e' and reads 1
            raise InputError(f"{self.flag} expects a whole number written in digits, got '{text}' "
                             f"(the C program would read it as {c_atoi(text)})")
        return int(value)


class CNumbers:
    """Converters with C's forgiving atof/atoi semantics."""

    @staticmethod
    def f(text: str) -> float:
        return c_atof(text)

    @staticmethod
    def i(text: str) -> int:
        return c_atoi(text)


# --------------------------------------------------------------------------
# handler table
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    """One handler of the command line."""

    names: tuple            # exact spellings that mean this flag
    nvalues: int            # values it takes; -6 for "one to six" (-cell)
    c_match: Callable       # the C program's test on the argument
    c_need: int             # C runs the handler only if argc > i + c_need
    action: Callable        # action(cfg, values, numbers)
    stop: bool = False      # C skips the remaining handlers for this argument
    help: str = ""          # what it does, with the unit of its values in parentheses
    ours: bool = False      # a flag the C program does not have
    default: str = ""       # what holds when the flag is not given, with its unit


def _has(*subs):
    return lambda a: any(s in a for s in subs)


def _has_len(sub, n):
    return lambda a: sub in a and len(a) == n


def _is(*names):
    return lambda a: a in names


FLAGS: list[Flag] = []


# What holds when a flag is not given, in command-line units (shown by -h).  The numbers
# are Config's defaults (tests/test_cli_input.py checks them); "auto" values follow the
# auto-selection rules of specs/cli.md.
DEFAULTS = {
    "-Na": "1", "-Nb": "1", "-Nc": "1", "-N": "1",
    "-cell": "none: give -cell or -mat (b, c = a and angles 90 when left out)",
    "-misset": "0 0 0 deg",
    "-samplesize": "0 mm (size from -N)", "-sample_thick": "0 mm (size from -Na)",
    "-sample_width": "0 mm (size from -Nb)", "-sample_height": "0 mm (size from -Nc)",
    "-xtalsize": "0 mm (size from -N)", "-xtal_thick": "0 mm (size from -Na)",
    "-xtal_width": "0 mm (size from -Nb)", "-xtal_height": "0 mm (size from -Nc)",
    "-density": "1 g/cm^3", "-MW": "18 g/mol",
    "-Xbeam": "detector centre (by convention)", "-Ybeam": "detector centre (by convention)",
    "-Xclose": "detector centre", "-Yclose": "detector centre",
    "-ORGX": "detector centre", "-ORGY": "detector centre",
    "-pivot": "beam (sample with -xds, -dials)",
    "-mosflm": "on", "-xds": "off", "-adxv": "off", "-denzo": "off", "-dials": "off",
    "-fdet_vector": "by convention", "-sdet_vector": "by convention", "-odet_vector": "by convention",
    "-beam_vector": "by convention", "-polar_vector": "by convention", "-spindle_axis": "by convention",
    "-twotheta_axis": "by convention", "-pix0_vector": "from the pivot",
    "-distance": "100 mm", "-close_distance": "from -distance",
    "-detector_abs": "the sensor thickness", "-detector_thick": "0 um (no sensor)",
    "-detector_thicksteps": "auto (2 with a sensor)", "-thicksteps": "auto (2 with a sensor)",
    "-twotheta": "0 deg",
    "-detector_rotx": "0 deg", "-detector_roty": "0 deg", "-detector_rotz": "0 deg",
    "-detsize": "102.4 mm", "-detsize_f": "102.4 mm", "-detsize_s": "102.4 mm",
    "-detpixels": "detector size / pixel size (1024)",
    "-detpixels_f": "detector size / pixel size (1024)", "-detpixels_s": "detector size / pixel size (1024)",
    "-curved_det": "off (flat)", "-pixel": "0.1 mm", "-point_pixel": "off",
    "-polar": "0", "-nopolar": "off",
    "-oversample_thick": "off", "-oversample_polar": "off", "-oversample_omega": "off",
    "-oversample": "auto (from crystal size, distance and pixel)", "-roi": "whole detector",
    "-lambda": "1 A", "-energy": "12398.42 eV (1 A)",
    "-fluence": "1.25932e+29 photons/m^2", "-flux": "0 photons/s (use -fluence)",
    "-exposure": "1 s", "-beamsize": "0.1 mm",
    "-mosaic": "0 deg", "-mosaic_dom": "1 (10 with -mosaic)",
    "-dispersion": "0 %", "-dispsteps": "auto (2 with -dispersion)",
    "-divergence": "0 mrad", "-hdivrange": "0 mrad", "-vdivrange": "0 mrad",
    "-hdivstep": "auto", "-hdivsteps": "auto (2 with -hdivrange)",
    "-vdivstep": "auto", "-vdivsteps": "auto (2 with -vdivrange)", "-divsteps": "auto",
    "-round_div": "on", "-square_div": "off",
    "-adc": "40 ADU",
    "-phi": "0 deg", "-osc": "auto (0 deg)", "-phistep": "auto", "-phisteps": "auto (1)",
    "-dmin": "0 A (no limit)",
    "-mat": "none", "-hkl": "none", "-default_F": "0 electrons", "-dump": "Fdump.bin",
    "-img": "none", "-mask": "none (every pixel)",
    "-stolout": "none", "-stol": "none", "-4stol": "none", "-Q": "none",
    "-sourcefile": "none (sources from divergence and dispersion)",
    "-floatfile": "floatimage.bin", "-intfile": "intimage.img", "-pgmfile": "image.pgm",
    "-noisefile": "noiseimage.img", "-nonoise": "off (noise image written)", "-nopgm": "off (PGM written)",
    "-scale": "auto: 55000 / brightest pixel", "-pgmscale": "auto: 250 / (5 rmsd)",
    "-coherent": "off", "-printout": "off", "-noprogress": "off", "-progress": "on",
    "-interpolate": "auto (on when any N <= 2)", "-nointerpolate": "auto (on when any N <= 2)",
    "-round_xtal": "off", "-square_xtal": "on", "-gauss_xtal": "off", "-binary_spots": "off",
    "-fudge": "1", "-printout_pixel": "every pixel (with -printout)",
    "-seed": "the clock", "-mosaic_seed": "12345678", "-misset_seed": "the clock",
    "-water": "0 um",
    "-model": "none", "-model_dmin": "the -dmin value", "-hkl_column": "auto (FP, F, FOBS, ...; IMEAN, I, ...)",
    "-engine": "numba", "-device": "cpu", "-dtype": "float64", "-c_parity": "off",
    "-trace_pixel": "none", "-memory_gb": "4 GB",
}


def flag(names, nvalues, c_match=None, c_need=None, stop=False, help="", ours=False):
    """Register the decorated action as a handler (in C order)."""
    names = (names,) if isinstance(names, str) else tuple(names)

    def register(action):
        FLAGS.append(Flag(names, nvalues, c_match or _is(*names),
                          nvalues if c_need is None else c_need, action, stop, help, ours,
                          DEFAULTS[names[0]]))
        return action
    return register


def _vec(values, n):
    return [n.f(values[0]), n.f(values[1]), n.f(values[2])]


# ---- crystal size in cells ----
@flag("-Na", 1, _has("-Na"), stop=True, help="unit cells along a")
def _(c, v, n): c.Na = float(n.i(v[0]))


@flag("-Nb", 1, _has("-Nb"), stop=True, help="unit cells along b")
def _(c, v, n): c.Nb = float(n.i(v[0]))


@flag("-Nc", 1, _has("-Nc"), stop=True, help="unit cells along c")
def _(c, v, n): c.Nc = float(n.i(v[0]))


@flag("-N", 1, _is("-N"), stop=True, help="unit cells along a, b and c")
def _(c, v, n): c.Na = c.Nb = c.Nc = float(n.i(v[0]))


@flag("-cell", -6, _has("-cell"), c_need=1, help="unit cell a b c alpha beta gamma (A, deg)")
def _(c, v, n):
    c.user_cell = True
    for j, text in enumerate(v[:6]):
        if text.startswith("-"):
            break
        c.cell[j] = n.f(text) if j < 3 else n.f(text) / RTD


@flag("-misset", 3, _has("-misset"), c_need=1, help="crystal rotations about x, y, z (deg), or 'random'")
def _misset(c, v, n):
    if len(v) >= 1 and "rand" in v[0]:
        c.misset_random = True
        c.misset = None
        return "stop"
    if len(v) < 3:
        return None
    c.misset_random = False
    c.misset = (n.f(v[0]) / RTD, n.f(v[1]) / RTD, n.f(v[2]) / RTD)
    return None


def _sample(attrs):
    def action(c, v, n):
        for a in attrs:
            setattr(c, a, n.f(v[0]) / 1000)
    return action


XYZ = ("sample_x", "sample_y", "sample_z")
flag(("-samplesize", "-sample_size"), 1, _has("-samplesize", "-sample_size"), help="crystal size (mm)")(_sample(XYZ))
flag(("-sample_thick", "-sample_x"), 1, _has("-sample_thick", "-sample_x"), help="crystal size along x (mm)")(_sample(("sample_x",)))
flag(("-sample_width", "-sample_y", "-width"), 1, _has("-sample_width", "-sample_y", "-width"), help="crystal size along y (mm)")(_sample(("sample_y",)))
flag(("-sample_height", "-sample_z", "-height"), 1, _has("-sample_heigh", "-sample_z", "-heigh"), help="crystal size along z (mm)")(_sample(("sample_z",)))
flag(("-xtalsize", "-xtal_size"), 1, _has("-xtalsize", "-xtal_size"), help="crystal size (mm)")(_sample(XYZ))
flag(("-xtal_thick", "-xtal_x"), 1, _has("-xtal_thick", "-xtal_x"), help="crystal size along x (mm)")(_sample(("sample_x",)))
flag(("-xtal_width", "-xtal_y"), 1, _has("-xtal_width", "-xtal_y", "-width"), help="crystal size along y (mm)")(_sample(("sample_y",)))
flag(("-xtal_height", "-xtal_z"), 1, _has("-xtal_heigh", "-xtal_z", "-heigh"), help="crystal size along z (mm)")(_sample(("sample_z",)))


@flag(("-density", "-sample_density"), 1, _has("-density", "-sample_den"), help="sample density (g/cm^3)")
def _(c, v, n): c.density = n.f(v[0]) * 1e6


@flag(("-MW", "-molecular_weight"), 1, lambda a: a == "-MW" or "-molec" in a, help="molecular weight (g/mol)")
def _(c, v, n): c.molecular_weight = n.f(v[0])


# ---- beam centre and pivots ----
def _centre(attr, pivot, scale=1000.0):
    def action(c, v, n):
        setattr(c, attr, n.f(v[0]) / scale)
        c.pivot = pivot
    return action


flag("-Xbeam", 1, _has("-Xbeam"), help="direct-beam fast coordinate (mm)")(_centre("Xbeam", "beam"))
flag("-Ybeam", 1, _has("-Ybeam"), help="direct-beam slow coordinate (mm)")(_centre("Ybeam", "beam"))
flag("-Xclose", 1, _has("-Xclose"), help="near-point fast coordinate (mm)")(_centre("Xclose", "sample"))
flag("-Yclose", 1, _has("-Yclose"), help="near-point slow coordinate (mm)")(_centre("Yclose", "sample"))
flag("-ORGX", 1, _has("-ORGX"), help="XDS origin, fast (pixels)")(_centre("ORGX", "sample", 1.0))
flag("-ORGY", 1, _has("-ORGY"), help="XDS origin, slow (pixels)")(_centre("ORGY", "sample", 1.0))


@flag("-pivot", 1, _has("-pivot"), help="detector pivot: sample or beam")
def _(c, v, n):
    if isinstance(n, StrictNumbers) and v[0] not in ("sample", "beam"):
        raise InputError(f"-pivot expects 'sample' or 'beam', got '{v[0]}'")
    if "sample" in v[0]:
        c.pivot = "sample"
    if "beam" in v[0]:
        c.pivot = "beam"


def _convention(name, pivot):
    def action(c, v, n):
        c.convention = name
        c.pivot = pivot
    return action


flag("-mosflm", 0, _has("-mosflm"), help="MOSFLM detector convention")(_convention("mosflm", "beam"))
flag("-xds", 0, _has("-xds"), help="XDS detector convention")(_convention("xds", "sample"))
flag("-adxv", 0, _has("-adxv"), help="ADXV detector convention")(_convention("adxv", "beam"))
flag("-denzo", 0, _has("-denzo"), help="DENZO detector convention")(_convention("denzo", "beam"))
flag("-dials", 0, _has("-dials"), help="DIALS detector convention")(_convention("dials", "beam"))


def _custom_vector(attr):
    def action(c, v, n):
        c.convention = "custom"
        setattr(c, attr, _vec(v, n))
    return action


for _name, _attr in (("-fdet_vector", "fdet_vector"), ("-sdet_vector", "sdet_vector"),
                     ("-odet_vector", "odet_vector"), ("-beam_vector", "beam_vector"),
                     ("-polar_vector", "polar_vector"), ("-spindle_axis", "spindle_vector"),
                     ("-twotheta_axis", "twotheta_axis"), ("-pix0_vector", "pix0_vector")):
    unit = "x y z, m" if _name == "-pix0_vector" else "x y z, normalised"
    flag(_name, 3, _has(_name), help=f"{_attr.replace('_', ' ')} ({unit})")(_custom_vector(_attr))


@flag("-distance", 1, _has("-distance"), help="sample to beam spot distance (mm)")
def _(c, v, n):
    c.distance = n.f(v[0]) / 1000.0
    c.pivot = "beam"


@flag("-close_distance", 1, _has("-close_distance"), help="sample to detector plane distance (mm)")
def _(c, v, n):
    c.close_distance = n.f(v[0]) / 1000.0
    c.pivot = "sample"


@flag(("-detector_abs", "-detector_absorb", "-detector_absorption"), 1, _has("-detector_abs"), c_need=0,
      help="sensor attenuation depth (um), or 'inf'")
def _(c, v, n):
    if "inf" in v[0] or n.f(v[0]) == 0.0:
        c.detector_thick = 0.0
        c.detector_mu = 0.0
    else:
        depth = n.f(v[0]) * 1e-6
        c.detector_mu = 1.0 / depth if depth != 0.0 else math.inf     # C: 1/0 is inf


@flag("-detector_thick", 1, _has_len("-detector_thick", 15), c_need=0, help="sensor thickness (um)")
def _(c, v, n): c.detector_thick = n.f(v[0]) * 1e-6


@flag("-detector_thicksteps", 1, _has("-detector_thicksteps"), c_need=0, help="sensor layers")
def _(c, v, n): c.detector_thicksteps = n.i(v[0])


@flag("-thicksteps", 1, _has("-thicksteps"), c_need=0, help="sensor layers")
def _(c, v, n): c.detector_thicksteps = n.i(v[0])


@flag("-twotheta", 1, _has("-twotheta"), help="detector two-theta swing (deg)")
def _(c, v, n):
    c.detector_twotheta = n.f(v[0]) / RTD
    c.pivot = "sample"


def _angle(attr):
    def action(c, v, n):
        setattr(c, attr, n.f(v[0]) / RTD)
    return action


for _axis in "xyz":
    flag(f"-detector_rot{_axis}", 1, _has(f"-detector_rot{_axis}"),
         help=f"detector rotation about {_axis} (deg)")(_angle(f"detector_rot{_axis}"))


@flag("-detsize", 1, _has_len("-detsize", 8), help="detector size (mm)")
def _(c, v, n): c.detsize_f = c.detsize_s = n.f(v[0]) / 1000.0


@flag("-detsize_f", 1, _has("-detsize_f"), help="detector fast size (mm)")
def _(c, v, n): c.detsize_f = n.f(v[0]) / 1000.0


@flag("-detsize_s", 1, _has("-detsize_s"), help="detector slow size (mm)")
def _(c, v, n): c.detsize_s = n.f(v[0]) / 1000.0


@flag("-detpixels", 1, _has_len("-detpixels", 10), help="detector size, both directions (pixels)")
def _(c, v, n): c.fpixels = c.spixels = n.i(v[0])


@flag(("-detpixels_f", "-detpixels_x"), 1, _has("-detpixels_f", "-detpixels_x"), help="detector fast size (pixels)")
def _(c, v, n): c.fpixels = n.i(v[0])


@flag(("-detpixels_s", "-detpixels_y"), 1, _has("-detpixels_s", "-detpixels_y"), help="detector slow size (pixels)")
def _(c, v, n): c.spixels = n.i(v[0])


@flag("-curved_det", 0, _has("-curved_det"), c_need=1, help="spherical detector surface")
def _(c, v, n): c.curved_detector = True


@flag("-pixel", 1, _has("-pixel"), help="pixel size (mm)")
def _(c, v, n): c.pixel_size = n.f(v[0]) / 1000.0


@flag("-point_pixel", 0, _has("-point_pixel"), help="solid angle 1/R^2, no obliquity")
def _(c, v, n): c.point_pixel = True


@flag("-polar", 1, _has_len("-polar", 6), help="Kahn polarization factor (0 to 1)")
def _(c, v, n):
    c.polarization = n.f(v[0])
    c.nopolar = False


@flag("-nopolar", 0, _has("-nopolar"), help="no polarization correction")
def _(c, v, n): c.nopolar = True


def _bool(attr, value=True):
    def action(c, v, n):
        setattr(c, attr, value)
    return action


flag("-oversample_thick", 0, _has("-oversample_thick"), stop=True, help="sensor absorption per sub-pixel")(_bool("oversample_thick"))
flag("-oversample_polar", 0, _has("-oversample_polar"), stop=True, help="polarization per sub-pixel")(_bool("oversample_polar"))
flag("-oversample_omega", 0, _has("-oversample_omega"), stop=True, help="solid angle per sub-pixel")(_bool("oversample_omega"))


@flag("-oversample", 1, _has("-oversample"), help="sub-pixels per pixel edge")
def _(c, v, n): c.oversample = n.i(v[0])


@flag("-roi", 4, _has("-roi"), help="render only xmin xmax ymin ymax (pixels)")
def _(c, v, n): c.roi = [n.i(x) for x in v[:4]]


@flag(("-lambda", "-wave", "-wavelength"), 1, _has("-lambda", "-wave"), help="wavelength (A)")
def _(c, v, n): c.lambda0 = n.f(v[0]) / 1.0e10


@flag("-energy", 1, _has("-energy"), help="photon energy (eV)")
def _(c, v, n): c.lambda0 = (12398.42 / n.f(v[0])) / 1.0e10


@flag("-fluence", 1, _has("-fluence"), help="integrated fluence (photons/m^2)")
def _(c, v, n): c.fluence = n.f(v[0])


@flag("-flux", 1, _has("-flux"), help="beam flux; with -exposure and -beamsize sets the fluence (photons/s)")
def _(c, v, n): c.flux = n.f(v[0])


@flag("-exposure", 1, _has("-exposure"), help="exposure time (s)")
def _(c, v, n): c.exposure = n.f(v[0])


@flag("-beamsize", 1, _has("-beamsize"), help="beam size (mm)")
def _(c, v, n): c.beamsize = n.f(v[0]) / 1000


@flag(("-mosaic", "-mosaicity", "-mosaic_spread"), 1,
      lambda a: ("-mosaic" in a and len(a) == 7) or "-mosaici" in a or "-mosaic_spr" in a,
      help="isotropic mosaic spread (deg)")
def _(c, v, n): c.mosaic_spread = n.f(v[0]) / RTD


@flag(("-mosaic_dom", "-mosaic_domains"), 1, _has("-mosaic_dom"), help="mosaic domains")
def _(c, v, n): c.mosaic_domains = n.i(v[0])


@flag("-dispersion", 1, _has("-dispersion"), help="spectral dispersion (percent)")
def _(c, v, n): c.dispersion = n.f(v[0]) / 100.0


@flag("-dispsteps", 1, _has("-dispsteps"), help="wavelengths in the dispersion")
def _(c, v, n): c.dispsteps = n.i(v[0])


@flag("-divergence", 1, _has("-divergence"), help="beam divergence, both directions (mrad)")
def _(c, v, n): c.hdivrange = c.vdivrange = n.f(v[0]) / 1000.0


@flag("-hdivrange", 1, _has("-hdivrange"), help="horizontal divergence (mrad)")
def _(c, v, n): c.hdivrange = n.f(v[0]) / 1000.0


@flag("-vdivrange", 1, _has("-vdivrange"), help="vertical divergence (mrad)")
def _(c, v, n): c.vdivrange = n.f(v[0]) / 1000.0


@flag("-hdivstep", 1, _has_len("-hdivstep", 9), help="horizontal divergence step (mrad)")
def _(c, v, n): c.hdivstep = n.f(v[0]) / 1000.0


@flag("-hdivsteps", 1, _has("-hdivsteps"), help="horizontal divergence steps")
def _(c, v, n): c.hdivsteps = n.i(v[0])


@flag("-vdivstep", 1, _has_len("-vdivstep", 9), help="vertical divergence step (mrad)")
def _(c, v, n): c.vdivstep = n.f(v[0]) / 1000.0


@flag("-vdivsteps", 1, _has("-vdivsteps"), help="vertical divergence steps")
def _(c, v, n): c.vdivsteps = n.i(v[0])


@flag("-divsteps", 1, _has("-divsteps"), help="divergence steps, both directions")
def _(c, v, n): c.hdivsteps = c.vdivsteps = n.i(v[0])


flag("-round_div", 0, _has("-round_div"), help="trim the divergence grid to an ellipse")(_bool("round_div", True))
flag("-square_div", 0, _has("-square_div"), help="full divergence grid")(_bool("round_div", False))


@flag("-adc", 1, _has("-adc"), help="offset added to the SMV pixels (ADU)")
def _(c, v, n): c.adc_offset = n.f(v[0])


@flag("-phi", 1, _has_len("-phi", 4), help="starting spindle angle (deg)")
def _(c, v, n): c.phi0 = n.f(v[0]) / RTD


@flag("-osc", 1, _has("-osc"), help="oscillation range (deg)")
def _(c, v, n): c.osc = n.f(v[0]) / RTD


@flag("-phistep", 1, _has_len("-phistep", 8), help="spindle step (deg)")
def _(c, v, n): c.phistep = n.f(v[0]) / RTD


@flag("-phisteps", 1, _has("-phisteps"), help="spindle steps")
def _(c, v, n): c.phisteps = n.i(v[0])


@flag("-dmin", 1, _has("-dmin"), help="resolution limit (A)")
def _(c, v, n): c.dmin = n.f(v[0]) * 1e-10


def _path(attr, also=None):
    def action(c, v, n):
        setattr(c, attr, v[0])
        if also:
            setattr(c, also[0], also[1])
    return action


flag("-mat", 1, _has("-mat"), help="MOSFLM orientation matrix file")(_path("mat_file"))
flag("-hkl", 1, _has("-hkl"), help="structure factors: h k l F text file, or MTZ, mmCIF, PDB")(_path("hkl_file"))


@flag("-default_F", 1, _has("-default_F"), help="structure factor of unlisted reflections (electrons)")
def _(c, v, n): c.default_F = n.f(v[0])


flag("-dump", 1, _has("-dump"), help="binary structure-factor cache file")(_path("dump_file"))
flag("-img", 1, _has("-img"), help="SMV image whose header sets the geometry")(_path("img_file"))
# -mask is read before every other flag (as is -img); C's main loop has no handler for it
flag("-mask", 1, lambda a: False, help="SMV mask: zero pixels are skipped; its header sets the geometry")(_path("mask_file"))


@flag("-stolout", 1, lambda a: "-stolout" in a and len(a) > 7, help="(accepted, unused)")
def _(c, v, n): pass


@flag("-stol", 1, _has_len("-stol", 5), help="amorphous F vs sin(theta)/lambda file (read, unused by C)")
def _(c, v, n):
    c.stol_file, c.stol_file_mult = v[0], 1e10


@flag("-4stol", 1, _has_len("-4stol", 6), help="as -stol, in 4 sin(theta)/lambda")
def _(c, v, n):
    c.stol_file, c.stol_file_mult = v[0], 1e10 / 4


@flag("-Q", 1, _has_len("-Q", 2), help="as -stol, in Q")
def _(c, v, n):
    c.stol_file, c.stol_file_mult = v[0], 1e10 / math.pi / 4


flag("-sourcefile", 1, _has("-sourcefile"), help="source list: X Y Z [weight [lambda]]")(_path("source_file"))
flag(("-floatfile", "-floatimage"), 1, _has("-floatfile", "-floatimage"), help="raw float32 output")(_path("floatfile"))
flag(("-intfile", "-intimage"), 1, _has("-intfile", "-intimage"), help="SMV output, scaled")(_path("intfile"))
flag(("-pgmfile", "-pgmimage"), 1, _has("-pgmfile", "-pgmimage"), help="8-bit PGM output")(_path("pgmfile", ("write_pgm", True)))
flag(("-noisefile", "-noiseimage"), 1, _has("-noisefile", "-noiseimage"), help="SMV output with Poisson noise")(_path("noisefile", ("calculate_noise", True)))
flag("-nonoise", 0, _has("-nonoise"), help="no noise image")(_bool("calculate_noise", False))
flag("-nopgm", 0, _has("-nopgm"), help="no PGM image")(_bool("write_pgm", False))


@flag("-scale", 1, _has("-scale"), help="int image scale (ADU per photon)")
def _(c, v, n): c.intfile_scale = n.f(v[0])


@flag("-pgmscale", 1, _has("-pgmscale"), help="PGM scale (grey levels per photon)")
def _(c, v, n):
    c.pgm_scale = n.f(v[0])
    c.write_pgm = True


flag("-coherent", 0, _has("-coherent"), help="(accepted, unused by C)")(_bool("coherent"))
flag("-printout", 0, _has("-printout"), help="print pixel values")(_bool("printout"))
flag("-noprogress", 0, _has("-noprogress"), help="no progress bar")(_bool("progress", False))
flag("-progress", 0, _has("-progress"), help="progress bar")(_bool("progress", True))
flag("-interpolate", 0, _has("-interpolate"), help="tricubic structure-factor interpolation")(lambda c, v, n: setattr(c, "interpolate", 1))
flag("-nointerpolate", 0, _has("-nointerpolate"), help="nearest structure factor")(lambda c, v, n: setattr(c, "interpolate", 0))
flag("-round_xtal", 0, _has("-round_xtal"), help="ellipsoidal crystal")(lambda c, v, n: setattr(c, "xtal_shape", "round"))
flag("-square_xtal", 0, _has("-square_xtal"), help="parallelepiped crystal")(lambda c, v, n: setattr(c, "xtal_shape", "square"))
flag("-gauss_xtal", 0, _has("-gauss_xtal"), help="Gaussian spots")(lambda c, v, n: setattr(c, "xtal_shape", "gauss"))
flag(("-binary_spots", "-tophat_spots"), 0, _has("-binary_spots", "-tophat_spots"), help="flat-top spots")(lambda c, v, n: setattr(c, "xtal_shape", "tophat"))


@flag("-fudge", 1, _has("-fudge"), help="spot-shape fudge factor (dimensionless)")
def _(c, v, n): c.fudge = n.f(v[0])


@flag("-printout_pixel", 2, _has("-printout_pixel"), help="print one pixel: fast slow (pixels)")
def _(c, v, n):
    c.printout_pixel = (n.i(v[0]), n.i(v[1]))
    c.printout = True


@flag("-seed", 1, _has("-seed"), help="noise seed")
def _(c, v, n): c.seed = -n.i(v[0])


@flag("-mosaic_seed", 1, _has("-mosaic_seed"), help="mosaic-domain seed")
def _(c, v, n): c.mosaic_seed = -n.i(v[0])


@flag("-misset_seed", 1, _has("-misset_seed"), help="random-orientation seed")
def _(c, v, n): c.misset_seed = -n.i(v[0])


@flag("-water", 1, _has("-water"), help="water background thickness (um)")
def _(c, v, n): c.water_size = n.f(v[0]) / 1e6


# ---- ours ----
def _choice(attr, choices):
    def action(c, v, n):
        if v[0] not in choices:
            raise InputError(f"-{attr} expects one of {', '.join(choices)}, got '{v[0]}'")
        setattr(c, attr, v[0])
    return action


flag("-engine", 1, ours=True, help="numba (reference) or torch")(_choice("engine", ("numba", "torch")))
flag("-device", 1, ours=True, help="cpu or cuda (torch engine)")(_choice("device", ("cpu", "cuda")))
flag("-dtype", 1, ours=True, help="float64 or float32 (torch engine)")(_choice("dtype", ("float64", "float32")))
flag("-c_parity", 0, ours=True, help="emulate the verified C bugs (see specs/quirks.md)")(_bool("c_parity"))


@flag("-trace_pixel", 2, ours=True, help="print every intermediate of one pixel: slow fast (pixels)")
def _(c, v, n): c.trace_pixel = (n.i(v[0]), n.i(v[1]))


flag("-model", 1, ours=True, help="coordinate model (PDB or mmCIF) whose structure factors are computed")(
    _path("hkl_file", ("hkl_from_model", True)))


@flag("-model_dmin", 1, ours=True, help="resolution limit of the structure factors computed from -model (A)")
def _(c, v, n):
    c.model_dmin = n.f(v[0]) * 1e-10
    if not c.model_dmin > 0:
        raise InputError("-model_dmin must be positive")


@flag("-hkl_column", 1, ours=True, help="column of amplitudes or intensities in an MTZ or mmCIF -hkl file")
def _(c, v, n): c.hkl_column = v[0]


@flag("-memory_gb", 1, ours=True, help="memory budget of the torch engine (GB)")
def _(c, v, n):
    c.memory_gb = n.f(v[0])
    if c.memory_gb <= 0:
        raise InputError("-memory_gb must be positive")


BY_NAME = {name: f for f in FLAGS for name in f.names}
