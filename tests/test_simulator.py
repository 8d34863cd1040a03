"""The differentiable Simulator: same image as the engines, true gradients.

Gradients are checked two ways for every parameter: torch.autograd.gradcheck
(float64, small ROI) and against central finite differences of the
*reference* engine run at perturbed flag values (the oracle).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.func import functional_call  # noqa: E402

from reference.cli import parse_args  # noqa: E402
from reference.render import render as render_reference  # noqa: E402
from reference.scene import build_scene  # noqa: E402
from torchsim import Simulator  # noqa: E402

PARAMETERS = ["cell_a", "cell_b", "cell_c", "cell_alpha", "cell_beta", "cell_gamma", "misset", "N",
              "mosaic_spread", "lambda_A", "distance_mm", "beam_center_mm", "detector_rot", "twotheta",
              "fluence", "polar"]

# a small scene that exercises every parameter
FLAGS = {
    "-cell": ["50", "60", "70", "85", "95", "100"], "-misset": ["3", "4", "5"], "-default_F": ["10"],
    "-N": ["4"], "-lambda": ["1.2"], "-distance": ["80"], "-detpixels": ["10"], "-pixel": ["1.5"],
    "-oversample": ["1"], "-twotheta": ["2"], "-detector_rotx": ["1"], "-detector_roty": ["2"],
    "-detector_rotz": ["3"], "-polar": ["0.6"], "-mosaic": ["0.5"], "-mosaic_dom": ["3"],
    "-phi": ["0.5"], "-osc": ["1"], "-phisteps": ["2"], "-Xbeam": ["7.2"], "-Ybeam": ["8.1"],
    "-roi": ["2", "7", "1", "6"],
}


def tokens(flags):
    out = []
    for flag, values in flags.items():
        out += [flag] + list(values)
    return out


def test_named_parameters_are_the_physical_quantities():
    sim = Simulator.from_args(tokens(FLAGS))
    assert [name for name, _ in sim.named_parameters()] == PARAMETERS
    assert sim.cell_a.item() == pytest.approx(50.0)
    assert sim.misset.detach().numpy() == pytest.approx([3, 4, 5])
    assert sim.beam_center_mm.detach().numpy() == pytest.approx([7.2, 8.1])


def test_forward_equals_the_float_file(tmp_path, monkeypatch):
    """Calling the module gives what -floatfile writes."""
    from reference.cli import main
    monkeypatch.chdir(tmp_path)
    args = tokens(FLAGS) + ["-engine", "torch", "-floatfile", "f.bin", "-intfile", "i.img", "-nonoise",
                            "-nopgm", "-noprogress"]
    assert main(args) == 0
    written = np.fromfile(tmp_path / "f.bin", np.float32).reshape(10, 10)
    image = Simulator.from_args(tokens(FLAGS))().detach().numpy()
    # equal up to float32 rounding (C draws the mosaic rotation angles in float32)
    assert np.allclose(image.astype(np.float32), written, rtol=1e-6, atol=0)


def test_constructible_from_a_config():
    cfg = parse_args(tokens(FLAGS))
    a = Simulator(cfg)()
    b = Simulator.from_args(tokens(FLAGS))()
    assert torch.equal(a, b)


def test_mat_and_cell_inputs_refine_alike():
    """With -mat, cell and orientation are separate: a cell change moves spots the same way."""
    from tests import corpus
    if not corpus.available():
        pytest.skip(corpus.SKIP_REASON)
    mat = str(corpus.CORPUS / "inputs" / "A.mat")
    sim = Simulator.from_args(["-mat", mat, "-default_F", "10", "-N", "4", "-lambda", "1.2", "-distance", "80",
                               "-detpixels", "12", "-pixel", "1.5", "-oversample", "1"])
    U = sim.orientation
    assert torch.allclose(U @ U.T, torch.eye(3, dtype=U.dtype), atol=1e-6)
    image = sim()
    image.sum().backward()
    # (mosaic_spread has no gradient with a single domain)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for _, p in sim.named_parameters())
    assert sim.cell_a.grad is not None and sim.cell_a.grad != 0


@pytest.mark.parametrize("name", PARAMETERS)
def test_gradcheck(name):
    sim = Simulator.from_args(tokens(FLAGS))
    params = dict(sim.named_parameters())
    x0 = params[name].detach().clone().requires_grad_(True)

    def image_of(x):
        return functional_call(sim, {name: x}, ())[1:7, 2:8]

    with torch.no_grad():
        scale = 1.0 / float(image_of(x0).abs().max())
    assert torch.autograd.gradcheck(lambda x: image_of(x) * scale, (x0,), eps=1e-6 * max(1.0, float(x0.detach().abs().max())),
                                    atol=1e-6, rtol=1e-4)


def test_structure_factors_gradcheck():
    flags = dict(FLAGS)
    flags.pop("-default_F")
    sim = Simulator.from_args(tokens(flags) + ["-default_F", "3"])
    F0 = sim.Fhkl.detach().clone().requires_grad_(True)

    def image_of(F):
        sim.Fhkl = F
        return sim()[1:7, 2:8]

    assert torch.autograd.gradcheck(lambda F: image_of(F) / 1e3, (F0,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---- autograd against finite differences of the reference engine -----------

def _reference_loss(flags, weights, scene_edit=None):
    scene = build_scene(parse_args(tokens(flags)), echo=False)
    if scene_edit:
        scene_edit(scene)
    image = render_reference(scene, progress=False, image_dtype=np.float64).image
    return float((image * weights).sum())


def _perturbed(flag, index, delta):
    def edit(flags):
        flags = {k: list(v) for k, v in flags.items()}
        flags[flag][index] = repr(float(flags[flag][index]) + delta)
        return flags
    return edit


# parameter -> list of (component, flags editor maker, step) in the parameter's units
ORACLE = {
    "cell_a": [(0, "-cell", 0, 1e-3)], "cell_b": [(0, "-cell", 1, 1e-3)], "cell_c": [(0, "-cell", 2, 1e-3)],
    "cell_alpha": [(0, "-cell", 3, 1e-3)], "cell_beta": [(0, "-cell", 4, 1e-3)],
    "cell_gamma": [(0, "-cell", 5, 1e-3)],
    "misset": [(j, "-misset", j, 1e-3) for j in range(3)],
    "mosaic_spread": [(0, "-mosaic", 0, 1e-3)],
    "lambda_A": [(0, "-lambda", 0, 1e-5)],
    "distance_mm": [(0, "-distance", 0, 1e-3)],
    "beam_center_mm": [(0, "-Xbeam", 0, 1e-4), (1, "-Ybeam", 0, 1e-4)],
    "detector_rot": [(j, f"-detector_rot{'xyz'[j]}", 0, 1e-3) for j in range(3)],
    "twotheta": [(0, "-twotheta", 0, 1e-3)],
    "polar": [(0, "-polar", 0, 1e-4)],
}


# N is left out: the reference evaluates C's sin(pi N h)/sin(pi h), whose derivative in N has
# a pole at every node; the Simulator's real-N lattice factor is checked in
# tests/test_gradients.py (gradcheck at real N, finite differences, C's image at whole N)
@pytest.mark.parametrize("name", [p for p in PARAMETERS if p != "N"])
def test_autograd_matches_reference_finite_differences(name):
    rng = np.random.default_rng(7)
    weights = rng.uniform(0.5, 1.5, size=(10, 10))
    sim = Simulator.from_args(tokens(FLAGS))
    loss = (sim() * torch.as_tensor(weights)).sum()
    loss.backward()
    grad = dict(sim.named_parameters())[name].grad.reshape(-1).numpy()

    if name == "fluence":          # linear: the derivative is loss / fluence
        expected = [_reference_loss(FLAGS, weights) / sim.fluence.item()]
        got = [grad[0]]
    else:
        expected, got = [], []
        for component, flag, index, step in ORACLE[name]:
            up = _reference_loss(_perturbed(flag, index, +step)(FLAGS), weights)
            down = _reference_loss(_perturbed(flag, index, -step)(FLAGS), weights)
            expected.append((up - down) / (2 * step))
            got.append(grad[component])
    expected, got = np.array(expected), np.array(got)
    assert np.all(np.abs(got - expected) <= 1e-4 * np.abs(expected) + 1e-12 * abs(loss.item())), (got, expected)


# ---- gradients stay finite where a user can land ----------------------------

@pytest.mark.parametrize("beam_xy", ["5.0", "4.5"], ids=["beam_at_pixel_centre", "beam_on_pixel_edge"])
def test_gradients_finite_at_singular_points(beam_xy):
    """sincg at integer h, 2theta = 0 and a zero scattering vector, beam centre on a pixel edge."""
    flags = dict(FLAGS)
    flags.update({"-detpixels": ["11"], "-pixel": ["1"], "-twotheta": ["0"], "-detector_rotx": ["0"],
                  "-detector_roty": ["0"], "-detector_rotz": ["0"], "-mosaic": ["0"], "-mosaic_dom": ["1"],
                  "-phi": ["0"], "-osc": ["0"], "-phisteps": ["1"], "-roi": ["0", "10", "0", "10"],
                  "-Xbeam": [beam_xy], "-Ybeam": [beam_xy]})
    sim = Simulator.from_args(tokens(flags))
    image = sim()
    # MOSFLM: Xbeam 5.0 puts the beam on the centre of pixel (5, 5), where h = k = l = 0
    # exactly; 4.5 puts it on the corner shared by four pixels
    image.sum().backward()
    for name, p in sim.named_parameters():
        if name == "mosaic_spread":
            assert p.grad is None            # one domain: the spread does not enter
            continue
        assert torch.isfinite(p.grad).all(), name


def test_parity_gaussian_spots_use_c_reciprocal_cell_for_a_triclinic_cell():
    """Under -c_parity C's reciprocal vectors of a triclinic -cell are not those of its direct
    cell (quirk (n)); the spot shapes must use C's, as the reference does (found by nanobragg-parity)."""
    args = ["-cell", "20", "20", "20", "70", "70", "70", "-N", "2", "-gauss_xtal", "-default_F", "1",
            "-detpixels", "6", "-c_parity"]
    ref = render_reference(build_scene(parse_args(args), echo=False), progress=False,
                           image_dtype=np.float64).image
    with torch.no_grad():
        ours = Simulator.from_args(args)().numpy()
    assert np.abs(ours - ref).max() <= 1e-9 * np.abs(ref).max()
