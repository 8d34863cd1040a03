"""Gradients where they matter: the lattice factor in N, the structure factors in the table.

The lattice factor of a real number of cells N is the real-N form of
specs/physics.md ("Lattice factor for real N"): smooth in N, equal to C's for
whole N up to a sign that F_latt^2 does not see.  The structure-factor
gradient is checked on a real HKL table, for nearest-node look-up and for
tricubic interpolation, against finite differences and with the forward image
against the reference engine (so that a wrong interpolation weight fails
even though autograd would differentiate it faithfully).

Image-level tests use only the Simulator's public interface
(``Simulator.from_args``, the parameter ``N``, the buffer ``Fhkl``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.func import functional_call  # noqa: E402

from reference.cli import parse_args  # noqa: E402
from reference.render import render as render_reference  # noqa: E402
from reference.render import trace_pixel as trace_reference  # noqa: E402
from reference.scene import build_scene  # noqa: E402
from torchsim import Simulator  # noqa: E402
from torchsim import lattice  # noqa: E402


def _c_sincg(h, N):
    """C's sin(pi N h) / sin(pi h) on the whole index, in float64 NumPy (an independent oracle)."""
    h = np.asarray(h, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.sin(math.pi * h * N) / np.sin(math.pi * h)
    return np.where(h == 0, float(N), value)


# ---- the real-N interference function ----------------------------------------

def test_real_N_form_is_C_form_for_whole_N():
    """For whole N, sin(pi N delta)/sin(pi delta) is C's value times (-1)^(h0 (N-1)).

    Indices up to 60, offsets anywhere but on a node other than 0 (there C's
    form is 0/0 in rounding).  C's form carries the rounding of pi N h
    divided by sin(pi delta): measured, the two differ by at most
    0.8 eps N^2 pi |h| / |sin(pi delta)|; the bound is 2 eps of that.
    """
    rng = np.random.default_rng(3)
    h0 = rng.integers(-60, 61, size=4000).astype(np.float64)
    delta = np.concatenate([rng.uniform(-0.5, 0.5, 3000), rng.uniform(-1e-6, 1e-6, 950), np.full(50, 0.5)])
    h = np.concatenate([h0 + delta, [0.0]])
    delta = h - np.round(h)               # what the kernel forms: exact, |delta| <= 1/2
    eps = np.finfo(np.float64).eps
    for N in (2, 3, 5, 8, 25):
        ours = lattice.interference(torch.as_tensor(delta), torch.tensor(float(N), dtype=torch.float64)).numpy()
        sign = np.where((np.round(h) * (N - 1)) % 2 == 0, 1.0, -1.0)
        c = _c_sincg(h, N)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = 2 * eps * N * N * math.pi * np.abs(h) / np.abs(np.sin(math.pi * delta))
        bound = np.where(h == 0, 0.0, bound) + 4 * eps * N
        assert np.all(np.abs(ours * sign - c) <= bound), N
        assert ours[-1] == N


def test_real_N_form_is_smooth_in_N_and_finite_at_the_node():
    """A 0.1% change of N changes the main peak by at most 0.1% (C's form on the whole index: x170).

    On the main peak (N |delta| < 1/2) d ln F / d ln N = x cot x with
    x = pi N delta, between 0 and 1.  At the node the value is N and dF/dN
    is 1, whatever the node's index (C's form gives pi h0 / sin(pi delta)).
    """
    fractions = torch.tensor([0.0, 1e-300, 1e-12, 1e-6, 1e-3, 0.1, 0.3, 0.45], dtype=torch.float64)
    for N0 in (5.0, 5.3, 12.7):
        delta = fractions / N0
        N = torch.tensor(N0, dtype=torch.float64, requires_grad=True)
        F = lattice.interference(delta, N)
        F1 = lattice.interference(delta, N.detach() * 1.001)
        change = (F1 - F.detach()).abs() / F.detach().abs()
        assert torch.all(change <= 1.0001e-3), (N0, change)
        (grad,) = torch.autograd.grad(F[0], N, retain_graph=True)
        assert F[0].item() == N0 and grad.item() == 1.0
        (grads,) = torch.autograd.grad(F.sum(), N)
        assert torch.isfinite(grads)


def test_real_N_form_series_meets_quotient():
    """On both sides of the switch from the series to the quotient the value is right to rounding.

    The reference value is the quotient in float64 (in float32 the cast of
    its operands' rounding, ~eps of the value, is the bound).
    """
    for dtype, tol in ((torch.float64, 2e-16), (torch.float32, 1.2e-7)):
        reach = torch.finfo(dtype).eps ** 0.125
        for N0 in (0.5, 1.0, 2.5, 7.0, 40.3):
            x = reach / max(N0, 2.0) / math.pi
            delta = torch.tensor([x * (1 - 1e-6), x * (1 + 1e-6)], dtype=dtype)
            F = lattice.interference(delta, torch.tensor(N0, dtype=dtype))
            for d, value in zip(delta.tolist(), F.tolist()):
                exact = math.sin(math.pi * N0 * d) / math.sin(math.pi * d)
                assert abs(value - exact) <= 4 * tol * abs(exact), (dtype, N0, d)


def test_real_N_form_in_float32():
    """In float32 the factor keeps its relative accuracy at every offset (its arguments stay below pi N / 2).

    Against float64 at the same offsets: measured 1.6e-7 of N at most; the
    bound is 4 float32 epsilons of N.
    """
    rng = np.random.default_rng(8)
    delta = torch.as_tensor(np.concatenate([rng.uniform(-0.5, 0.5, 2000), rng.uniform(-1e-3, 1e-3, 500), [0.0]]))
    for N0 in (1.0, 2.5, 5.0, 17.3, 60.0):
        single = lattice.interference(delta.float(), torch.tensor(N0, dtype=torch.float32)).double()
        double = lattice.interference(delta.float().double(), torch.tensor(N0, dtype=torch.float64))
        assert torch.all((single - double).abs() <= 4 * torch.finfo(torch.float32).eps * N0), N0


@pytest.mark.parametrize("N0", [0.7, 2.5, 4.3, 9.99])
def test_real_N_form_gradcheck(N0):
    """gradcheck in N and delta, offsets at the node, near it, across the series switch, at 1/2."""
    delta = torch.tensor([0.0, 1e-9, 2e-4, 8e-4, 1.75e-3, 3e-3, 0.0111, 0.05, 0.2, -0.37, 0.5, -0.5],
                         dtype=torch.float64, requires_grad=True)
    N = torch.tensor(N0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda N: lattice.interference(delta.detach(), N), (N,), eps=1e-7,
                                    atol=1e-7, rtol=1e-6)
    inner = delta.detach()[1:].clone().requires_grad_(True)   # (delta = 0 is a kink of |delta| only)
    assert torch.autograd.gradcheck(lambda d: lattice.interference(d, N.detach()), (inner,), eps=1e-9,
                                    atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [lattice.ROUND, lattice.GAUSS])
def test_spot_shapes_are_smooth_in_N(shape):
    """The round and Gaussian shapes depend on N through polynomials: gradcheck at real N."""
    rng = np.random.default_rng(5)
    d = [torch.as_tensor(rng.uniform(-0.5, 0.5, 50)) for _ in range(3)]
    recip = torch.as_tensor([[0.02, 0.0, 0.0], [0.001, 0.018, 0.0], [0.002, 0.003, 0.015]], dtype=torch.float64)
    fudge = torch.tensor(1.3, dtype=torch.float64)
    N = torch.tensor([3.3, 4.7, 5.5], dtype=torch.float64, requires_grad=True)

    def F(N):
        return lattice.lattice_factor_reduced(*d, None, None, None, shape, N, recip, fudge)
    assert torch.autograd.gradcheck(F, (N,), eps=1e-7, atol=1e-6, rtol=1e-6)


# ---- image level: the Simulator's N -------------------------------------------

SCENE = ["-cell", "50", "60", "70", "85", "95", "100", "-misset", "3", "4", "5", "-default_F", "10",
         "-N", "5", "-lambda", "1.2", "-distance", "80", "-detpixels", "10", "-pixel", "1.5",
         "-oversample", "1", "-Xbeam", "7.2", "-Ybeam", "8.1"]


def _image_at_N(sim, N):
    return functional_call(sim, {"N": N}, ())


def test_image_changes_by_about_N_to_the_sixth_when_N_grows_by_0p1_percent():
    """N x 1.001 changes the image by about 0.1-1% (C's form on the whole index: the maximum x170).

    On a spot's main peak d ln F_latt^2 / d ln N is 2 x cot x per axis
    (x = pi N delta), between 0 and 2: the maximum grows by at most
    1.001^6 - 1 = 0.6%, and by more than 0.1% near a node.
    """
    sim = Simulator.from_args(SCENE)
    with torch.no_grad():
        N = sim.N.detach().clone()
        before = _image_at_N(sim, N)
        after = _image_at_N(sim, N * 1.001)
    top = before.max()
    assert 1.001 < after.max() / top <= 1.001 ** 6
    change = (after - before).abs() / top
    assert change.max() < 1.5e-2


def test_image_at_whole_N_equals_the_reference():
    """With N free (requiring a gradient) the real-N form still gives C's image for whole N.

    Measured: 8.5e-13 of the maximum (the Simulator re-derives the geometry
    in torch; sin(pi N h) amplifies its rounding); a wrong sign or form of
    the factor gives differences of order 1.
    """
    sim = Simulator.from_args(SCENE)
    assert sim.N.requires_grad
    image = sim().detach().numpy()
    ref = render_reference(build_scene(parse_args(SCENE), echo=False), progress=False,
                           image_dtype=np.float64).image
    assert np.abs(image - ref).max() <= 1e-10 * np.abs(ref).max()


@pytest.mark.parametrize("extra", [[], ["-N", "10"], ["-detpixels", "30", "-pixel", "0.5"]],
                         ids=["N5", "N10", "fine_pixels"])
def test_dI_dN_is_of_the_order_of_I_over_N(extra):
    """d ln(sum of the image) / d ln N_j is of order 1 at whole N.

    A fully sampled spot's integral grows like N along each axis (1); coarse
    pixels and side lobes move it a little: measured -0.1 to 3.5 on these
    scenes.  C's form on the whole index differentiates a pole in N at every
    node: -4140 to 71 on the same scenes.
    """
    sim = Simulator.from_args(SCENE + extra)
    loss = sim().sum()
    loss.backward()
    ratio = sim.N.detach() * sim.N.grad / loss.detach()
    assert torch.all(ratio.abs() <= 5.0), ratio.tolist()


@pytest.mark.parametrize("N", [(3.3, 4.7, 5.5), (2.5, 2.5, 2.5), (6.01, 3.999, 4.5)])
def test_gradcheck_at_real_N(N):
    sim = Simulator.from_args(SCENE)
    x0 = torch.tensor(N, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        scale = 1.0 / float(_image_at_N(sim, x0).abs().max())
    assert torch.autograd.gradcheck(lambda x: _image_at_N(sim, x) * scale, (x0,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("N", [(5.0, 5.0, 5.0), (4.37, 5.81, 3.12)])
def test_dI_dN_equals_central_differences(N):
    """A weighted image sum: autograd against central differences with steps 1e-4 and 1e-5.

    The difference of the two finite-difference estimates bounds their own
    error (O(step^2)); autograd must lie within a few times that.
    """
    sim = Simulator.from_args(SCENE)
    weights = torch.as_tensor(np.random.default_rng(11).uniform(0.5, 1.5, (10, 10)))
    x0 = torch.tensor(N, dtype=torch.float64, requires_grad=True)
    loss = (_image_at_N(sim, x0) * weights).sum()
    (grad,) = torch.autograd.grad(loss, x0)
    with torch.no_grad():
        for j in range(3):
            fds = []
            for step in (1e-4, 1e-5):
                e = torch.zeros(3, dtype=torch.float64)
                e[j] = step
                up = (_image_at_N(sim, x0 + e) * weights).sum()
                down = (_image_at_N(sim, x0 - e) * weights).sum()
                fds.append(float((up - down) / (2 * step)))
            error = abs(fds[0] - fds[1]) + 1e-9 * abs(fds[1])
            assert abs(float(grad[j]) - fds[1]) <= 4 * error, (j, float(grad[j]), fds)
            assert abs(float(grad[j])) > 1e-3 * float(loss)      # N does move the image


# ---- image level: the structure factors on a real table ----------------------

def _write_table(path):
    """An HKL table, indices -3..3, amplitudes that differ from entry to entry."""
    lines = []
    for h in range(-3, 4):
        for k in range(-3, 4):
            for l in range(-3, 4):
                F = 20.0 + 3.0 * h - 2.0 * k + 1.5 * l + 0.25 * h * k * l + 0.5 * (h * h - l * l)
                lines.append(f"{h} {k} {l} {F:.3f}")
    path.write_text("\n".join(lines) + "\n")


def _table_scene(tmp_path, interpolate):
    hkl = tmp_path / "table.hkl"
    _write_table(hkl)
    return ["-hkl", str(hkl), "-cell", "30", "30", "30", "90", "90", "90", "-misset", "10", "20", "30",
            "-lambda", "1", "-N", "3", "-distance", "150", "-detpixels", "12", "-pixel", "1",
            "-oversample", "1", "-dump", str(tmp_path / "Fdump.bin"),
            "-interpolate" if interpolate else "-nointerpolate"]


@pytest.mark.parametrize("interpolate", [False, True], ids=["nearest", "tricubic"])
def test_structure_factor_gradient_on_a_real_table(interpolate, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _table_scene(tmp_path, interpolate)
    sim = Simulator.from_args(args)
    scene = build_scene(parse_args(args), echo=False)
    assert scene.interpolate == interpolate and scene.hkls == 343

    # the forward image is the reference engine's (a wrong weight or entry shows here);
    # measured 1e-14 of the maximum
    ref = render_reference(scene, progress=False, image_dtype=np.float64).image
    with torch.no_grad():
        image = sim()
    assert np.abs(image.numpy() - ref).max() <= 1e-12 * np.abs(ref).max()

    weights = torch.as_tensor(np.random.default_rng(2).uniform(0.5, 1.5, image.shape))
    sim.Fhkl.requires_grad_(True)
    loss = (sim() * weights).sum()
    loss.backward()
    grad = sim.Fhkl.grad.detach().clone()
    sim.Fhkl.requires_grad_(False)

    def loss_at(F):
        saved = sim.Fhkl.detach().clone()
        with torch.no_grad():
            sim.Fhkl.copy_(F)
            value = float((sim() * weights).sum())
            sim.Fhkl.copy_(saved)
        return value

    F0 = sim.Fhkl.detach().clone()
    # the image is quadratic in the table: central differences are exact up to
    # rounding (measured: 1e-11 relative at most)
    step = 1e-2
    rng = np.random.default_rng(4)
    for _ in range(3):
        v = torch.as_tensor(rng.standard_normal(F0.shape))
        fd = (loss_at(F0 + step * v) - loss_at(F0 - step * v)) / (2 * step)
        assert float((grad * v).sum()) == pytest.approx(fd, rel=1e-9)
    for flat in torch.argsort(grad.abs().reshape(-1), descending=True)[:8].tolist():
        e = torch.zeros(F0.numel(), dtype=F0.dtype)
        e[flat] = step
        e = e.reshape(F0.shape)
        fd = (loss_at(F0 + e) - loss_at(F0 - e)) / (2 * step)
        assert float(grad.reshape(-1)[flat]) == pytest.approx(fd, rel=1e-9)

    # non-zero where the spots are: the entry of the brightest pixel's reflection, and many more
    s, f = np.unravel_index(np.argmax(ref), ref.shape)
    t = trace_reference(scene, int(s), int(f))
    node = tuple(int(t[name]) + 3 for name in ("h0", "k0", "l0"))
    assert grad[node] != 0.0
    assert int((grad != 0).sum()) >= (40 if interpolate else 10)
    # the padding slot at each axis' end is never read
    assert torch.all(grad[-1] == 0) and torch.all(grad[:, -1] == 0) and torch.all(grad[:, :, -1] == 0)
