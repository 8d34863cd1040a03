"""From a :class:`Config` to a fully derived scene: detector, crystal, sources.

This is the set-up stage of the C program, step for step and in its order,
which is also the order of the lines it prints and of the errors it stops
at (:func:`build_scene` runs the stages):

* the request: :func:`detector_size`, :func:`fluence_and_sample`,
  :func:`region_of_interest`;
* the detector's frame by convention (axes, beam, pivot, beam centre):
  :func:`detector_frame`;
* sampling: phi steps, :func:`divergence_and_dispersion`,
  :func:`sensor_layers`, :func:`mosaic_domain_count`;
* detector placement by pivot, rotations and two-theta:
  :func:`place_detector`;
* the crystal: :func:`interpolation_choice`, the unit cell and its
  orientation (:func:`reference.crystal.build_cell`), :func:`crystal_size`,
  :func:`oversampling`;
* structure factors (:mod:`reference.structure_factors`), sources
  (:mod:`reference.sources`) and mosaic domains
  (:func:`reference.crystal.mosaic_domain_matrices`);
* fluence and background: :func:`water_background`;
* the summary C prints: :func:`echo_summary`.

All lengths are metres, angles radians, reciprocal lengths per metre unless
a name says otherwise.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from reference import vectors as V
from reference.config import Config
from reference.errors import InputError
from reference.flags import RTD

AVOGADRO = 6.02214179e23
R_E_SQR = 7.94079248018965e-30          # Thomson cross section (m^2)
WATER_F = 2.57                          # forward structure factor of water
WATER_MW = 18.0
SOURCE_DISTANCE = 10.0                  # m, for generated sources
DBL_MIN = 2.2250738585072014e-308
C_INT_MAX = 2**31 - 1                   # the C program counts pixels and steps in int
SHAPE_CODE = {"square": 0, "round": 1, "gauss": 2, "tophat": 3}


@dataclass
class Scene:
    """Every derived quantity the kernel and the outputs need."""

    cfg: Config
    parity: bool
    # detector
    fpixels: int = 0
    spixels: int = 0
    pixel_size: float = 0.0
    detsize_f: float = 0.0
    detsize_s: float = 0.0
    distance: float = 0.0
    close_distance: float = 0.0
    fdet: tuple = ()
    sdet: tuple = ()
    odet: tuple = ()
    beam: tuple = ()
    polar_vector: tuple = ()
    spindle: tuple = ()
    pix0: tuple = ()
    Xbeam: float = 0.0
    Ybeam: float = 0.0
    Fbeam: float = 0.0
    Sbeam: float = 0.0
    Xclose: float = 0.0
    Yclose: float = 0.0
    Fclose: float = 0.0
    Sclose: float = 0.0
    ORGX: float = 0.0
    ORGY: float = 0.0
    dials_origin: tuple = ()
    twotheta: float = 0.0
    roi: tuple = ()
    thick: float = 0.0
    thickstep: float = 0.0
    thicksteps: int = 1
    mu: float = 0.0
    # crystal (direct vectors in metres, reciprocal in 1/Angstrom)
    a0: tuple = ()
    b0: tuple = ()
    c0: tuple = ()
    a_star: tuple = ()
    b_star: tuple = ()
    c_star: tuple = ()
    V_cell: float = 0.0
    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    oversample: int = 1
    interpolate: int = 0
    # structure factors
    Fhkl: np.ndarray = None
    hkl_min: tuple = (0, 0, 0)
    hkl_max: tuple = (0, 0, 0)
    hkls: int = 0
    # sampling
    phi0: float = 0.0
    osc: float = 0.0
    phistep: float = 0.0
    phisteps: int = 1
    sources: np.ndarray = None           # (n, 3) unit vectors from sample to source
    source_lambda: np.ndarray = None     # (n,) metres
    source_weight: np.ndarray = None     # (n,) as read or generated
    mosaic_umats: np.ndarray = None      # (m, 9)
    mosaic_spread: float = 0.0
    steps: int = 1
    fluence: float = 0.0
    I_bg: float = 0.0
    lambda0: float = 1e-10
    dispersion: float = 0.0
    divsteps: int = 1
    hdivrange: float = 0.0
    hdivstep: float = 0.0
    vdivrange: float = 0.0
    vdivstep: float = 0.0
    seed: int = 0
    # generator states (int64 arrays, see reference.rng): the mosaic stream as
    # it starts, and what the set-up streams left for the noise stream (None:
    # the noise stream gets a table of its own, spec mode)
    mosaic_stream: np.ndarray = None
    rng_table: np.ndarray = None
    misset: tuple = (0.0, 0.0, 0.0)      # radians, as applied to the reciprocal cell
    # the detector before rotation, for engines that re-derive the placement
    convention: str = "mosflm"
    pivot: str = "beam"
    fdet0: tuple = ()
    sdet0: tuple = ()
    odet0: tuple = ()
    twotheta_axis: tuple = ()
    pivot_F: float = 0.0                 # Fbeam (beam pivot) or Fclose (sample pivot) used for pix0
    pivot_S: float = 0.0
    placement_distance: float = 0.0      # the distance (m) the pivot formula used
    lines: list = field(default_factory=list)


class _Log:
    """Collects the summary lines (C's stdout) and optionally echoes them."""

    def __init__(self, echo):
        self.echo = echo
        self.lines = []

    def __call__(self, text=""):
        self.lines.append(text)
        if self.echo:
            print(text)


# --------------------------------------------------------------------------
# the request, the detector's size and the beam's fluence
# --------------------------------------------------------------------------

def _check_basic(cfg: Config) -> None:
    """Reject requests that cannot describe a detector or a beam."""
    if cfg.pixel_size <= 0:
        raise InputError("-pixel must be positive")
    if cfg.fpixels < 0 or cfg.spixels < 0:
        raise InputError("-detpixels must be positive")
    if (cfg.fpixels == 0 and cfg.detsize_f <= 0) or (cfg.spixels == 0 and cfg.detsize_s <= 0):
        raise InputError("-detsize must be positive")
    if cfg.lambda0 <= 0:
        raise InputError("wavelength must be positive (-lambda/-energy)")
    if cfg.oversample == 0:
        raise InputError("-oversample must be positive")
    if cfg.user_cell and cfg.cell[0] <= 0:
        raise InputError("-cell lengths must be positive")
    # read the other input files now, so that a bad one stops the run before Fdump.bin is written
    from reference.fileio import read_source_file
    for path in (cfg.source_file, cfg.stol_file):
        if path is not None:
            read_source_file(path, c_parity=cfg.c_parity)


class DetectorSize(NamedTuple):
    fpixels: int
    spixels: int
    detsize_f: float          # m
    detsize_s: float          # m


def detector_size(cfg: Config) -> DetectorSize:
    """Pixels along the fast and slow axes: -detpixels, or -detsize over -pixel (C's rounding)."""
    pixel = cfg.pixel_size
    detsize_f, detsize_s = cfg.detsize_f, cfg.detsize_s
    if cfg.fpixels:
        detsize_f = pixel * cfg.fpixels
    if cfg.spixels:
        detsize_s = pixel * cfg.spixels
    fpixels = math.ceil(detsize_f / pixel - 0.5)
    spixels = math.ceil(detsize_s / pixel - 0.5)
    if fpixels <= 0 or spixels <= 0:
        raise InputError(f"detector has no pixels ({fpixels} x {spixels}); check -detpixels/-detsize/-pixel")
    if fpixels * spixels > C_INT_MAX:
        raise InputError(f"detector of {fpixels} x {spixels} pixels is too large (more than 2^31 pixels)")
    if cfg.mask_image is not None and cfg.mask_image.shape != (spixels, fpixels):
        raise InputError(f"mask {cfg.mask_file} is {cfg.mask_image.shape[1]}x{cfg.mask_image.shape[0]} pixels "
                         f"but the detector is {fpixels}x{spixels}: the mask's header sets the detector size, "
                         f"so leave out -detpixels/-detsize")
    return DetectorSize(fpixels, spixels, detsize_f, detsize_s)


def fluence_and_sample(cfg: Config, log) -> tuple:
    """(fluence in photons/m^2, sample size (x, y, z) in m, clipped to the beam).

    -flux x -exposure / -beamsize^2 replaces -fluence; a beam narrower than
    the sample illuminates only its width (C clips y and z, with a warning).
    """
    fluence, flux, exposure, beamsize = cfg.fluence, cfg.flux, cfg.exposure, cfg.beamsize
    sample_x, sample_y, sample_z = cfg.sample_x, cfg.sample_y, cfg.sample_z
    if flux != 0.0 and exposure > 0.0 and beamsize == 0.0:
        raise InputError("-beamsize must be positive when -flux sets the fluence")
    if flux != 0.0 and exposure > 0.0 and beamsize >= 0:
        fluence = flux * exposure / beamsize / beamsize
    if beamsize >= 0:
        if beamsize < sample_y:
            log("WARNING: clipping sample (%g m high) with beam (%g m)" % (sample_y, beamsize))
            sample_y = beamsize
        if beamsize < sample_z:
            log("WARNING: clipping sample (%g m wide) with beam (%g m)" % (sample_z, beamsize))
            sample_z = beamsize
    return fluence, (sample_x, sample_y, sample_z)


def region_of_interest(cfg: Config, size: DetectorSize) -> tuple:
    """(xmin, xmax, ymin, ymax) in pixels, inclusive; an unset bound is the detector's edge."""
    roi = list(cfg.roi)
    roi[0] = 0 if roi[0] < 0 else roi[0]
    roi[1] = size.fpixels if roi[1] < 0 else roi[1]
    roi[2] = 0 if roi[2] < 0 else roi[2]
    roi[3] = size.spixels if roi[3] < 0 else roi[3]
    if roi[0] > roi[1] or roi[2] > roi[3]:
        raise InputError("-roi is inverted: need xmin <= xmax and ymin <= ymax")
    return tuple(roi)


# --------------------------------------------------------------------------
# the detector's frame: axes and beam centre by convention
# --------------------------------------------------------------------------

class Frame(NamedTuple):
    """The detector's unit axes and the beam before any rotation, and the beam centre.

    Fbeam/Sbeam: where the direct beam hits, Fclose/Sclose: the point of the
    detector nearest the sample, both in m along fdet/sdet from the first
    pixel's corner; Xbeam/Ybeam and Xclose/Yclose as the user gives them.
    """
    convention: str
    pivot: str                # "beam" or "sample": what stays put when the detector turns
    beam: tuple               # unit vector along the beam (source -> sample)
    fdet: tuple
    sdet: tuple
    odet: tuple
    twotheta_axis: tuple
    polar: tuple              # E-vector of the beam
    spindle: tuple
    Xbeam: float
    Ybeam: float
    Fbeam: float
    Sbeam: float
    Xclose: float
    Yclose: float
    Fclose: float
    Sclose: float


def detector_frame(cfg: Config, size: DetectorSize, log) -> Frame:
    """The convention's axes, beam and pivot, and the beam centre's defaults.

    ADXV, MOSFLM and DENZO pivot about the beam spot and take the beam centre
    (Xbeam, Ybeam) in their own axes; XDS and DIALS pivot about the sample
    and take the near point (ORGX, ORGY or Xclose, Yclose); CUSTOM keeps the
    user's vectors and pivot.  The vectors are made unit; an odet that was
    not already one (C's test) is replaced by fdet x sdet.
    """
    pixel = cfg.pixel_size
    detsize_f, detsize_s = size.detsize_f, size.detsize_s
    nan = math.isnan
    Fclose = (cfg.ORGX - 0.5) * pixel if not nan(cfg.ORGX) else math.nan
    Sclose = (cfg.ORGY - 0.5) * pixel if not nan(cfg.ORGY) else math.nan
    if nan(Fclose):
        Fclose = (detsize_f - 0 * pixel) / 2.0
    if nan(Sclose):
        Sclose = (detsize_s + 0 * pixel) / 2.0
    Xclose = Fclose if nan(cfg.Xclose) else cfg.Xclose
    Yclose = Sclose if nan(cfg.Yclose) else cfg.Yclose
    Fbeam, Sbeam = Fclose, Sclose

    conv = cfg.convention
    pivot = cfg.pivot
    Xbeam, Ybeam = cfg.Xbeam, cfg.Ybeam
    beam, fdet, sdet, odet = cfg.beam_vector, cfg.fdet_vector, cfg.sdet_vector, cfg.odet_vector
    twotheta_axis, polar_v, spindle = cfg.twotheta_axis, cfg.polar_vector, cfg.spindle_vector
    if conv == "adxv":
        if nan(Xbeam):
            Xbeam = (detsize_f + pixel) / 2.0
        if nan(Ybeam):
            Ybeam = (detsize_s - pixel) / 2.0
        beam, fdet, sdet, odet = (0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1)
        twotheta_axis, polar_v, spindle = (-1, 0, 0), (1, 0, 0), (1, 0, 0)
        Fbeam, Sbeam = Xbeam, detsize_s - Ybeam
        pivot = "beam"
    elif conv in ("mosflm", "denzo"):
        if nan(Xbeam):
            Xbeam = (detsize_s + pixel) / 2.0
        if nan(Ybeam):
            Ybeam = (detsize_f + pixel) / 2.0
        beam, odet, fdet, sdet = (1, 0, 0), (1, 0, 0), (0, 0, 1), (0, -1, 0)
        twotheta_axis, polar_v, spindle = (0, 0, -1), (0, 0, 1), (0, 0, 1)
        half = 0.5 * pixel if conv == "mosflm" else 0.0 * pixel
        Fbeam, Sbeam = Ybeam + half, Xbeam + half
        pivot = "beam"
    elif conv in ("xds", "dials"):
        if nan(Xbeam):
            Xbeam = Xclose
        if nan(Ybeam):
            Ybeam = Yclose
        beam, fdet, sdet, odet = (0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)
        if conv == "xds":
            twotheta_axis, polar_v, spindle = (1, 0, 0), (1, 0, 0), (1, 0, 0)
        else:
            twotheta_axis, polar_v, spindle = (0, 1, 0), (0, 1, 0), (0, 1, 0)
        Fbeam, Sbeam = Xbeam, Ybeam
        pivot = "sample"
    else:  # custom
        if nan(Xbeam):
            Xbeam = Xclose
        if nan(Ybeam):
            Ybeam = Yclose
        Fbeam, Sbeam = Xbeam, Ybeam
        Fclose, Sclose = Xbeam, Ybeam

    f = lambda v: tuple(float(x) for x in v)   # noqa: E731
    beam, _ = V.unitize(f(beam))
    fdet, _ = V.unitize(f(fdet))
    sdet, _ = V.unitize(f(sdet))
    odet, omag = V.unitize(f(odet))
    if omag != 1.0:
        log("WARNING: auto-generating odet_vector")
        odet, _ = V.unitize(V.cross(fdet, sdet))
    polar_v, _ = V.unitize(f(polar_v))
    spindle, _ = V.unitize(f(spindle))
    for name, vec in (("-beam_vector", beam), ("-fdet_vector", fdet), ("-sdet_vector", sdet)):
        if vec == (0.0, 0.0, 0.0):
            raise InputError(f"{name} has zero length")
    return Frame(conv, pivot, beam, fdet, sdet, odet, f(twotheta_axis), polar_v, spindle,
                 Xbeam, Ybeam, Fbeam, Sbeam, Xclose, Yclose, Fclose, Sclose)


def _check_crystal_inputs(cfg: Config) -> bool:
    """Something to render and a crystal (C prints its usage and exits); True if a Fdump is to be read."""
    dump_exists = cfg.hkl_file is None and os.path.exists(cfg.dump_file)
    if cfg.hkl_file is None and not dump_exists and cfg.default_F == 0.0:
        raise InputError("nothing to render: give -hkl, a Fdump.bin from an earlier run, or -default_F")
    if cfg.mat_file is None and cfg.cell[0] == 0.0:
        raise InputError("no crystal: give -mat or -cell")
    return dump_exists


# --------------------------------------------------------------------------
# sampling: phi steps, divergence, dispersion, sensor layers, mosaic domains
# --------------------------------------------------------------------------

def auto_steps(steps, rng, step, user_range_default):
    """C's rule for (number of steps, range, step) when some are not given.

    Used for divergence and dispersion; -1 (or <=0) means "not given".
    """
    if steps <= 0:
        if rng < 0.0:
            if step <= 0.0:
                return 1, 0.0, 0.0
            return 2, step, step
        if step <= 0.0:
            return 2, rng, rng
        return math.ceil(rng / step), rng, step
    if rng < 0.0:
        if step <= 0.0:
            return steps, user_range_default, user_range_default / steps
        return 2, step, step
    if step <= 0.0:
        if steps <= 1:
            steps = 2
        return steps, rng, rng / (steps - 1)
    return steps, rng, step


def phi_steps(cfg):
    """C's rule for phi steps, oscillation range and step size."""
    phisteps, osc, phistep = cfg.phisteps, cfg.osc, cfg.phistep
    if phisteps < 0:
        if osc < 0.0:
            if phistep <= 0.0:
                return 1, 0.0, 0.0
            return 2, phistep, phistep
        if phistep <= 0.0:
            return 2, osc, osc / 2.0
        return math.ceil(osc / phistep), osc, phistep
    if phisteps == 0:
        phisteps = 1
    if osc < 0.0:
        if phistep <= 0.0:
            osc = 1.0 / RTD
            return phisteps, osc, osc / phisteps
        return 2, phistep, phistep
    if phistep < 0.0:
        return phisteps, osc, osc / phisteps
    return phisteps, osc, phistep


def _thickness(cfg, parity):
    """Sensor layers: (layers, thickness, layer spacing)."""
    steps, thick, step = cfg.detector_thicksteps, cfg.detector_thick, cfg.detector_thickstep
    if steps <= 0:
        if thick < 0.0:
            if step <= 0.0:
                steps, thick, step = 1, 0.0, 0.0
            else:
                steps, thick = 2, step
        elif step <= 0.0:
            steps = 2
            step = thick / steps
        else:
            steps = math.ceil(thick / step)
    else:
        if thick < 0.0:
            if step <= 0.0:
                thick = 0.5e-6
                step = thick / steps
            else:
                steps, thick = 2, step
        elif step <= 0.0:
            if steps <= 1:
                steps = 2
            # C spaces the layers by thick/(steps-1), so they reach past the
            # back of the sensor; spec mode divides the sensor evenly.
            step = thick / (steps - 1) if parity else thick / steps
    return steps, thick, step


def divergence_and_dispersion(cfg: Config) -> tuple:
    """((steps, range, step) horizontal, vertical, spectral); a zero range is one step of 0.

    Divergence in radians, dispersion as a fraction of the wavelength.
    """
    hdiv = auto_steps(cfg.hdivsteps, cfg.hdivrange, cfg.hdivstep, 1.0)
    vdiv = auto_steps(cfg.vdivsteps, cfg.vdivrange, cfg.vdivstep, 1.0)
    disp = auto_steps(cfg.dispsteps, cfg.dispersion, -1.0, 1.0)

    def nothing_to_sample(steps, rng, step):
        return (1, 0.0, 0.0) if rng <= 0.0 or step <= 0.0 or steps <= 0 else (steps, rng, step)
    return nothing_to_sample(*hdiv), nothing_to_sample(*vdiv), nothing_to_sample(*disp)


def sensor_layers(cfg: Config, parity: bool, log) -> tuple:
    """(layers, thickness m, layer spacing m, attenuation mu 1/m); no sensor is one layer of 0.

    A sensor of unknown attenuation gets mu = 1 / thickness (with C's
    warning, which calls it a depth).
    """
    thicksteps, thick, thickstep = _thickness(cfg, parity)
    mu = cfg.detector_mu
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
        log("WARNING: setting detector attenuation depth to %g m" % mu)
    if thick <= 0.0 or thickstep <= 0.0 or thicksteps <= 0:
        thicksteps, thick, thickstep = 1, 0.0, 0.0
    return thicksteps, thick, thickstep, mu


def mosaic_domain_count(cfg: Config, log) -> tuple:
    """(mosaic spread in radians, number of domains): one domain without spread, 10 by default with one."""
    mosaic_spread, mosaic_domains = cfg.mosaic_spread, cfg.mosaic_domains
    if mosaic_domains <= 0:
        if mosaic_spread < 0.0:
            mosaic_domains, mosaic_spread = 1, 0.0
        elif mosaic_spread == 0.0:
            mosaic_domains = 1
        else:
            log("WARNING: finite mosaicity with only one domain! upping to 10 mosaic domains")
            mosaic_domains = 10
    else:
        if mosaic_spread < 0.0:
            log("WARNING: no mosaic spread specified.  setting mosaic_domains = 1")
            mosaic_spread, mosaic_domains = 0.0, 1
        elif mosaic_spread == 0.0:
            log("WARNING: zero mosaic spread specified.  setting mosaic_domains = 1")
            mosaic_domains = 1
    return mosaic_spread, mosaic_domains


def _wavelength(cfg: Config) -> float:
    """The central wavelength (m); an infinite or NaN one is refused here, where C first uses it."""
    lambda0 = cfg.lambda0
    if lambda0 <= 0.0 or not math.isfinite(lambda0):
        raise InputError("wavelength must be positive (-lambda/-energy)")
    return lambda0


# --------------------------------------------------------------------------
# detector placement: rotations and pivot
# --------------------------------------------------------------------------

class Placement(NamedTuple):
    """The placed detector: rotated unit axes, pix0 (m, the first pixel's corner) and beam centre."""
    fdet: tuple
    sdet: tuple
    odet: tuple
    pix0: tuple
    distance: float           # m, sample to the beam spot along the beam
    close_distance: float     # m, sample to the detector plane along odet
    placement_distance: float  # m, the distance the pivot formula used
    Fbeam: float
    Sbeam: float
    Fclose: float
    Sclose: float
    ORGX: float               # XDS near point, pixels
    ORGY: float
    dials_origin: tuple       # mm, DIALS frame


def place_detector(cfg: Config, frame: Frame, parity: bool, log) -> Placement:
    """Rotate the detector (-detector_rotx/y/z, then -twotheta) about its pivot and find pix0.

    The beam pivot keeps the beam spot (Fbeam, Sbeam) at ``distance`` along the
    beam; the sample pivot keeps the near point (Fclose, Sclose) at
    ``close_distance`` along odet and turns it with the detector.  Spec mode
    then takes -pix0_vector as given (C overwrites it, quirk f).
    """
    fdet, sdet, odet, beam = frame.fdet, frame.sdet, frame.odet, frame.beam
    Fclose, Sclose, Fbeam, Sbeam = frame.Fclose, frame.Sclose, frame.Fbeam, frame.Sbeam
    rotx, roty, rotz = cfg.detector_rotx, cfg.detector_roty, cfg.detector_rotz
    twotheta, twotheta_axis = cfg.detector_twotheta, frame.twotheta_axis
    distance = cfg.distance
    close_distance = cfg.close_distance
    # cos of the angle between the beam and the rotated detector normal
    ratio = V.dot(beam, V.rotate_xyz(odet, rotx, roty, rotz))
    if ratio == 0.0:
        ratio = DBL_MIN
    if math.isnan(close_distance):
        close_distance = abs(ratio * distance)
    distance = close_distance / ratio
    placement_distance = distance

    pix0 = (0.0, 0.0, 0.0)
    if frame.pivot == "sample":
        log("pivoting detector around sample")
        pix0 = tuple(-Fclose * fdet[j] - Sclose * sdet[j] + close_distance * odet[j] for j in range(3))
        pix0 = V.rotate_xyz(pix0, rotx, roty, rotz)
        pix0 = V.rotate_axis(pix0, twotheta_axis, twotheta)
    fdet = V.rotate_axis(V.rotate_xyz(fdet, rotx, roty, rotz), twotheta_axis, twotheta)
    sdet = V.rotate_axis(V.rotate_xyz(sdet, rotx, roty, rotz), twotheta_axis, twotheta)
    odet = V.rotate_axis(V.rotate_xyz(odet, rotx, roty, rotz), twotheta_axis, twotheta)
    if frame.pivot == "beam":
        log("pivoting detector around direct beam spot")
        pix0 = tuple(-Fbeam * fdet[j] - Sbeam * sdet[j] + distance * beam[j] for j in range(3))
    if cfg.pix0_vector is not None and not parity:
        pix0 = tuple(float(x) for x in cfg.pix0_vector)
    return _beam_centre(pix0, fdet, sdet, odet, beam, ratio, placement_distance, cfg.pixel_size)


def _beam_centre(pix0, fdet, sdet, odet, beam, ratio, placement_distance, pixel) -> Placement:
    """Where the near point and the beam fall on the placed detector, in every convention's units."""
    Fclose = -V.dot(pix0, fdet)
    Sclose = -V.dot(pix0, sdet)
    close_distance = V.dot(pix0, odet)
    impact = tuple(close_distance / ratio * beam[j] - pix0[j] for j in range(3))
    Fbeam = V.dot(fdet, impact)
    Sbeam = V.dot(sdet, impact)
    distance = close_distance / ratio
    if close_distance == 0.0:
        raise InputError("the detector plane passes through the sample (zero -distance/-close_distance)")
    dials_origin = (1000.0 * V.dot(pix0, (0.0, 0.0, 1.0)),
                    1000.0 * V.dot(pix0, (0.0, 1.0, 0.0)),
                    1000.0 * V.dot(pix0, (-1.0, 0.0, 0.0)))
    return Placement(fdet, sdet, odet, pix0, distance, close_distance, placement_distance, Fbeam, Sbeam,
                     Fclose, Sclose, Fclose / pixel + 0.5, Sclose / pixel + 0.5, dials_origin)


# --------------------------------------------------------------------------
# the crystal: size and oversampling
# --------------------------------------------------------------------------

def interpolation_choice(cfg: Config, log) -> int:
    """-interpolate as asked; when not said, tricubic only for crystals of at most 2 cells along an axis."""
    interpolate = cfg.interpolate
    if interpolate > 1:
        if cfg.Na <= 2 or cfg.Nb <= 2 or cfg.Nc <= 2:
            log("auto-selected tricubic interpolation of structure factors")
            interpolate = 1
        else:
            log("auto-selected no interpolation")
            interpolate = 0
    return interpolate


def crystal_size(cfg: Config, cell, sample: tuple, log) -> tuple:
    """((Na, Nb, Nc) unit cells, (xa, xb, xc) crystal size in m along a, b, c).

    A -sample_* size (clipped by the beam) sets the count along its axis;
    at least one cell each way.
    """
    Na, Nb, Nc = cfg.Na, cfg.Nb, cfg.Nc
    sample_x, sample_y, sample_z = sample
    a, b, c = cell.a, cell.b, cell.c                 # metres
    if sample_x > 0:
        Na = math.ceil(sample_x / V.norm(a))
    if sample_y > 0:
        Nb = math.ceil(sample_y / V.norm(b))
    if sample_z > 0:
        Nc = math.ceil(sample_z / V.norm(c))
    Na, Nb, Nc = (max(float(x), 1.0) for x in (Na, Nb, Nc))
    xa, xb, xc = V.norm(a) * Na, V.norm(b) * Nb, V.norm(c) * Nc
    log("crystal is %g x %g x %g microns" % (xa * 1e6, xb * 1e6, xc * 1e6))
    return (Na, Nb, Nc), (xa, xb, xc)


def oversampling(cfg: Config, size_m: tuple, lambda0: float, distance: float, parity: bool, log) -> tuple:
    """(sub-pixels per pixel edge, C's recommendation as a real number).

    A spot is about lambda x distance / (crystal size) wide on the detector;
    C recommends 3 x crystal size / (lambda x distance / pixel) sub-pixels
    per pixel edge so that a spot spans several, and uses that when
    -oversample is not given.
    """
    pixel = cfg.pixel_size
    xmax = max(size_m)
    reciprocal_pixel_size = lambda0 * distance / pixel
    needed = 3.0 * xmax / reciprocal_pixel_size if reciprocal_pixel_size != 0.0 else math.inf
    if math.isnan(needed) and parity:
        needed = 0.0        # a NaN cell (-c_parity only): C's (int) of NaN is negative, so 1-fold
    if not abs(needed) <= C_INT_MAX:
        if cfg.oversample <= 0:
            raise InputError("automatic oversampling would need %g sub-pixels per pixel edge; "
                             "check -lambda, -distance, -pixel and the crystal size" % needed)
        needed = C_INT_MAX
    recommended = math.ceil(needed)
    if recommended <= 0:
        recommended = 1
    oversample = cfg.oversample
    if oversample <= 0:
        oversample = recommended
        log("auto-selected %d-fold oversampling" % oversample)
    if oversample < recommended:
        log("WARNING: maximum dimension of sample is %g A" % (xmax * 1e10))
        log("         but reciprocal pixel size is %g A" % (reciprocal_pixel_size * 1e10))
        log("         intensity may vary significantly across a pixel!")
        log("         recommend -oversample %d to work around this" % recommended)
    return oversample, needed


def approximate_mw(size_m: tuple, N: tuple) -> float:
    """C's molecular weight estimate: the crystal's mass at 1.2 g/cm^3 per unit cell, in g/mol."""
    volume = size_m[0] * size_m[1] * size_m[2]
    molecules = N[0] * N[1] * N[2]
    return volume * 1.2e6 * AVOGADRO / molecules


def water_background(cfg: Config, fluence: float) -> float:
    """Photons per steradian scattered forward by the -water layer (C's constant F = 2.57 per molecule)."""
    # C's expression, in C's order (x ** 3 would raise OverflowError where C gets inf)
    w = cfg.water_size
    return WATER_F * WATER_F * R_E_SQR * fluence * w * w * w * 1e6 * AVOGADRO / WATER_MW


# --------------------------------------------------------------------------
# the summary C prints
# --------------------------------------------------------------------------

def echo_summary(sc: Scene, log, dispsteps: int, mosaic_domains: int) -> None:
    """C's summary of the run's parameters, line for line."""
    cfg = sc.cfg
    shape_name = {"round": "ellipsoidal", "square": "parallelpiped", "gauss": "gaussian", "tophat": "tophat-spot"}
    log("  %d initialized hkls (all others =%g)" % (sc.hkls, cfg.default_F))
    log("  %s xtal: %.0fx%.0fx%.0f cells" % (shape_name[cfg.xtal_shape], sc.Na, sc.Nb, sc.Nc))
    log("  wave=%g meters +/- %g%% in %d steps" % (sc.lambda0, sc.dispersion * 100, dispsteps))
    if cfg.nopolar:
        log("  polarization effect disabled")
    else:
        log("  Kahn polarization factor: %f" % cfg.polarization)
    if cfg.curved_detector:
        log("  curved detector: all pixels same distance from origin")
    if cfg.point_pixel:
        log("  pixel obliquity effect disabled")
    log("  incident fluence: %g photons/m^2" % sc.fluence)
    log("  distance=%g detsize=%gx%g  pixel=%g meters (%dx%d pixels)"
        % (sc.distance, sc.detsize_f, sc.detsize_s, sc.pixel_size, sc.fpixels, sc.spixels))
    log("  sensor is %g m thick in %d layers with mu= %g" % (sc.thick, sc.thicksteps, sc.mu))
    log("  Xbeam=%g Ybeam=%g" % (sc.Xbeam, sc.Ybeam))
    log("  Fbeam=%g Sbeam=%g" % (sc.Fbeam, sc.Sbeam))
    log("  Xclose=%g Yclose=%g" % (sc.Xclose, sc.Yclose))
    log("  Fclose=%g Sclose=%g" % (sc.Fclose, sc.Sclose))
    log("  DIRECTION_OF_DETECTOR_X-AXIS= %g %g %g" % sc.fdet)
    log("  DIRECTION_OF_DETECTOR_Y-AXIS= %g %g %g" % sc.sdet)
    log("  DIRECTION_OF_DETECTOR_Z-AXIS= %g %g %g" % sc.odet)
    log("  INCIDENT_BEAM_DIRECTION= %g %g %g" % sc.beam)
    log("  spindle ROTATION_AXIS= %g %g %g" % sc.spindle)
    log("  POLARIZATION_PLANE_NORMAL= %g %g %g" % V.cross(sc.beam, sc.polar_vector))
    log("  dials origin= %g %g %g" % sc.dials_origin)
    log("  roi: %d < x < %d && %d < y < %d" % sc.roi)
    log("  hdivrange=%g hdivstep=%g  radians" % (sc.hdivrange, sc.hdivstep))
    log("  vdivrange=%g vdivstep=%g  radians" % (sc.vdivrange, sc.vdivstep))
    log("  %d divergence steps" % sc.divsteps)
    log("  %d sources" % len(sc.sources))
    log("  %d mosaic domains over mosaic spread of %g degrees" % (mosaic_domains, sc.mosaic_spread * RTD))
    log("  %d phi steps from %g to %g degrees" % (sc.phisteps, sc.phi0 * RTD, (sc.phi0 + sc.osc) * RTD))
    flags = "".join(s for s, on in ((" +thick", cfg.oversample_thick), (" +polar", cfg.oversample_polar),
                                    (" +omega", cfg.oversample_omega)) if on)
    log("  %dx%d pixel oversample steps%s" % (sc.oversample, sc.oversample, flags))
    if cfg.mask_image is not None:
        log("  skipping zero-flagged pixels in %s" % cfg.mask_file)
    if cfg.calculate_noise:
        log("")
        log("  noise image paramters:")
        log("  seed: %d" % sc.seed)
        log("  water droplet size: %g m" % cfg.water_size)


# --------------------------------------------------------------------------
# the whole set-up
# --------------------------------------------------------------------------

def build_scene(cfg: Config, echo: bool = True, stage=None) -> Scene:
    """Derive everything from ``cfg``; prints C's summary when ``echo``.

    The stages run in C's order, which is also the order of the lines it
    prints and of the errors it stops at.  ``stage`` (the command line's
    staged writes) takes the Fdump cache write, so that it happens only when
    the whole run succeeds; without it the cache is written at once.
    """
    from reference import preflight, rng
    from reference.crystal import build_cell, mosaic_domain_matrices
    from reference.sources import build_sources
    from reference.structure_factors import load_structure_factors

    log = _Log(echo)
    parity = cfg.c_parity
    for note in cfg.header_notes:
        log(note)
    _check_basic(cfg)

    # ---- detector, beam, frame ----
    size = detector_size(cfg)
    fluence, sample = fluence_and_sample(cfg, log)
    roi = region_of_interest(cfg, size)
    frame = detector_frame(cfg, size, log)
    preflight.check_frame(cfg, frame.fdet, frame.sdet, frame.odet)
    log("nanoBragg nanocrystal diffraction simulator - James Holton and Ken Frankel 5-17-17")
    dump_exists = _check_crystal_inputs(cfg)

    # ---- sampling ----
    phisteps, osc, phistep = phi_steps(cfg)
    (hdivsteps, hdivrange, hdivstep), (vdivsteps, vdivrange, vdivstep), (dispsteps, dispersion, dispstep) = \
        divergence_and_dispersion(cfg)
    thicksteps, thick, thickstep, mu = sensor_layers(cfg, parity, log)
    mosaic_spread, mosaic_domains = mosaic_domain_count(cfg, log)
    log(f"{frame.convention} convention selected.")

    # ---- detector placement ----
    lambda0 = _wavelength(cfg)
    det = place_detector(cfg, frame, parity, log)
    log("XDS incident beam: %g %g %g" % (V.dot(frame.beam, det.fdet), V.dot(frame.beam, det.sdet),
                                         V.dot(frame.beam, det.odet)))

    # ---- crystal: cell, orientation, size ----
    interpolate = interpolation_choice(cfg, log)
    # C's streams share one shuffle table; parity replays them on one state,
    # in C's order (misset, mosaic domains, noise)
    rng_table = rng.empty_table() if parity else None
    cell = build_cell(cfg, lambda0, log, rng_table)
    (Na, Nb, Nc), size_m = crystal_size(cfg, cell, sample, log)
    oversample, needed = oversampling(cfg, size_m, lambda0, det.distance, parity, log)
    log("approximate MW = %g" % approximate_mw(size_m, (Na, Nb, Nc)))

    # ---- pre-flight: every count is known; nothing that grows with one has run yet ----
    preflight.check_plan(cfg, preflight.Plan(
        size.fpixels, size.spixels, roi, oversample, cfg.oversample <= 0, needed, size_m, (Na, Nb, Nc),
        (V.norm(cell.a) * 1e10, V.norm(cell.b) * 1e10, V.norm(cell.c) * 1e10), thicksteps, phisteps, hdivsteps,
        vdivsteps, dispsteps, mosaic_domains, frame.beam, frame.polar, frame.spindle, frame.twotheta_axis,
        cfg.detector_twotheta, det.close_distance, fluence,
        bool(interpolate) and (cfg.hkl_file is not None or dump_exists)))

    # ---- structure factors ----
    table = load_structure_factors(cfg, log, stage)
    if table.count == 0:
        interpolate = 0
    if cfg.stol_file is not None:
        from reference.fileio import read_source_file
        log("reading %s" % cfg.stol_file)
        read_source_file(cfg.stol_file, c_parity=cfg.c_parity)  # read and checked; C never uses it
    for t in range(thicksteps):
        log("thick%d = %g um" % (t, thickstep * t * 1e6))
    for p in range(phisteps):
        log("phi%d = %g" % (p, (cfg.phi0 + phistep * p) * RTD))

    # ---- sources and mosaic domains ----
    src = build_sources(cfg, frame.beam, frame.polar, lambda0, hdivsteps, hdivrange, hdivstep,
                        vdivsteps, vdivrange, vdivstep, dispsteps, dispersion, dispstep, log)
    mosaic_stream = rng.stream(cfg.mosaic_seed, None if rng_table is None else rng_table.copy())
    umats = mosaic_domain_matrices(mosaic_spread, mosaic_domains, cfg.mosaic_seed, rng_table)
    log("  created a total of %d mosaic domains" % mosaic_domains)

    sc = Scene(
        cfg=cfg, parity=parity,
        fpixels=size.fpixels, spixels=size.spixels, pixel_size=cfg.pixel_size,
        detsize_f=size.detsize_f, detsize_s=size.detsize_s,
        distance=det.distance, close_distance=det.close_distance, fdet=det.fdet, sdet=det.sdet, odet=det.odet,
        beam=frame.beam, polar_vector=frame.polar, spindle=frame.spindle, pix0=det.pix0,
        Xbeam=frame.Xbeam, Ybeam=frame.Ybeam, Fbeam=det.Fbeam, Sbeam=det.Sbeam,
        Xclose=frame.Xclose, Yclose=frame.Yclose, Fclose=det.Fclose, Sclose=det.Sclose, ORGX=det.ORGX,
        ORGY=det.ORGY, dials_origin=det.dials_origin, twotheta=cfg.detector_twotheta, roi=roi,
        thick=thick, thickstep=thickstep, thicksteps=thicksteps, mu=mu,
        a0=cell.a, b0=cell.b, c0=cell.c, a_star=cell.a_star, b_star=cell.b_star, c_star=cell.c_star,
        V_cell=cell.V_cell, Na=Na, Nb=Nb, Nc=Nc, oversample=oversample, interpolate=interpolate,
        Fhkl=table.values, hkl_min=table.mins, hkl_max=table.maxs, hkls=table.count,
        phi0=cfg.phi0, osc=osc, phistep=phistep, phisteps=phisteps,
        sources=src.direction, source_lambda=src.wavelength, source_weight=src.weight,
        mosaic_umats=umats, mosaic_spread=mosaic_spread,
        steps=len(src.direction) * mosaic_domains * phisteps * oversample * oversample,
        fluence=fluence, I_bg=water_background(cfg, fluence), lambda0=lambda0, dispersion=dispersion,
        divsteps=src.divsteps, hdivrange=hdivrange, hdivstep=hdivstep, vdivrange=vdivrange, vdivstep=vdivstep,
        seed=cfg.seed if cfg.seed is not None else -int(time.time()),
        mosaic_stream=mosaic_stream, rng_table=rng_table, misset=cell.misset,
        convention=frame.convention, pivot=frame.pivot, fdet0=frame.fdet, sdet0=frame.sdet, odet0=frame.odet,
        twotheta_axis=frame.twotheta_axis, pivot_F=frame.Fclose if frame.pivot == "sample" else frame.Fbeam,
        pivot_S=frame.Sclose if frame.pivot == "sample" else frame.Sbeam,
        placement_distance=det.placement_distance, lines=log.lines)
    echo_summary(sc, log, dispsteps, mosaic_domains)
    return sc


@dataclass
class RenderResult:
    """What an engine's ``render`` returns."""

    image: np.ndarray          # (slow, fast) photons per pixel, float32 unless asked otherwise
    omega_sum: float           # sum of per-sub-pixel solid angles (for the printout)
    oob_warning: tuple | None  # (h, k, l, h0, k0, l0) of the first out-of-table interpolation
    cut: tuple | None = None   # parity: (pixel, evaluation) where interpolation stopped


def first_out_of_table(oob_eval: np.ndarray, oob_hkl: np.ndarray):
    """The run's first out-of-table interpolation in raster order.

    ``oob_eval``/``oob_hkl`` hold, per pixel, the evaluation index (-1: none)
    and h, k, l of that pixel's first one.  Returns (pixel, evaluation, C's
    warning tuple), or None.
    """
    hits = np.flatnonzero(oob_eval >= 0)
    if hits.size == 0:
        return None
    first = int(hits[0])
    h, k, l = (float(x) for x in oob_hkl[first])
    warning = (h, k, l, math.ceil(h - 0.5), math.ceil(k - 0.5), math.ceil(l - 0.5))
    return first, int(oob_eval[first]), warning


def roi_mask(sc: Scene) -> np.ndarray:
    """(slow, fast) bool: pixels inside the ROI (inclusive bounds), whatever the mask says."""
    xmin, xmax, ymin, ymax = sc.roi
    f = np.arange(sc.fpixels)
    s = np.arange(sc.spixels)
    return ((f >= xmin) & (f <= xmax))[None, :] & ((s >= ymin) & (s <= ymax))[:, None]


def rendered_mask(sc: Scene) -> np.ndarray:
    """(slow, fast) bool: the pixels the C loop renders (in the ROI, mask non-zero)."""
    rendered = roi_mask(sc)
    if sc.cfg.mask_image is not None:
        rendered &= sc.cfg.mask_image != 0
    return rendered
