"""The reference kernel's spec-mode lattice factor: sin(pi N h)/sin(pi h) as a Chebyshev polynomial.

Spec mode evaluates the square crystal's interference function of a whole N
as U_{N-1}(cos(pi (h - h0))) with the sign (-1)^(h0 (N - 1)) (see
``reference.kernel.interference``); -c_parity keeps C's quotient of sines.
The exact values come from long double (64-bit mantissa) sines.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference.kernel as K
import reference.render as R
from reference.cli import parse_args
from reference.scene import build_scene


def _exact(h, N):
    """sin(pi N h) / sin(pi h) in long double.

    Taken at the offset d = h - h0 from the nearest node (exact in binary
    arithmetic), where it is (-1)^(h0 (N - 1)) sin(pi N d) / sin(pi d): the
    quotient at h itself divides two roundings of zero at a node.
    """
    h0 = int(np.ceil(h - 0.5))
    d = np.longdouble(h - h0)
    sign = -1 if (h0 * (N - 1)) % 2 else 1
    if d == 0:
        return np.longdouble(sign * N)
    pi = np.longdouble("3.14159265358979323846264338327950288")
    return sign * np.sin(pi * N * d) / np.sin(pi * d)


def _points(rng):
    """Fractional indices: anywhere, near nodes, and near the zeros between them."""
    nodes = rng.integers(-60, 61, size=200).astype(float)
    return np.concatenate([
        rng.uniform(-60, 60, size=400),
        nodes + rng.uniform(-1e-6, 1e-6, size=200),
        nodes,
        nodes + 0.5 + rng.uniform(-1e-9, 1e-9, size=200),
    ])


@pytest.mark.parametrize("N", [2, 3, 5, 10, 17, 32])
def test_chebyshev_form_is_the_interference_function(N):
    rng = np.random.default_rng(N)
    worst = 0.0
    for h in _points(rng):
        h0 = int(np.ceil(h - 0.5))
        ours = K.interference(h, h0, float(N), N - 1)
        worst = max(worst, abs(ours - float(_exact(h, N))) / N)
    # measured: 5.3e-16 (N = 5) to 2.7e-14 (N = 32), the recurrence's rounding growing with N.
    # C's quotient of sines is off by up to 8e-7 (N = 3) a millionth of a cell from a node, and
    # by thousands at a node itself, where both sines are roundings of zero.
    assert worst <= 3e-14


def test_the_sines_are_kept_where_asked():
    """degree -1 is C's sincg, bit for bit."""
    for h in (0.3, 7.25, -13.0001):
        assert K.interference(h, int(np.ceil(h - 0.5)), 5.0, -1) == K.sincg(np.pi * h, 5.0)


def test_which_axes_use_the_polynomial():
    assert list(R.chebyshev_degrees((5.0, 10.0, 1.0), parity=False)) == [4, 9, 0]
    assert list(R.chebyshev_degrees((5.0, 10.0, 1.0), parity=True)) == [-1, -1, -1]
    assert list(R.chebyshev_degrees((5.5, R.CHEBYSHEV_MAX_N + 1.0, float(R.CHEBYSHEV_MAX_N)), parity=False)) == [
        -1, -1, R.CHEBYSHEV_MAX_N - 1]


def _image(args, folder, monkeypatch, sines):
    monkeypatch.chdir(folder)
    if sines:
        monkeypatch.setattr(R, "chebyshev_degrees", lambda N, parity: np.full(3, -1, dtype=np.int64))
    scene = build_scene(parse_args(args), echo=False)
    return R.render(scene, progress=False, image_dtype=np.float64).image


@pytest.mark.parametrize("N", ["2", "7"])
def test_spec_image_equals_the_image_with_sines(N, tmp_path, monkeypatch):
    """A whole image (oversampled, phi steps, mosaic) with the polynomial and with C's sines."""
    args = ["-cell", "40", "50", "60", "80", "95", "100", "-lambda", "1.3", "-N", N, "-default_F", "100",
            "-distance", "60", "-detpixels", "48", "-pixel", "0.4", "-oversample", "2", "-phi", "3", "-osc", "2",
            "-phisteps", "2", "-mosaic", "1", "-mosaic_dom", "3", "-misset", "10", "20", "30"]
    (tmp_path / "poly").mkdir()
    (tmp_path / "sines").mkdir()
    poly = _image(args, tmp_path / "poly", monkeypatch, sines=False)
    sines = _image(args, tmp_path / "sines", monkeypatch, sines=True)
    assert poly.max() > 0
    # measured: 2.7e-13 of the maximum for N = 7 (the sines' error next to the nodes), 0 for N = 2
    assert np.abs(poly - sines).max() <= 5e-13 * np.abs(sines).max()
