"""Detector effects: from expected photons per pixel to the ADU a detector reads out.

What James Holton's companion program ``noisify`` does to a nanoBragg float
image, in its order:

1. **scale** the input onto the photon scale (``-scale``);
2. **beam flicker**: multiply by ``1 + flicker * N(0, 1)`` (``-flicker``);
3. **calibration error**: multiply by a fixed per-pixel map
   ``1 + calibration * N(0, 1)`` (``-calibration``), the same for every image
   of a dataset (its own seed, ``-calib_seed``);
4. **photon counting**: a Poisson deviate of that mean (a negative mean
   counts 0; above 10^6 photons the normal approximation
   ``mean + sqrt(mean) * N(0, 1)``, as noisify does);
5. **point-spread function** (``-psf gauss|fiber``, ``-psf_fwhm``): the
   counted photons spread over neighbouring pixels (light in a phosphor or
   a fibre-optic taper spreads after the X-ray photon is absorbed);
6. **gain** (ADU per photon) and **ADC offset** (ADU): ``counts * gain + adc``;
7. **read-out noise**: ``+ readout * N(0, 1)`` ADU;
8. **overloads**: values above ``overload`` are clipped to it.

With ``noise=False`` (noisify's ``-nonoise``) steps 2-4 and 7 are skipped:
the PSF acts on the expected photons and the result is the noise-free ADU
image.

Random numbers come from NumPy's PCG64 generator seeded from an integer, not
from noisify's ``ran1``/``gaussdev``/``poidev`` streams: the statistics are
noisify's, the individual draws are not (reproducing its pixel-interleaved
float32 streams bit for bit would buy nothing a test could score).  The seed
is split (``numpy.random.SeedSequence(seed).spawn``) into one stream per
effect, so that turning one effect on or off leaves the draws of the others
unchanged.  Everything is deterministic in the seed.

Shapes: images are ``(slow, fast)`` arrays; the PSF works in pixels.
This module is NumPy only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np

from reference.errors import InputError

PSF_SHAPES = ("none", "gauss", "fiber")
FLICKER_MODES = ("pixel", "image")

#: Above this mean, photon counts are drawn from the normal approximation (noisify's choice).
POISSON_NORMAL_ABOVE = 1.0e6

# noisify's radius rule: the PSF is rendered out to where the light it loses
# is a tenth of the brightest pixel's photon noise (sqrt(max)/10)
_LOSS_FRACTION_OF_NOISE = 10.0

# fibre PSF: density g / (2 pi (g^2 + r^2)^(3/2)); its half maximum lies at
# r = g sqrt(2^(2/3) - 1), so g = FWHM / (2 sqrt(2^(2/3) - 1))
_FIBER_G_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 ** (2.0 / 3.0) - 1.0))

# Gaussian PSF: FWHM = 2 sqrt(2 ln 2) sigma; the CDF is (1 + erf(x sqrt(ln 16) / FWHM)) / 2
_SQRT_LN16 = math.sqrt(math.log(16.0))

# the streams split from the image seed, in this order
_FLICKER, _PHOTONS, _READOUT = range(3)


# ---------------------------------------------------------------------------
# The settings
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectorEffects:
    """What the detector does to an image; field names follow noisify's options.

    The default instance is noisify's default: Poisson photon noise, a 3%
    per-pixel calibration error, gain 1 ADU/photon, an ADC offset of 40 ADU,
    no read-out noise, no flicker, no PSF, overloads at 65535 ADU.

    Attributes
    ----------
    scale : float
        Photons per unit of the input image (``-scale``); 1 for a nanoBragg
        float image, which is already in photons per pixel.
    noise : bool
        False is noisify's ``-nonoise``: no flicker, calibration error,
        photon noise or read-out noise; only PSF, gain, offset and clipping.
    gain : float
        ADU per photon (``-gain``), > 0.
    adc : float
        ADC offset added to every pixel (``-adc``), ADU.
    readout : float
        Read-out noise, rms in ADU (``-readout``), >= 0.
    flicker : float
        Beam flicker, fractional rms of the incident intensity (``-flicker``), >= 0.
    flicker_mode : str
        ``"pixel"`` (noisify: an independent draw for every pixel) or
        ``"image"`` (one draw scales the whole image, a shot-to-shot
        intensity fluctuation).
    calibration : float
        Per-pixel calibration error, fractional rms (``-calibration``), >= 0.
        The map is fixed by ``calib_seed``, so the same for every image.
    calib_seed : int
        Seed of the calibration map (``-calib_seed``; noisify's default), >= 0.
    psf : str
        Point-spread function: ``"none"``, ``"gauss"`` or ``"fiber"`` (``-psf``).
    psf_fwhm : float
        Full width at half maximum of the PSF, micrometres (``-psf_fwhm``;
        noisify's default 46 um).  0 turns the PSF off.
    psf_radius : int
        Radius out to which the PSF is rendered, pixels (``-psf_radius``);
        0 chooses it from the brightest pixel as noisify does.
    pixel : float
        Pixel size, mm (``-pixel``); converts ``psf_fwhm`` into pixels.
        Set it to the scene's pixel size when a PSF is used.
    overload : float
        Largest value the detector reports, ADU; anything above is clipped
        to it (65535 for 16-bit images, noisify's ``-bits 16``).
    """

    scale: float = 1.0
    noise: bool = True
    gain: float = 1.0
    adc: float = 40.0
    readout: float = 0.0
    flicker: float = 0.0
    flicker_mode: str = "pixel"
    calibration: float = 0.03
    calib_seed: int = 123456789
    psf: str = "none"
    psf_fwhm: float = 46.0
    psf_radius: int = 0
    pixel: float = 0.1
    overload: float = 65535.0

    def __post_init__(self):
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        _at_least(self, "scale", 0.0)
        _above(self, "gain", 0.0)
        for name in ("readout", "flicker", "calibration", "psf_fwhm", "psf_radius", "calib_seed"):
            _at_least(self, name, 0.0)
        _above(self, "pixel", 0.0)
        _above(self, "overload", 0.0)
        if self.psf not in PSF_SHAPES:
            raise InputError(f"detector effects: psf must be one of {', '.join(PSF_SHAPES)}, got {self.psf!r}")
        if self.flicker_mode not in FLICKER_MODES:
            raise InputError(f"detector effects: flicker_mode must be one of {', '.join(FLICKER_MODES)}, "
                             f"got {self.flicker_mode!r}")

    @classmethod
    def from_mapping(cls, mapping: dict) -> "DetectorEffects":
        """Settings from a mapping whose keys are field names (e.g. a TOML table).

        Keys left out keep their defaults.  An unknown key or a bad value is
        an :class:`~reference.errors.InputError` with one line saying which.
        """
        if not isinstance(mapping, dict):
            raise InputError(f"detector effects: expected a table of settings, got {type(mapping).__name__}")
        known = [f.name for f in fields(cls)]
        for key in mapping:
            if key not in known:
                raise InputError(f"detector effects: unknown setting {key!r} (known: {', '.join(known)})")
        return cls(**mapping)

    @property
    def psf_fwhm_pixels(self) -> float:
        """The PSF's FWHM in pixels: micrometres over the pixel size."""
        return self.psf_fwhm * 1e-3 / self.pixel

    @property
    def has_psf(self) -> bool:
        return self.psf != "none" and self.psf_fwhm > 0.0


_TYPE_NAMES = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a string"}


def _check_type(name, value, type_name):
    ok = {
        "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "bool": isinstance(value, (bool, np.bool_)),
        "str": isinstance(value, str),
    }[type_name]
    if not ok:
        raise InputError(f"detector effects: {name} must be {_TYPE_NAMES[type_name]}, got {value!r}")
    if type_name == "float" and not math.isfinite(value):
        raise InputError(f"detector effects: {name} must be finite, got {value!r}")


def _at_least(effects, name, low):
    if getattr(effects, name) < low:
        raise InputError(f"detector effects: {name} must be >= {low:g}, got {getattr(effects, name)!r}")


def _above(effects, name, low):
    if not getattr(effects, name) > low:
        raise InputError(f"detector effects: {name} must be > {low:g}, got {getattr(effects, name)!r}")


# ---------------------------------------------------------------------------
# Random streams
# ---------------------------------------------------------------------------

def _generator(seed) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(_seed_sequence(seed)))


def _seed_sequence(seed) -> np.random.SeedSequence:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"detector effects: the seed must be a whole number >= 0, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def _streams(seed) -> list:
    """One generator per random effect of an image (flicker, photons, read-out)."""
    return [np.random.Generator(np.random.PCG64(s)) for s in _seed_sequence(seed).spawn(3)]


# ---------------------------------------------------------------------------
# Per-pixel calibration error
# ---------------------------------------------------------------------------

def calibration_map(shape: tuple, effects: DetectorEffects, seed: int) -> np.ndarray:
    """The fixed multiplicative gain error of each pixel, ``1 + calibration * N(0, 1)``.

    float64 array of ``shape`` (slow, fast); all ones when the effects have
    no calibration error (or no noise).  The same ``seed`` gives the same
    map, so one map serves a whole dataset.
    """
    shape = tuple(int(n) for n in shape)
    if effects.calibration == 0.0 or not effects.noise:
        return np.ones(shape)
    return 1.0 + effects.calibration * _generator(seed).standard_normal(shape)


# ---------------------------------------------------------------------------
# Point-spread function
# ---------------------------------------------------------------------------

def _gauss_cdf(x, fwhm):
    """Integral of the normalized 1-D Gaussian of full width ``fwhm`` from -inf to x, minus 1/2."""
    from math import erf
    return 0.5 * np.vectorize(erf)(x * _SQRT_LN16 / fwhm)


def _fiber_corner(x, y, g):
    """Integral of the fibre density over the rectangle [0, x] x [0, y] (signed)."""
    return np.arctan(x * y / (g * np.sqrt(g * g + x * x + y * y))) / (2.0 * math.pi)


def psf_density(kind: str, r, fwhm: float):
    """The PSF's density at distance ``r`` (pixels) from the centre, per pixel area.

    Both shapes integrate to 1 over the plane and fall to half their peak at
    ``r = fwhm / 2``.  Gaussian: ``(ln 16 / (pi fwhm^2)) exp(-ln 16 r^2 / fwhm^2)``;
    fibre: ``g / (2 pi (g^2 + r^2)^(3/2))`` with ``g = fwhm / (2 sqrt(2^(2/3) - 1))``.
    """
    r = np.asarray(r, dtype=np.float64)
    if kind == "gauss":
        return math.log(16.0) / (math.pi * fwhm * fwhm) * np.exp(-math.log(16.0) * r * r / (fwhm * fwhm))
    if kind == "fiber":
        g = fwhm * _FIBER_G_PER_FWHM
        return g / (2.0 * math.pi * (g * g + r * r) ** 1.5)
    raise ValueError(kind)


def psf_kernel(kind: str, fwhm: float, radius: int) -> np.ndarray:
    """The PSF integrated over each pixel of a ``(2r+1, 2r+1)`` window.

    ``kernel[r + dy, r + dx]`` is the fraction of the light from a pixel's
    centre that lands in the pixel ``(dy, dx)`` away.  Pixels whose centre
    lies farther than ``radius`` from the middle are 0, as noisify renders
    the PSF over a disc.  ``fwhm`` and ``radius`` are in pixels.
    """
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    lo, hi = d - 0.5, d + 0.5
    if kind == "gauss":
        # separable: the product of two 1-D pixel integrals
        along = _gauss_cdf(hi, fwhm) - _gauss_cdf(lo, fwhm)
        kernel = np.outer(along, along)
    elif kind == "fiber":
        g = fwhm * _FIBER_G_PER_FWHM
        y_lo, y_hi = lo[:, None], hi[:, None]
        x_lo, x_hi = lo[None, :], hi[None, :]
        kernel = (_fiber_corner(x_hi, y_hi, g) - _fiber_corner(x_hi, y_lo, g)
                  - _fiber_corner(x_lo, y_hi, g) + _fiber_corner(x_lo, y_lo, g))
    else:
        raise ValueError(kind)
    outside = d[:, None] ** 2 + d[None, :] ** 2 > radius * radius
    kernel[outside] = 0.0
    return kernel


def auto_psf_radius(kind: str, fwhm: float, brightest: float) -> int:
    """noisify's rendering radius (pixels): where the lost light falls to sqrt(brightest)/10.

    Gaussian: the light beyond r is ``I exp(-ln 16 r^2 / fwhm^2)``; fibre:
    about ``I g / r``.  At least 1 pixel.
    """
    if not brightest > 0.0:
        return 1
    lost = math.sqrt(brightest) / _LOSS_FRACTION_OF_NOISE
    if kind == "gauss":
        ratio = math.log(brightest / lost) / math.log(16.0)
        return 1 + math.ceil(math.sqrt(ratio) * fwhm) if ratio > 0 else 1
    g = fwhm * _FIBER_G_PER_FWHM
    return 1 + math.ceil(g * brightest / lost)


def _fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (FFT lengths that transform quickly)."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution, output the size of ``image``: light beyond the edges is lost."""
    r_s, r_f = kernel.shape[0] // 2, kernel.shape[1] // 2
    n_s, n_f = image.shape
    size = (_fast_size(n_s + 2 * r_s), _fast_size(n_f + 2 * r_f))
    spectrum = np.fft.rfft2(image, size) * np.fft.rfft2(kernel, size)
    full = np.fft.irfft2(spectrum, size)
    return full[r_s:r_s + n_s, r_f:r_f + n_f]


def apply_psf(image: np.ndarray, effects: DetectorEffects) -> np.ndarray:
    """Spread every pixel's photons with the effects' PSF; float64, same shape.

    The PSF is rendered out to ``effects.psf_radius`` pixels (0: noisify's
    automatic radius for the brightest pixel, at most the image's larger
    side).  The light of the tails beyond that radius is not dropped: as in
    noisify it is spread evenly over the whole image, so the total is kept
    (exactly here: the lost part is 1 minus the rendered kernel's sum).
    Light that the PSF carries past the image's edges leaves the detector.
    """
    image = np.asarray(image, dtype=np.float64)
    if not effects.has_psf or image.size == 0:
        return image.copy()
    fwhm = effects.psf_fwhm_pixels
    radius = effects.psf_radius or auto_psf_radius(effects.psf, fwhm, float(image.max()))
    radius = max(1, min(radius, max(image.shape)))
    kernel = psf_kernel(effects.psf, fwhm, radius)
    spread = _convolve(image, kernel)
    lost_per_pixel = image.sum() * (1.0 - kernel.sum()) / image.size
    return spread + lost_per_pixel


# ---------------------------------------------------------------------------
# The whole chain
# ---------------------------------------------------------------------------

def photon_counts(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson deviates of ``mean`` (float64); a mean <= 0 counts 0.

    Above :data:`POISSON_NORMAL_ABOVE` the normal approximation
    ``mean + sqrt(mean) N(0, 1)`` is used, as in noisify (those counts are
    not whole numbers).
    """
    mean = np.maximum(mean, 0.0)
    large = mean > POISSON_NORMAL_ABOVE
    counts = rng.poisson(np.where(large, 0.0, mean)).astype(np.float64)
    if large.any():
        counts[large] = mean[large] + np.sqrt(mean[large]) * rng.standard_normal(int(large.sum()))
    return counts


def apply_detector_effects(photons: np.ndarray, effects: DetectorEffects, seed: int,
                           calibration: np.ndarray | None = None) -> np.ndarray:
    """The ADU image a detector reports for an image of expected photons.

    Parameters
    ----------
    photons : array (slow, fast)
        Expected photons per pixel, e.g. what ``-floatfile`` writes; multiplied
        by ``effects.scale`` first.
    effects : DetectorEffects
    seed : int
        Seed of this image's flicker, photon and read-out draws (>= 0).
    calibration : array (slow, fast) or None
        The dataset's calibration map (:func:`calibration_map`); None makes it
        from ``effects.calib_seed``.  Unused when ``effects.noise`` is False.

    Returns
    -------
    float64 array (slow, fast), ADU, clipped above at ``effects.overload``
    (not below: a read-out draw can make it negative; :func:`to_uint16`
    writes such a pixel as 0).
    """
    photons = np.asarray(photons)
    if photons.ndim != 2:
        raise InputError(f"detector effects: expected a 2-D image (slow, fast), got shape {photons.shape}")
    expected = photons.astype(np.float64) * effects.scale
    if not np.isfinite(expected).all():
        raise InputError("detector effects: the photon image has NaN or infinite pixels")
    if not effects.noise:
        signal = apply_psf(expected, effects)
        return np.minimum(signal * effects.gain + effects.adc, effects.overload)

    flicker_rng, photon_rng, readout_rng = _streams(seed)
    if effects.flicker > 0.0:
        draws = (flicker_rng.standard_normal() if effects.flicker_mode == "image"
                 else flicker_rng.standard_normal(expected.shape))
        expected = expected * (1.0 + effects.flicker * draws)
    if calibration is None:
        calibration = calibration_map(expected.shape, effects, effects.calib_seed)
    elif np.shape(calibration) != expected.shape:
        raise InputError(f"detector effects: calibration map of shape {np.shape(calibration)} "
                         f"for an image of shape {expected.shape}")
    expected = expected * calibration      # noisify: calibration loses photons, not electrons
    counts = photon_counts(expected, photon_rng)
    signal = apply_psf(counts, effects)
    adu = signal * effects.gain + effects.adc
    if effects.readout > 0.0:
        adu = adu + effects.readout * readout_rng.standard_normal(adu.shape)
    return np.minimum(adu, effects.overload)


def count_overloads(adu: np.ndarray, effects: DetectorEffects) -> int:
    """Pixels at the overload value (what noisify reports as overloads)."""
    return int(np.count_nonzero(np.asarray(adu) >= effects.overload))


def to_uint16(adu: np.ndarray) -> np.ndarray:
    """16-bit pixels as noisify writes them to SMV.

    Values are clipped to [0, 65535] and truncated toward zero (C's
    conversion of a double to an unsigned short; noisify does not round,
    unlike nanoBragg's ``-intfile``).  A negative value, which C's
    conversion leaves undefined, is written as 0; so is NaN.
    """
    adu = np.asarray(adu, dtype=np.float64)
    clipped = np.clip(np.nan_to_num(adu, nan=0.0), 0.0, 65535.0)
    return np.trunc(clipped).astype(np.uint16)
