"""Detector effects (reference/noise.py): the statistics of each of noisify's effects.

Every random test uses a fixed seed, so it cannot fail by luck; its bound is
five standard errors of the statistic it checks, so a wrong mean, variance
or factor (a dropped gain, a read noise in photons, a per-image calibration
map) fails it.
"""

import math

import numpy as np
import pytest

from reference.errors import InputError
from reference.noise import (
    DetectorEffects,
    apply_detector_effects,
    apply_psf,
    auto_psf_radius,
    calibration_map,
    count_overloads,
    psf_density,
    psf_kernel,
    to_uint16,
)

SHAPE = (200, 200)            # 40000 pixels per image
N = SHAPE[0] * SHAPE[1]

# only what a test asks for: no calibration error, no offset
PLAIN = dict(calibration=0.0, adc=0.0)


def _effects(**kw):
    return DetectorEffects(**{**PLAIN, **kw})


def _flat(value):
    return np.full(SHAPE, float(value))


def _close(value, expected, stderr):
    assert abs(value - expected) < 5 * stderr, (value, expected, stderr)


# ---------------------------------------------------------------------------
# photon noise, gain, offset, read-out noise
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mean", [0.3, 5.0, 50.0])
def test_poisson_mean_and_variance(mean):
    counts = apply_detector_effects(_flat(mean), _effects(), seed=1)
    assert np.array_equal(counts, np.round(counts))           # whole photons
    # standard errors of the sample mean and of the sample variance of a Poisson variable
    _close(counts.mean(), mean, math.sqrt(mean / N))
    _close(counts.var(), mean, math.sqrt((mean + 2 * mean * mean) / N))


def test_very_bright_pixels_use_the_normal_approximation():
    mean = 4.0e7
    counts = apply_detector_effects(_flat(mean), _effects(overload=1e12), seed=2)
    _close(counts.mean(), mean, math.sqrt(mean / N))
    _close(counts.var(), mean, mean * math.sqrt(2.0 / N))


def test_negative_expectation_counts_zero():
    counts = apply_detector_effects(_flat(-3.0), _effects(), seed=3)
    assert (counts == 0).all()


def test_gain_scales_mean_by_g_and_variance_by_g_squared():
    mean, gain = 20.0, 2.5
    adu = apply_detector_effects(_flat(mean), _effects(gain=gain), seed=4)
    _close(adu.mean(), gain * mean, gain * math.sqrt(mean / N))
    _close(adu.var(), gain * gain * mean, gain * gain * math.sqrt((mean + 2 * mean * mean) / N))


def test_adc_offset_is_added_after_the_gain():
    adu = apply_detector_effects(np.zeros(SHAPE), _effects(adc=37.5, gain=3.0), seed=5)
    assert (adu == 37.5).all()
    base = apply_detector_effects(_flat(10.0), _effects(gain=3.0), seed=5)
    shifted = apply_detector_effects(_flat(10.0), _effects(gain=3.0, adc=37.5), seed=5)
    assert np.array_equal(shifted - base, np.full(SHAPE, 37.5))


def test_readout_noise_is_gaussian_in_adu():
    sigma, gain = 3.0, 4.0
    adu = apply_detector_effects(np.zeros(SHAPE), _effects(readout=sigma, adc=100.0, gain=gain), seed=6)
    _close(adu.mean(), 100.0, sigma / math.sqrt(N))
    _close(adu.var(), sigma * sigma, sigma * sigma * math.sqrt(2.0 / N))   # not scaled by the gain
    excess_kurtosis = ((adu - 100.0) ** 4).mean() / sigma ** 4 - 3.0
    _close(excess_kurtosis, 0.0, math.sqrt(24.0 / N))


def test_readout_adds_its_variance_to_the_photon_variance():
    mean, gain, sigma = 30.0, 2.0, 5.0
    adu = apply_detector_effects(_flat(mean), _effects(gain=gain, readout=sigma), seed=7)
    expected = gain * gain * mean + sigma * sigma
    _close(adu.var(), expected, expected * math.sqrt(2.0 / N) * 1.2)


def test_scale_converts_the_input_to_photons():
    adu = apply_detector_effects(_flat(2.0), _effects(scale=10.0), seed=8)
    _close(adu.mean(), 20.0, math.sqrt(20.0 / N))
    _close(adu.var(), 20.0, math.sqrt((20.0 + 800.0) / N))


def test_noise_off_is_the_expected_image_in_adu():
    photons = np.random.default_rng(0).random(SHAPE) * 100
    adu = apply_detector_effects(photons, DetectorEffects(noise=False, gain=2.0, adc=40.0, readout=9.0,
                                                          flicker=0.5), seed=9)
    assert np.allclose(adu, photons * 2.0 + 40.0, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# flicker and calibration
# ---------------------------------------------------------------------------

def test_image_flicker_scales_whole_images_with_the_requested_rms():
    flicker, photons, images = 0.05, 1.0e5, 2000
    effects = _effects(flicker=flicker, flicker_mode="image")
    one = np.full((4, 4), photons / 16)
    totals = np.array([apply_detector_effects(one, effects, seed=s).sum() for s in range(images)])
    ratio = totals / photons
    _close(ratio.mean(), 1.0, flicker / math.sqrt(images))
    # the rms of the ratio: flicker, plus the photon noise of 1e5 photons (0.3%)
    rms = math.sqrt(flicker ** 2 + 1.0 / photons)
    _close(ratio.std(), rms, rms / math.sqrt(2 * images))
    # within one image every pixel has the same scale: only photon noise between pixels
    big = apply_detector_effects(_flat(1e4), effects, seed=11)
    assert big.std() / big.mean() < 0.02


def test_pixel_flicker_is_noisify_s_independent_draw_per_pixel():
    flicker, mean = 0.1, 1000.0
    adu = apply_detector_effects(_flat(mean), _effects(flicker=flicker), seed=12)
    expected_var = mean + (flicker * mean) ** 2
    _close(adu.mean(), mean, math.sqrt(expected_var / N))
    _close(adu.var(), expected_var, expected_var * math.sqrt(2.0 / N) * 1.2)


def test_calibration_map_has_the_requested_rms_and_is_fixed_by_its_seed():
    effects = DetectorEffects(calibration=0.03)
    first = calibration_map(SHAPE, effects, seed=77)
    _close(first.mean(), 1.0, 0.03 / math.sqrt(N))
    _close(first.std(), 0.03, 0.03 / math.sqrt(2 * N))
    assert np.array_equal(first, calibration_map(SHAPE, effects, seed=77))
    assert not np.array_equal(first, calibration_map(SHAPE, effects, seed=78))
    assert (calibration_map(SHAPE, _effects(), seed=77) == 1.0).all()
    assert (calibration_map(SHAPE, DetectorEffects(noise=False), seed=77) == 1.0).all()


def test_calibration_error_is_the_same_in_every_image():
    """Bright images with different seeds share their pixel-to-pixel pattern (the map), nothing else."""
    effects = _effects(calibration=0.05, calib_seed=4, overload=1e9)
    photons = _flat(1.0e5)              # photon noise 0.3%, well below the 5% map
    a = apply_detector_effects(photons, effects, seed=1)
    b = apply_detector_effects(photons, effects, seed=2)
    assert not np.array_equal(a, b)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    ratio = a / (photons * calibration_map(SHAPE, effects, seed=4))
    assert abs(ratio.std() - math.sqrt(1.0 / 1.0e5)) < 5 * math.sqrt(1.0 / 1.0e5) / math.sqrt(2 * N)
    # a map passed in is the one used
    own = calibration_map(SHAPE, effects, seed=99)
    c = apply_detector_effects(photons, effects, seed=1, calibration=own)
    assert np.corrcoef(c.ravel(), own.ravel())[0, 1] > 0.99


def test_calibration_loses_photons_before_counting():
    """A pixel with calibration factor c counts Poisson(c * mean) photons: its variance is c * mean."""
    effects = _effects(calibration=0.5, calib_seed=3)
    cal = calibration_map(SHAPE, effects, seed=3)
    low = (cal > 0.4) & (cal < 0.6)
    counts = apply_detector_effects(_flat(40.0), effects, seed=13)
    expected = 40.0 * cal[low]
    _close((counts[low] - expected).mean(), 0.0, math.sqrt(expected.mean() / low.sum()))
    _close(((counts[low] - expected) ** 2 / expected).mean(), 1.0, math.sqrt(2.0 / low.sum()) * 1.2)


# ---------------------------------------------------------------------------
# point-spread function
# ---------------------------------------------------------------------------

def _psf(kind, fwhm_px, **kw):
    # 0.1 mm pixels: fwhm in um = 100 * fwhm in pixels
    return DetectorEffects(noise=False, adc=0.0, psf=kind, psf_fwhm=100.0 * fwhm_px, pixel=0.1, **kw)


@pytest.mark.parametrize("kind", ["gauss", "fiber"])
def test_psf_conserves_the_integral(kind):
    """Light stays on the detector when it lies farther than the PSF radius from every edge."""
    image = np.zeros((161, 161))
    image[80, 80] = 1.0e4
    image[70, 90] = 250.0
    image[60:101, 60:101] += np.random.default_rng(1).random((41, 41))
    out = apply_psf(image, _psf(kind, 3.0, psf_radius=50))
    assert out.sum() == pytest.approx(image.sum(), rel=1e-12)
    assert out[80, 80] < image[80, 80] * 0.5
    if kind == "gauss":     # the automatic radius, 9 pixels (tails beyond it spread evenly)
        auto = apply_psf(image, _psf(kind, 3.0))
        assert auto.sum() == pytest.approx(image.sum(), rel=1e-12)


def test_light_beyond_the_edges_is_lost():
    image = np.zeros((21, 21))
    image[0, 10] = 100.0                       # on the edge: the rows above it leave
    out = apply_psf(image, _psf("gauss", 2.0, psf_radius=10))
    along = psf_kernel("gauss", 2.0, 10)
    assert out.sum() == pytest.approx(100.0 * along[10:, :].sum() + 100.0 * (1 - along.sum()), rel=1e-12)
    assert 60.0 < out.sum() < 80.0


@pytest.mark.parametrize("kind", ["gauss", "fiber"])
def test_psf_kernel_sums_to_one_and_is_symmetric(kind):
    kernel = psf_kernel(kind, 2.0, 400 if kind == "fiber" else 20)
    fraction_inside = 1.0 if kind == "gauss" else 1.0 - 2.0 * 0.652383 / 400   # fibre tail beyond r: about g / r
    assert kernel.sum() == pytest.approx(fraction_inside, abs=2e-3 if kind == "fiber" else 1e-12)
    # to rounding: the far fibre tail is a difference of nearly equal arctangents
    assert np.allclose(kernel, kernel[::-1, :], rtol=0, atol=1e-15)
    assert np.allclose(kernel, kernel.T, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", ["gauss", "fiber"])
def test_psf_has_the_requested_fwhm(kind):
    """A point blurred with a wide PSF falls to half its peak at fwhm / 2 from the centre."""
    fwhm = 20.0
    image = np.zeros((161, 161))
    image[80, 80] = 1.0
    out = apply_psf(image, _psf(kind, fwhm, psf_radius=80))
    profile = out[80, 80:]                    # along +fast
    half = profile[0] / 2.0
    j = int(np.argmax(profile < half))
    # linear interpolation between the pixels that straddle the half maximum
    r = j - 1 + (profile[j - 1] - half) / (profile[j - 1] - profile[j])
    assert r == pytest.approx(fwhm / 2.0, abs=0.1)
    # and the continuous density does too
    assert psf_density(kind, fwhm / 2, fwhm) == pytest.approx(psf_density(kind, 0.0, fwhm) / 2, rel=1e-12)


def test_gaussian_psf_variance():
    """Per axis: sigma^2 of the Gaussian plus 1/12 of the pixel box."""
    fwhm = 4.0
    image = np.zeros((81, 81))
    image[40, 40] = 1.0
    out = apply_psf(image, _psf("gauss", fwhm, psf_radius=40))
    d = np.arange(81) - 40.0
    var_fast = (out.sum(axis=0) * d * d).sum() / out.sum()
    sigma2 = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2
    assert var_fast == pytest.approx(sigma2 + 1.0 / 12.0, rel=1e-6)


@pytest.mark.parametrize("kind", ["gauss", "fiber"])
def test_psf_densities_integrate_to_one(kind):
    r = np.linspace(0, 4000.0, 4_000_001)
    ring = 2 * math.pi * r * psf_density(kind, r, 3.0)
    area = ((ring[1:] + ring[:-1]) / 2 * np.diff(r)).sum()
    tail = 3.0 * 0.652383 / 4000 if kind == "fiber" else 0.0     # fibre: g / R beyond R
    assert area == pytest.approx(1.0 - tail, abs=1e-6)


def test_psf_units_are_micrometres_over_millimetre_pixels():
    effects = DetectorEffects(psf="gauss", psf_fwhm=172.0, pixel=0.172)
    assert effects.psf_fwhm_pixels == pytest.approx(1.0)


def test_psf_radius_limits_where_light_goes():
    image = np.zeros((61, 61))
    image[30, 30] = 1000.0
    out = apply_psf(image, _psf("fiber", 2.0, psf_radius=5))
    floor = out[0, 0]                         # the tail's light, spread evenly
    assert floor > 0
    d2 = (np.arange(61)[:, None] - 30) ** 2 + (np.arange(61)[None, :] - 30) ** 2
    assert np.allclose(out[d2 > 25], floor, rtol=0, atol=1e-9)
    assert (out[d2 <= 25] > floor).all()


def test_auto_radius_follows_noisify():
    # Gaussian: 1 + ceil(sqrt(ln(I / (sqrt(I)/10)) / ln 16) * fwhm)
    assert auto_psf_radius("gauss", 2.0, 1.0e4) == 1 + math.ceil(math.sqrt(math.log(1000.0) / math.log(16)) * 2.0)
    # fibre: 1 + ceil(g I / (sqrt(I)/10))
    assert auto_psf_radius("fiber", 2.0, 1.0e4) == 1 + math.ceil(2.0 * 0.652383013252053 * 1000.0)
    assert auto_psf_radius("gauss", 2.0, 0.0) == 1


def test_psf_acts_on_counted_photons():
    """With noise, the PSF spreads the Poisson counts: the total is the counted photons."""
    effects = _effects(psf="gauss", psf_fwhm=200.0)
    photons = np.zeros((64, 64))
    photons[32, 32] = 5000.0
    adu = apply_detector_effects(photons, effects, seed=21)
    counts = apply_detector_effects(photons, _effects(), seed=21)
    assert adu.sum() == pytest.approx(counts.sum(), rel=1e-12)
    assert adu[32, 32] < 0.5 * counts[32, 32]


# ---------------------------------------------------------------------------
# overloads and the 16-bit image
# ---------------------------------------------------------------------------

def test_overloads_are_clipped_and_counted():
    photons = np.array([[10.0, 7.0e4, 2.0e5], [0.0, 1.0e3, 5.0e4]])
    effects = _effects(gain=1.0, adc=40.0, noise=False, overload=6.0e4)
    adu = apply_detector_effects(photons, effects, seed=0)
    assert adu.tolist() == [[50.0, 6.0e4, 6.0e4], [40.0, 1040.0, 50040.0]]
    assert count_overloads(adu, effects) == 2


def test_noisy_overloads_are_clipped():
    photons = np.array([[10.0, 7.0e4, 2.0e5, 1.0e8]])
    adu = apply_detector_effects(photons, _effects(adc=40.0, readout=2.0), seed=1)
    assert adu[0, 1:].tolist() == [65535.0] * 3 and adu[0, 0] < 100
    assert count_overloads(adu, DetectorEffects()) == 3


def test_uint16_truncates_and_clips_like_noisify():
    adu = np.array([[-5.0, 0.0, 0.99, 1.5, 2.999], [65534.7, 65535.0, 7e4, np.nan, 40.2]])
    assert to_uint16(adu).tolist() == [[0, 0, 0, 1, 2], [65534, 65535, 65535, 0, 40]]
    assert to_uint16(adu).dtype == np.uint16


# ---------------------------------------------------------------------------
# seeds and settings
# ---------------------------------------------------------------------------

def test_deterministic_in_the_seed():
    effects = DetectorEffects(readout=2.0, flicker=0.02, psf="gauss")
    photons = np.random.default_rng(5).random((50, 60)) * 30
    a = apply_detector_effects(photons, effects, seed=123)
    assert np.array_equal(a, apply_detector_effects(photons, effects, seed=123))
    assert not np.array_equal(a, apply_detector_effects(photons, effects, seed=124))


def test_each_effect_has_its_own_stream():
    """Adding flicker (drawn before the photons) or read-out noise leaves the photon counts as they were."""
    photons = _flat(7.0)
    counts = apply_detector_effects(photons, _effects(), seed=31)
    with_readout = apply_detector_effects(photons, _effects(readout=1e-9), seed=31)
    assert np.allclose(with_readout, counts, rtol=0, atol=1e-6)
    with_flicker = apply_detector_effects(photons, _effects(flicker=1e-15, flicker_mode="image"), seed=31)
    assert np.array_equal(with_flicker, counts)


def test_default_settings_are_noisify_s():
    e = DetectorEffects()
    assert (e.noise, e.gain, e.adc, e.readout, e.flicker, e.calibration, e.calib_seed, e.psf,
            e.psf_fwhm, e.psf_radius, e.overload) == (True, 1.0, 40.0, 0.0, 0.0, 0.03, 123456789, "none",
                                                       46.0, 0, 65535.0)


def test_from_mapping():
    e = DetectorEffects.from_mapping({"readout": 3, "psf": "fiber", "psf_fwhm": 60.0, "noise": True})
    assert (e.readout, e.psf, e.psf_fwhm) == (3, "fiber", 60.0)
    assert DetectorEffects.from_mapping({}) == DetectorEffects()


@pytest.mark.parametrize("mapping, words", [
    ({"read_noise": 3}, "unknown setting 'read_noise'"),
    ({"gain": "2"}, "gain must be a number"),
    ({"gain": 0}, "gain must be > 0"),
    ({"readout": -1.0}, "readout must be >= 0"),
    ({"psf": "lorentz"}, "psf must be one of none, gauss, fiber"),
    ({"flicker_mode": "shot"}, "flicker_mode must be one of pixel, image"),
    ({"psf_radius": 2.5}, "psf_radius must be a whole number"),
    ({"noise": "yes"}, "noise must be true or false"),
    ({"adc": float("nan")}, "adc must be finite"),
    ({"calib_seed": True}, "calib_seed must be a whole number"),
])
def test_bad_settings_are_one_clear_line(mapping, words):
    with pytest.raises(InputError) as info:
        DetectorEffects.from_mapping(mapping)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_images_and_seeds():
    with pytest.raises(InputError, match="NaN or infinite"):
        apply_detector_effects(np.array([[1.0, np.nan]]), DetectorEffects(), seed=0)
    with pytest.raises(InputError, match="seed"):
        apply_detector_effects(np.ones((2, 2)), DetectorEffects(), seed=-1)
    with pytest.raises(InputError, match="calibration map of shape"):
        apply_detector_effects(np.ones((2, 2)), DetectorEffects(), seed=0, calibration=np.ones((3, 3)))
