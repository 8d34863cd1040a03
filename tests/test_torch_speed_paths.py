"""The torch engine's faster forward paths against the plain forms they replace.

* the Chebyshev form of the whole-N interference function (torchsim.lattice),
  accurate next to the node and equal to C's signed sin(pi N h) / sin(pi h);
* the padded structure-factor table read with one gather (torchsim.structure_factors);
* the orientation-major Miller-index product (torchsim.kernel.project);
* spec mode's unmasked sums (torchsim.kernel._needs_mask) against the masked ones;
* the heap settings that stop page faults between chunks (torchsim.allocator).
"""

from __future__ import annotations

import math
import resource
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torchsim import Simulator, kernel as K, lattice  # noqa: E402
from torchsim.allocator import keep_freed_memory  # noqa: E402
from torchsim.structure_factors import nearest_F, padded_index, take  # noqa: E402


def quotient(delta, N):
    """sin(pi N delta) / sin(pi delta) in float64, N at delta = 0."""
    d = torch.as_tensor(delta, dtype=torch.float64)
    s = torch.sin(math.pi * d)
    safe = torch.where(d == 0, torch.ones_like(s), s)
    return torch.where(d == 0, torch.full_like(d, float(N)), torch.sin(math.pi * N * d) / safe)


def offsets(n=200_001, seed=0):
    """|delta| <= 1/2: a uniform grid with the node, the edges and tiny values in it."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-0.5, 0.5, n, dtype=torch.float64)
    tiny = torch.tensor([0.0, 1e-300, -1e-12, 1e-9, 3e-6, -1e-4], dtype=torch.float64)
    return torch.cat((grid, tiny, torch.rand(n, generator=g, dtype=torch.float64) - 0.5))


@pytest.mark.parametrize("N", list(range(1, 21)) + [37])
def test_chebyshev_equals_the_quotient_in_float64(N):
    """Measured: at most 4e-15 of the peak N up to N = 20, 1e-14 at N = 37."""
    d = offsets()
    error = (lattice.chebyshev_interference(d, N) - quotient(d, N)).abs().max() / N
    assert error <= 5e-14, float(error)


@pytest.mark.parametrize("N", [2, 3, 5, 8, 10, 12, 16])
def test_chebyshev_in_float32_is_as_accurate_as_the_quotient(N):
    """In float32 the differences form keeps the quotient's accuracy next to the node (where the
    plain recurrence on cos x loses ~N^2 eps).  Measured (``python -m tests.test_torch_speed_paths``):
    at most 2.7e-7 of the peak up to N = 16, the float32 quotient 2.5e-7, the plain recurrence
    4.4e-6 at N = 16."""
    d64 = offsets()
    d = d64.float()                                  # the float32 offsets the kernel has
    exact = quotient(d.double(), N)
    ours = (lattice.chebyshev_interference(d, N).double() - exact).abs().max() / N
    assert ours <= 1e-6, float(ours)


def test_chebyshev_at_the_node_is_N_exactly():
    for dtype in (torch.float32, torch.float64):
        zero = torch.zeros(3, dtype=dtype)
        for N in (1, 2, 7, 12):
            assert torch.equal(lattice.chebyshev_interference(zero, N), torch.full_like(zero, N))


def test_chebyshev_gradient_and_in_place_steps():
    """With a gradient the steps run out of place (gradcheck); without one in place, same values."""
    d = (torch.rand(50, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: lattice.chebyshev_interference(x, 6), (d,))
    with torch.no_grad():
        in_place = lattice.chebyshev_interference(d.detach().clone(), 6)
    assert torch.equal(in_place, lattice.chebyshev_interference(d, 6).detach())


@pytest.mark.parametrize("N", [2, 3, 4, 5, 12, 15, 16, 20])
@pytest.mark.parametrize("as_pair", [False, True])
def test_reduced_form_is_C_sincg_with_its_sign(N, as_pair):
    """sincg_reduced(delta, n) = sin(pi N h) / sin(pi h) at h = n + delta, on both sides of
    CHEBYSHEV_MAX_N, with the node as a tensor or as the kernel's (coarse, fine) pair."""
    g = torch.Generator().manual_seed(N)
    n = torch.randint(-6, 7, (4000,), generator=g).double()
    d = torch.rand(4000, generator=g, dtype=torch.float64) - 0.5
    d = torch.where(d.abs() < 1e-3, torch.full_like(d, 1e-3), d)        # C's quotient on h is exact enough here
    h = n + d
    expected = torch.sin(math.pi * N * h) / torch.sin(math.pi * h)
    node = (n - 7.0, torch.full_like(n, 7.0)) if as_pair else n
    ours = lattice.sincg_reduced(d, node, torch.tensor(float(N)), N)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-10 * N)
    unsigned = lattice.sincg_reduced(d, node, torch.tensor(float(N)), N, signed=False)
    assert torch.allclose(unsigned.abs(), expected.abs(), rtol=0, atol=1e-10 * N)
    if N % 2 == 0:
        assert not torch.allclose(unsigned, expected, rtol=0, atol=1e-3)      # the sign was left out


def test_both_forms_are_used_around_the_threshold(monkeypatch):
    """Up to CHEBYSHEV_MAX_N the recurrence runs, above it the quotient."""
    calls = []
    real = lattice.chebyshev_interference
    monkeypatch.setattr(lattice, "chebyshev_interference", lambda d, N: calls.append(N) or real(d, N))
    d = torch.rand(10, dtype=torch.float64) - 0.5
    for N in (lattice.CHEBYSHEV_MAX_N, lattice.CHEBYSHEV_MAX_N + 1):
        lattice.sincg_reduced(d, torch.zeros(10, dtype=torch.float64), torch.tensor(float(N)), N)
    assert calls == [lattice.CHEBYSHEV_MAX_N]


# ---- structure factors ---------------------------------------------------

def lookup_loop(nodes, Fhkl, hkl_min, hkl_max, default_F):
    out = []
    for h, k, l in zip(*(x.tolist() for x in nodes)):
        idx = (h, k, l)
        if all(not math.isnan(v) and hkl_min[i] <= v <= hkl_max[i] for i, v in enumerate(idx)):
            out.append(float(Fhkl[int(h) - hkl_min[0], int(k) - hkl_min[1], int(l) - hkl_min[2]]))
        else:
            out.append(default_F)
    return torch.tensor(out, dtype=Fhkl.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_table_reads_what_a_range_test_reads(dtype):
    """Inside the range the table's entry, outside (NaN and infinities included) default_F; the
    table may be larger than the range (reference.fileio allocates one more entry per axis)."""
    g = torch.Generator().manual_seed(3)
    hkl_min, hkl_max = (-4, -2, 0), (3, 5, 6)
    Fhkl = torch.rand(9, 9, 8, generator=g, dtype=torch.float64) * 100     # one spare entry per axis
    nodes = [torch.randint(lo - 3, hi + 4, (3000,), generator=g).to(dtype) for lo, hi in zip(hkl_min, hkl_max)]
    nodes[0][:3] = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype)
    expected = lookup_loop(nodes, Fhkl, hkl_min, hkl_max, 7.5)
    assert torch.equal(nearest_F(*nodes, Fhkl, hkl_min, hkl_max, 7.5, True), expected)
    # the kernel's (coarse node, whole step) pairs
    pairs = [(x.double() - 5.0, torch.full_like(x, 5.0)) for x in nodes]
    pairs[0] = (pairs[0][0], pairs[0][1].clone())
    assert torch.equal(nearest_F(*pairs, Fhkl, hkl_min, hkl_max, 7.5, True), expected)


def test_padded_index_is_exact_for_large_tables():
    """Over 2^24 entries a float32 sum would round the index: it is formed in float64 there."""
    hkl_min, hkl_max = (-150, -150, -150), (150, 150, 150)           # 303^3 padded entries > 2^24
    corner = [torch.tensor([150.0, 149.0], dtype=torch.float32) for _ in range(3)]
    index = padded_index(corner, hkl_min, hkl_max)
    size = 303
    expected = [((h + 151) * size + (h + 151)) * size + (h + 151) for h in (150, 149)]
    assert index.tolist() == expected


def test_take_follows_the_index_layout():
    """The gather runs in the index's memory order and returns the index's shape and layout."""
    table = torch.rand(50, dtype=torch.float64)
    index = torch.randint(0, 50, (4, 5, 6, 3)).permute(2, 0, 3, 1)         # an orientation-major view
    values = take(table, index)
    assert torch.equal(values, table[index]) and values.stride() == index.stride()


def test_table_lookup_passes_gradients_to_the_table():
    Fhkl = torch.rand(3, 3, 3, dtype=torch.float64, requires_grad=True)
    nodes = [torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64)] * 3
    F = nearest_F(*nodes, Fhkl, (0, 0, 0), (2, 2, 2), 1.0, True)
    F.sum().backward()
    assert Fhkl.grad[0, 0, 0] == 1 and Fhkl.grad[1, 1, 1] == 1 and Fhkl.grad.sum() == 2


def tricubic_loop(h, k, l, Fhkl, hkl_min):
    """The 4 x 4 x 4 Lagrange interpolation point by point (float64)."""
    def weights(x):
        nodes = (-1.0, 0.0, 1.0, 2.0)
        return [math.prod(x - nodes[j] for j in range(4) if j != i) / math.prod(nodes[i] - nodes[j] for j in range(4)
                                                                              if j != i) for i in range(4)]
    out = []
    for x, y, z in zip(h.tolist(), k.tolist(), l.tolist()):
        fx, fy, fz = math.floor(x), math.floor(y), math.floor(z)
        wx, wy, wz = weights(x - fx), weights(y - fy), weights(z - fz)
        out.append(sum(wx[a] * wy[b] * wz[c] * float(Fhkl[fx - 1 + a - hkl_min[0], fy - 1 + b - hkl_min[1],
                                                          fz - 1 + c - hkl_min[2]])
                       for a in range(4) for b in range(4) for c in range(4)))
    return torch.tensor(out, dtype=torch.float64)


def test_tricubic_gathers_equal_the_point_by_point_sum():
    """Inside the grid the 64 flat gathers give the point-by-point interpolation; outside it they
    stay inside the table (the caller replaces those values); gradients reach the table."""
    from torchsim.structure_factors import tricubic_F
    g = torch.Generator().manual_seed(11)
    hkl_min = (-5, -4, -6)
    Fhkl = (torch.rand(12, 10, 14, generator=g, dtype=torch.float64) * 50).requires_grad_()
    h, k, l = (lo + 2 + torch.rand(500, generator=g, dtype=torch.float64) * (n - 6)
               for lo, n in zip(hkl_min, Fhkl.shape))
    ours = tricubic_F(h, k, l, Fhkl, hkl_min, None)
    assert torch.allclose(ours, tricubic_loop(h, k, l, Fhkl.detach(), hkl_min), rtol=1e-13, atol=1e-12)
    ours.sum().backward()
    assert Fhkl.grad.abs().sum() > 0
    far = torch.tensor([1e6, -1e6, math.nan], dtype=torch.float64)
    with torch.no_grad():
        assert tricubic_F(far, far, far, Fhkl, hkl_min, None).shape == (3,)
        small = torch.rand(2, 3, 9, dtype=torch.float64)            # shorter than 4 along h and k
        assert tricubic_F(far, far, far, small, (0, 0, 0), None).shape == (3,)


# ---- Miller indices ----------------------------------------------------------

@pytest.mark.parametrize("component_major", [False, True])
def test_project_is_the_dot_product(component_major):
    g = torch.Generator().manual_seed(5)
    v = torch.randn(7, 2, 4, 3, 3, generator=g, dtype=torch.float64)
    if component_major:
        v = v.permute(4, 0, 1, 2, 3).contiguous().permute(1, 2, 3, 4, 0)
    axes = torch.randn(5, 6, 3, generator=g, dtype=torch.float64)
    start = torch.randn(7, 1, 1, 3, 5, 6, generator=g, dtype=torch.float64)
    expected = torch.einsum("ptskc,fmc->ptskfm", v, axes)
    assert torch.allclose(K.project(v, axes), expected, rtol=1e-14, atol=1e-14)
    assert torch.allclose(K.project(v, axes, start), expected + start, rtol=1e-14, atol=1e-14)


# ---- unmasked sums ----------------------------------------------------------

SCENE = ["-cell", "70", "80", "90", "85", "95", "100", "-misset", "5", "10", "20", "-lambda", "1.1", "-N", "4",
         "-distance", "80", "-detpixels", "48", "-pixel", "0.4", "-oversample", "2", "-phi", "0", "-osc", "1",
         "-phisteps", "2", "-mosaic", "0.4", "-mosaic_dom", "3", "-default_F", "20"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("extra", [[], ["-N", "6", "-oversample_omega", "-oversample_polar"], ["-water", "0.5"]])
def test_unmasked_sums_equal_the_masked_ones(dtype, extra, monkeypatch):
    """Without a resolution cut spec mode sums every evaluation (F_latt = 0 adds 0); the masked
    sums C's loop does are the same image, bit for bit (the same operations on the kept terms)."""
    sim = Simulator.from_args(SCENE + extra, dtype=dtype)
    with torch.no_grad():
        fast = sim()
        monkeypatch.setattr(K, "_needs_mask", lambda *a: True)
        masked = sim()
    assert masked.abs().max() > 0 and torch.equal(fast, masked)


def test_a_non_finite_table_keeps_the_mask(tmp_path, monkeypatch):
    """The front end rejects non-finite F, but an API user may write one into the buffer: then an
    infinite F where F_latt = 0 must be skipped, as C skips it, so the sums stay masked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "F.hkl").write_text("0 0 0 10\n1 0 0 20\n")
    sim = Simulator.from_args(SCENE + ["-hkl", "F.hkl"], dtype=torch.float64)
    assert sim.factors().finite
    with torch.no_grad():
        sim.Fhkl[1, 1, 1] = math.inf
    assert not sim.factors().finite


# ---- heap -------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_rendering_again_faults_few_pages():
    """After keep_freed_memory a second image reuses the first one's heap.  Measured on this
    scene (one chunk of 4 MB tensors): 1.7e4 to 1.9e4 minor page faults per image without it,
    0 to 940 with it."""
    assert keep_freed_memory() and keep_freed_memory()
    sim = Simulator.from_args(["-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5",
                               "-default_F", "100", "-distance", "100", "-detpixels", "256", "-pixel", "0.4",
                               "-oversample", "2", "-phisteps", "4", "-osc", "2"], dtype=torch.float32)
    with torch.no_grad():
        sim()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sim()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 5000, faults


def test_images_match_the_reference_float64_on_the_fast_paths(tmp_path, monkeypatch):
    """The forms above together, spec mode, float32, on both sides of the Chebyshev threshold and with
    a table: within the float32 bound of tests/tolerances.py."""
    from reference.cli import parse_args
    from reference.render import render
    from reference.scene import build_scene
    from tests.tolerances import OF_IMAGE_MAX
    monkeypatch.chdir(tmp_path)
    rows = [f"{h} {k} {l} {10 + (h * 7 + k * 3 + l) % 13}" for h in range(-8, 9) for k in range(-8, 9)
            for l in range(-8, 9)]
    (tmp_path / "P1.hkl").write_text("\n".join(rows) + "\n")
    for N in ("6", "17"):
        args = SCENE + ["-hkl", "P1.hkl", "-N", N]
        ref = render(build_scene(parse_args(args), echo=False), progress=False, image_dtype=np.float64).image
        with torch.no_grad():
            image = Simulator.from_args(args, dtype=torch.float32)().numpy()
        error = np.abs(image - ref).max() / np.abs(ref).max()
        assert error <= OF_IMAGE_MAX["float32"], (N, error)


def _measure():
    """The figures quoted above and in specs/engines.md: ``python -m tests.test_torch_speed_paths``."""
    d = offsets().float()
    print("float32 error / peak, |delta| <= 1/2: differences form, quotient, plain recurrence on cos x")
    for N in (2, 5, 8, 10, 12, 16):
        exact = quotient(d.double(), N)
        c = torch.cos(math.pi * d)
        prev, plain = torch.ones_like(c), 2 * c
        for _ in range(N - 2):
            prev, plain = plain, 2 * c * plain - prev
        s = torch.sin(math.pi * d)
        q32 = torch.where(d == 0, torch.full_like(d, N), torch.sin((math.pi * N) * d) / torch.where(d == 0, 1.0, s))
        row = [lattice.chebyshev_interference(d, N), q32, plain]
        print(N, " ".join(f"{float((x.double() - exact).abs().max() / N):.2g}" for x in row))
    from tools.benchmark import WORKLOADS
    args = list(WORKLOADS["a"].args)
    with torch.no_grad():
        ref = Simulator.from_args(args, dtype=torch.float64)().numpy()
        floor = 1e-7 * np.abs(ref).max()
        for max_n in (lattice.CHEBYSHEV_MAX_N, 0):
            lattice.CHEBYSHEV_MAX_N, saved = max_n, lattice.CHEBYSHEV_MAX_N
            image = Simulator.from_args(args, dtype=torch.float32)().double().numpy()
            lattice.CHEBYSHEV_MAX_N = saved
            rel = np.abs(image - ref) / np.maximum(np.abs(ref), floor)
            faint = np.abs(ref) < 1e-4 * np.abs(ref).max()
            print(f"workload (a), float32 against float64, CHEBYSHEV_MAX_N = {max_n}: "
                  f"{np.abs(image - ref).max() / np.abs(ref).max():.2g} of the maximum; per pixel "
                  f"99.9th percentile {np.quantile(rel, 0.999):.2g}, max {rel.max():.2g}; "
                  f"pixels above 5e-6 of their value that are below 1e-4 of the maximum: "
                  f"{(faint & (rel > 5e-6)).sum()} of {(rel > 5e-6).sum()}")


if __name__ == "__main__":
    _measure()


# ---- tools.api_benchmark -----------------------------------------------------

def test_api_benchmark_times_renders_in_one_process(monkeypatch, capsys):
    from tools import api_benchmark as AB
    from tools.benchmark import Workload
    tiny = Workload("tiny", "tiny", ("-cell", "50", "50", "50", "90", "90", "90", "-lambda", "1", "-N", "3",
                                     "-default_F", "10", "-distance", "50", "-detpixels", "16"), threads=1)
    monkeypatch.setattr(AB, "WORKLOADS", {"tiny": tiny})
    assert AB.main(["--workload", "tiny", "--engines", "torch,torch64", "--images", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[2].strip() for r in rows] == ["torch", "torch64"]
    assert all(len(r.split("|")) == 12 for r in rows)


@pytest.mark.parametrize("argv", [["--engines", "c"], ["--engines", ""], ["--images", "0"], ["--threads", "0"]])
def test_api_benchmark_rejects_bad_options(argv):
    from tools import api_benchmark as AB
    with pytest.raises(SystemExit):
        AB.parse_args(argv)
