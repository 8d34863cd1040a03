"""Tests for reference.rng: bit-exact emulation of nanoBragg's generators.

The noise tests replay the C reference corpus (float image in, noisy
SMV image out).  The orientation tests compare against values printed
by the C functions themselves, because the corpus does not print the
mosaic matrices.
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from reference import rng

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "c_corpus"
CASES_JSON = CORPUS / "cases" / "cases.json"
SMV_HEADER_BYTES = 512


# ---------------------------------------------------------------------------
# Corpus helpers
# ---------------------------------------------------------------------------
def _corpus_cases():
    """Case entries from cases.json, or [] when the corpus is absent."""
    if not CASES_JSON.is_file():
        return []
    return json.loads(CASES_JSON.read_text())


def _read_smv(path):
    """Read an SMV image: returns (header dict, uint16 array (slow, fast))."""
    raw = path.read_bytes()
    text = raw[:SMV_HEADER_BYTES].decode("ascii", errors="replace")
    header = dict(re.findall(r"(\w+)=([^;\n]*);", text))
    n_fast, n_slow = int(header["SIZE1"]), int(header["SIZE2"])
    dtype = "<u2" if header.get("BYTE_ORDER", "little_endian") == "little_endian" else ">u2"
    data = np.frombuffer(raw[SMV_HEADER_BYTES:], dtype=dtype, count=n_fast * n_slow)
    return header, data.reshape(n_slow, n_fast)


def _c_atoi(text):
    """Leading integer of ``text`` like C's atoi (0 when there is none)."""
    match = re.match(r"\s*[+-]?\d+", text)
    return int(match.group()) if match else 0


def _c_atof(text):
    """Leading number of ``text`` like C's atof (0.0 when there is none)."""
    match = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return float(match.group()) if match else 0.0


def _noise_settings(args, n_slow, n_fast):
    """Seed (C-internal), ADC offset and ROI mask as the C parser sets them.

    C matches options with strstr (substring), so we do too.
    """
    seed_c = -12345           # the corpus runs all use -seed 12345 unless set
    adc = 40.0
    roi = [-1, -1, -1, -1]
    for i, arg in enumerate(args):
        if "-seed" in arg and i + 1 < len(args):
            seed_c = -_c_atoi(args[i + 1])
        if "-adc" in arg and i + 1 < len(args):
            adc = _c_atof(args[i + 1])
        if "-roi" in arg and i + 4 < len(args):
            roi = [_c_atoi(a) for a in args[i + 1:i + 5]]
    xmin, xmax, ymin, ymax = roi
    # Unset (negative) limits default to the whole image; C's upper
    # defaults are one past the last pixel, which is harmless.
    xmin = 0 if xmin < 0 else xmin
    xmax = n_fast if xmax < 0 else xmax
    ymin = 0 if ymin < 0 else ymin
    ymax = n_slow if ymax < 0 else ymax
    fast = np.arange(n_fast)[None, :]
    slow = np.arange(n_slow)[:, None]
    active = (fast >= xmin) & (fast <= xmax) & (slow >= ymin) & (slow <= ymax)
    return seed_c, adc, active


def _noise_summary(stdout_text):
    """(photons string, overloads int) from the C noise summary line."""
    match = re.search(r"^(\S+) photons on noise image \((\d+) overloads\)",
                      stdout_text, re.MULTILINE)
    assert match, "noise summary line missing from stdout.txt"
    return match.group(1), int(match.group(2))


_CASES = _corpus_cases()
_NOISE_CASES = [c["name"] for c in _CASES
                if (CORPUS / "cases" / c["name"] / "noise.img").is_file()]


@pytest.fixture(scope="module")
def corpus():
    if not CASES_JSON.is_file():
        pytest.skip(f"C reference corpus not found at {CORPUS}")
    return {c["name"]: c for c in _CASES}


# ---------------------------------------------------------------------------
# 1. Noise image against the C corpus
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", _NOISE_CASES or
                         [pytest.param("corpus-missing", marks=pytest.mark.skip(
                             reason=f"C reference corpus not found at {CORPUS}"))])
def test_noise_image_matches_c_corpus(corpus, name):
    case_dir = CORPUS / "cases" / name
    _, expected = _read_smv(case_dir / "noise.img")
    n_slow, n_fast = expected.shape
    float_image = np.fromfile(case_dir / "float.bin", dtype="<f4").reshape(n_slow, n_fast)
    seed_c, adc, active = _noise_settings(corpus[name]["args"], n_slow, n_fast)

    image, photons, overloads = rng.noise_image(float_image, active, seed_c, adc)

    agreement = float(np.mean(image == expected))
    print(f"{name}: {agreement:.4%} of pixels identical")
    assert agreement >= 0.99, f"{name}: only {agreement:.4%} of pixels match C"
    photons_c, overloads_c = _noise_summary((case_dir / "stdout.txt").read_text())
    assert f"{photons:.0f}" == photons_c
    assert overloads == overloads_c


# ---------------------------------------------------------------------------
# 2. Values obtained by calling the C functions (ran1, gaussdev,
#    mosaic_rotation_umat, umat2misset copied from nanoBragg.c into a
#    throw-away harness, gcc -O3, x86-64), printed with %.9g / %.17g.
# ---------------------------------------------------------------------------
C_RAN1_SEED_M12345 = [0.923120558, 0.333146602, 0.197888419, 0.949421704, 0.783800364]
C_IDUM_AFTER_5 = 2140623151
C_GAUSSDEV_SEED_M1 = [-0.836853981, -0.172279969, 0.187117606, 1.61543977]

# mosaic_rotation_umat(0.8 deg in radians, seed -42): first three matrices.
C_MOSAIC_08_SEED_M42 = [
    [0.99992024587476647, -0.0010148142134774388, 0.012588567903400124,
     0.00098660919738290304, 0.99999698983880758, 0.002246534134037611,
     -0.012590809824551838, -0.0022339349667975616, 0.99991823717868356],
    [0.99990491445193852, -0.013763005108350971, -0.00086124633465949887,
     0.013764761190576848, 0.99990312386661639, 0.0020674213765748449,
     0.00083270896947779159, -0.0020790796448030271, 0.9999974920086564],
    [0.99993260697801278, -0.0067913902309094405, -0.0094158653817134289,
     0.0068387567699879151, 0.99996407770454543, 0.0050074650611624865,
     0.009381519492917231, -0.0050715204060839967, 0.99994313176938954],
]
C_MISSET_08_SEED_M42 = [
    [-0.0022341139175328967, 0.012591142515301655, 0.00098668756961497149],
    [-0.0020790818634578161, -0.00083270906571180823, 0.013765200665488923],
    [-0.0050717653437559723, -0.0093816571141699008, 0.0068391110539572303],
]

# mosaic_rotation_umat(90.0, seed -321): C's "-misset random" draw.
C_MOSAIC_90_SEED_M321 = [
    [0.35120610536122654, 0.93471753973589522, -0.054381913050885966,
     -0.73232085951516768, 0.23803974944702874, -0.63799940156881163,
     -0.58340417403028999, 0.26389429435527945, 0.76811416542774702],
    [0.17755304883453216, 0.61790036371798862, 0.76594650946834386,
     0.81860753233138139, -0.52472711268528449, 0.2335447820510903,
     0.54622030615850303, 0.5855429939211485, -0.59898479063325905],
    [0.68617532143772597, -0.41685071374027338, 0.59615342882856781,
     0.57246450124697501, -0.19621089481554937, -0.79610657550841357,
     0.44882939193181831, 0.88754536064919298, 0.10399716211612778],
]
C_MISSET_90_SEED_M321 = [
    [0.33092730014121835, 0.62291380536967389, -1.1236181290445508],
    [2.3675418135330735, -0.57784525965750366, 1.3572082371323768],
    [1.4541542951539261, -0.46545494192730896, 0.69529855562010157],
]

RTD = 180.0 * (1.0 / math.pi)   # C: 180.0*M_1_PI


def test_ran1_matches_c():
    state = rng.new_stream(-12345)
    got = [rng.ran1(state) for _ in range(5)]
    assert got == [float(np.float32(v)) for v in C_RAN1_SEED_M12345]
    assert state[0] == C_IDUM_AFTER_5


def test_gaussdev_matches_c():
    state, pstate = rng.new_stream(-1), rng.new_sampler_state()
    got = [rng.gaussdev(state, pstate) for _ in range(4)]
    assert got == [float(np.float32(v)) for v in C_GAUSSDEV_SEED_M1]


@pytest.mark.parametrize("mosaicity, seed_c, umats, missets", [
    (0.8 / RTD, -42, C_MOSAIC_08_SEED_M42, C_MISSET_08_SEED_M42),
    (90.0, -321, C_MOSAIC_90_SEED_M321, C_MISSET_90_SEED_M321),
])
def test_mosaic_umat_and_misset_match_c(mosaicity, seed_c, umats, missets):
    state = rng.new_stream(seed_c)
    for expected_umat, expected_misset in zip(umats, missets):
        umat = rng.mosaic_rotation_umat(mosaicity, state)
        np.testing.assert_array_equal(umat, np.array(expected_umat))
        np.testing.assert_array_equal(rng.umat2misset(umat), np.array(expected_misset))


def test_umat2misset_gimbal_lock_and_identity():
    np.testing.assert_array_equal(rng.umat2misset(np.eye(3).ravel()), [0.0, 0.0, 0.0])
    # uzx = -1: rotation of +90 deg about y; C reports rotx=pi, roty=pi/2.
    locked = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0])
    np.testing.assert_allclose(rng.umat2misset(locked), [math.pi, math.pi / 2, math.pi])


# ---------------------------------------------------------------------------
# 3. Properties
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mosaicity", [0.8 / RTD, 0.3, 90.0])
def test_mosaic_matrices_are_proper_rotations(mosaicity):
    state = rng.new_stream(-2024)
    for _ in range(200):
        u = rng.mosaic_rotation_umat(mosaicity, state).reshape(3, 3)
        np.testing.assert_allclose(u @ u.T, np.eye(3), atol=1e-12)
        assert abs(np.linalg.det(u) - 1.0) < 1e-12


def test_ran1_range_and_seed_handling():
    state = rng.stream_from_user_seed(12345)
    np.testing.assert_array_equal(state, rng.new_stream(-12345))
    values = np.array([rng.ran1(state) for _ in range(20000)])
    assert values.min() > 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
    # Values are exactly representable as float32, as C's float return.
    np.testing.assert_array_equal(values, values.astype(np.float32).astype(np.float64))
    # Seed 0 is replaced by 1, as in C.
    a, b = rng.new_stream(0), rng.new_stream(-1)
    assert [rng.ran1(a) for _ in range(10)] == [rng.ran1(b) for _ in range(10)]


def test_reproducibility():
    def draw(seed_c):
        state, pstate = rng.new_stream(seed_c), rng.new_sampler_state()
        return [rng.poidev(xm, state, pstate) for xm in (0.5, 3.0, 30.0, 3e6, 30.0)]
    assert draw(-7) == draw(-7)
    assert draw(-7) != draw(-8)
    image = np.random.default_rng(0).uniform(0, 50, (20, 30)).astype(np.float32)
    active = np.ones(image.shape, dtype=bool)
    first = rng.noise_image(image, active, -5, 40.0)
    second = rng.noise_image(image, active, -5, 40.0)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1:] == second[1:]


def test_poidev_mean_and_nonnegative():
    state, pstate = rng.new_stream(-11), rng.new_sampler_state()
    for xm in (2.5, 40.0):
        draws = np.array([rng.poidev(xm, state, pstate) for _ in range(4000)])
        assert draws.min() >= 0.0
        assert np.all(draws == np.floor(draws))
        assert abs(draws.mean() - xm) < 5 * math.sqrt(xm / draws.size)
    assert rng.poidev(-3.0, state, pstate) == 0.0


def test_noise_image_roi_and_clipping():
    image = np.full((4, 5), 1.0e9, dtype=np.float32)
    active = np.zeros(image.shape, dtype=bool)
    active[1:3, 2:4] = True
    out, photons, overloads = rng.noise_image(image, active, -12345, 40.0)
    assert out.dtype == np.uint16
    assert np.all(out[~active] == 0)
    assert np.all(out[active] == 65535)
    assert overloads == 4
    assert photons > 3.9e9
