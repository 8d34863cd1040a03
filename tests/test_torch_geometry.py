"""Property: the torch path derives the geometry the NumPy scene derives.

The torch engine (the Simulator) computes detector placement, crystal
orientation, phi/mosaic tables and sources from its physical parameters
(torchsim.geometry, torchsim.crystal, torchsim.sources); the reference
takes them from :func:`reference.scene.build_scene`.  For command lines
drawn over every convention, pivot and vector flag (``-fdet_vector`` ...,
``-pix0_vector``, ``-twotheta_axis``, ``-spindle_axis``, ``-beam_vector``,
``-polar_vector``), detector rotations, two-theta, ``-misset``, ``-mat``,
phi sweeps, mosaic domains and sources, in both modes, the two must agree
to float64 rounding.

Errors are relative to each quantity's size (a vector's length, a table
row's length; positions to the detector's distance).  Measured over 2,000
drawn command lines (``python -m tests.test_torch_geometry 2000``): at most
1.8e-16 for the detector (pix0, axes, distances), 1.8e-15 for the direct
and reciprocal cell and the phi/mosaic tables, 3.3e-16 for the sources'
directions and wavelengths: a few units of float64 rounding (2.2e-16), so
the bound is 1e-14.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, note, reject
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from reference.cli import parse_args  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.render import orientation_tables as reference_tables  # noqa: E402
from reference.scene import build_scene  # noqa: E402
from tools.scenes import _mosflm_matrix_text, _rotation  # noqa: E402
from torchsim.engine import simulator_for  # noqa: E402

TOLERANCE = 1e-14          # relative; measured up to 1.8e-15 (module docstring)

CONVENTIONS = ["", "-mosflm", "-xds", "-adxv", "-denzo", "-dials"]
VECTOR_FLAGS = {"-fdet_vector": (0, 0, 1), "-sdet_vector": (0, -1, 0), "-odet_vector": (1, 0, 0),
                "-beam_vector": (1, 0, 0), "-polar_vector": (0, 0, 1), "-spindle_axis": (0, 0, 1),
                "-twotheta_axis": (0, 1, 0)}


def _num(x):
    return f"{x:.6g}"


def _small_angles(draw, limit):
    return [draw(st.floats(-limit, limit)) for _ in range(3)]


@st.composite
def command_lines(draw):
    """(tokens, files) of a small scene that exercises the geometry, not the render."""
    files = {}
    px = draw(st.floats(0.05, 0.3))
    args = ["-default_F", "1", "-detpixels_f", str(draw(st.integers(4, 300))),
            "-detpixels_s", str(draw(st.integers(4, 300))), "-pixel", _num(px), "-oversample", "1"]
    wavelength = draw(st.floats(0.8, 2.5))
    args += ["-lambda", _num(wavelength)]

    # crystal
    cell = [draw(st.floats(20, 90)) for _ in range(3)] + [draw(st.floats(70, 110)) for _ in range(3)]
    if draw(st.integers(0, 3)) == 0:
        files["A.mat"] = _mosflm_matrix_text(tuple(cell), _small_angles(draw, math.pi), wavelength)
        args += ["-mat", "A.mat"]
    else:
        if draw(st.booleans()):
            cell[3:] = [90.0, 90.0, 90.0]
        args += ["-cell"] + [_num(x) for x in cell]
    misset = draw(st.sampled_from(["none", "angles", "random"]))
    if misset == "angles":
        args += ["-misset"] + [_num(x) for x in _small_angles(draw, 180)]
    elif misset == "random":
        args += ["-misset", "random", "-misset_seed", str(draw(st.integers(1, 1000)))]

    # detector: convention flag and custom vectors in either order, pivot, centre, distance
    convention = [c for c in [draw(st.sampled_from(CONVENTIONS))] if c]
    vectors = []
    tilt = _rotation(_small_angles(draw, 0.3))
    for flag, vec in VECTOR_FLAGS.items():
        if draw(st.integers(0, 3)) == 0:
            v = tilt @ np.array(vec, float) if flag in ("-fdet_vector", "-sdet_vector", "-odet_vector") \
                else _rotation(_small_angles(draw, 0.3)) @ np.array(vec, float)
            vectors += [flag] + [_num(x) for x in v]
    args += convention + vectors if draw(st.booleans()) else vectors + convention
    if draw(st.integers(0, 4)) == 0:
        args += ["-close_distance", _num(draw(st.floats(30, 300)))]
    else:
        args += ["-distance", _num(draw(st.floats(30, 300)))]
    centre = draw(st.sampled_from(["none", "-Xbeam", "-Xclose", "-ORGX"]))
    if centre != "none":
        other = {"-Xbeam": "-Ybeam", "-Xclose": "-Yclose", "-ORGX": "-ORGY"}[centre]
        hi = 30.0 if centre != "-ORGX" else 200.0
        args += [centre, _num(draw(st.floats(0, hi))), other, _num(draw(st.floats(0, hi)))]
    if draw(st.integers(0, 2)) == 0:
        args += ["-pivot", draw(st.sampled_from(["sample", "beam"]))]
    if draw(st.integers(0, 4)) == 0:
        args += ["-pix0_vector", _num(draw(st.floats(0.03, 0.3))), _num(draw(st.floats(-0.05, 0.05))),
                 _num(draw(st.floats(-0.05, 0.05)))]
    for axis in "xyz":
        if draw(st.integers(0, 2)) == 0:
            args += [f"-detector_rot{axis}", _num(draw(st.floats(-20, 20)))]
    if draw(st.booleans()):
        args += ["-twotheta", _num(draw(st.floats(-40, 40)))]
    if draw(st.integers(0, 4)) == 0:
        args += ["-curved_det"]

    # sweep, mosaic and sources
    if draw(st.booleans()):
        args += ["-phi", draw(st.sampled_from(["0", "1", "-2", "12.34"])), "-osc", _num(draw(st.floats(0.5, 5))),
                 "-phisteps", str(draw(st.integers(1, 4)))]
    if draw(st.booleans()):
        args += ["-mosaic", _num(draw(st.floats(0.05, 3))), "-mosaic_dom", str(draw(st.integers(1, 6))),
                 "-mosaic_seed", str(draw(st.integers(1, 100)))]
    source = draw(st.sampled_from(["none", "divergence", "dispersion", "both", "file"]))
    if source in ("divergence", "both"):
        args += ["-hdivrange", _num(draw(st.floats(0.1, 3))), "-vdivrange", _num(draw(st.floats(0.1, 3))),
                 "-hdivsteps", str(draw(st.integers(1, 4))), "-vdivsteps", str(draw(st.integers(1, 4)))]
        if draw(st.booleans()):
            args += ["-round_div"]
    if source in ("dispersion", "both"):
        args += ["-dispersion", _num(draw(st.floats(0.1, 5))), "-dispsteps", str(draw(st.integers(1, 4)))]
    if source == "file":
        rows = [f"-10 {_num(draw(st.floats(-0.01, 0.01)))} {_num(draw(st.floats(-0.01, 0.01)))} 1 "
                f"{_num(wavelength * draw(st.floats(0.97, 1.03)) * 1e-10)}" for _ in range(draw(st.integers(1, 4)))]
        files["sources.txt"] = ("\n".join(rows) + "\n").encode()
        args += ["-sourcefile", "sources.txt"]
    if draw(st.booleans()):
        args += ["-c_parity"]
    return args, files


def _scene(tokens, files, folder):
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    here = os.getcwd()
    os.chdir(folder)
    try:
        return build_scene(parse_args(tokens + ["-engine", "torch"]), echo=False)
    finally:
        os.chdir(here)


def _relative(ours, ref, size=None):
    """max |ours - ref| / size, ``size`` the largest row length of ``ref`` unless given."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if size is None:
        size = np.abs(ref).max() if ref.ndim < 2 else np.linalg.norm(ref.reshape(-1, 3), axis=-1).max()
    return float(np.abs(ours - ref).max() / size) if size > 0 else float(np.abs(ours - ref).max())


def geometry_errors(sc, sim=None) -> dict:
    """Relative error of every derived quantity: torch (from the parameters of ``sim``, by default
    the scene's own Simulator) against the scene."""
    sim = simulator_for(sc) if sim is None else sim
    with torch.no_grad():
        det = sim.detector()
        direct, recip = sim.cell_vectors()
        first, later = sim.orientation_tables()
        directions, lambdas = sim.source_vectors()
    # positions relative to the detector's distance from the sample
    length = float(np.linalg.norm(sc.pix0)) + abs(sc.close_distance)
    ref_first, ref_later = reference_tables(sc, sc.parity)
    return {
        "pix0": _relative(det.pix0, sc.pix0, length),
        "fdet": _relative(det.fdet, sc.fdet), "sdet": _relative(det.sdet, sc.sdet),
        "odet": _relative(det.odet, sc.odet),
        "distance": _relative(det.distance, sc.distance, length),
        "close_distance": _relative(det.close_distance, sc.close_distance, length),
        "cell": _relative(direct, [sc.a0, sc.b0, sc.c0]),
        "reciprocal": _relative(recip, [sc.a_star, sc.b_star, sc.c_star]),
        "tables": max(_relative(first, ref_first), _relative(later, ref_later)),
        "sources": _relative(directions, sc.sources),
        "wavelengths": _relative(lambdas, sc.source_lambda),
    }


@given(command=command_lines())
def test_torch_geometry_equals_the_scene(command, tmp_path_factory):
    tokens, files = command
    note(" ".join(tokens))
    try:
        sc = _scene(tokens, files, tmp_path_factory.mktemp("geometry"))
    except InputError:
        reject()
    errors = geometry_errors(sc)
    note(str(errors))
    if not all(np.isfinite(v) for v in errors.values()):
        # only -c_parity reads a NaN cell; then both sides must be NaN alike
        assert sc.parity
        return
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


CASES = {   # flags -> (convention, pivot) the scene must end up with (-twotheta comes before them)
    "mosflm": ([], "mosflm", "beam"),
    "xds": (["-xds"], "xds", "sample"),
    "dials": (["-dials"], "dials", "sample"),
    "adxv": (["-adxv", "-Xbeam", "5", "-Ybeam", "3"], "adxv", "beam"),
    "denzo": (["-denzo", "-Xbeam", "5", "-Ybeam", "3"], "denzo", "beam"),
    "xds-org": (["-xds", "-ORGX", "33", "-ORGY", "12"], "xds", "sample"),
    "custom-sample": (["-fdet_vector", "0", "0", "1", "-Xclose", "5", "-Yclose", "3", "-pivot", "sample"],
                      "custom", "sample"),
    "custom-beam": (["-fdet_vector", "0", "0", "1", "-Xbeam", "5", "-Ybeam", "3", "-pivot", "beam"], "custom", "beam"),
    "pix0": (["-pix0_vector", "0.1", "0.01", "-0.02"], "custom", "sample"),
    "axes": (["-fdet_vector", "0", "0.1", "1", "-sdet_vector", "0", "-1", "0.1", "-twotheta_axis", "0", "0.2", "1"],
             "custom", "sample"),
    "beam-polar-spindle": (["-beam_vector", "1", "0.05", "0", "-polar_vector", "0", "0.1", "1", "-spindle_axis",
                            "0.1", "0", "1"], "custom", "sample"),
}


BASE = {"-cell": ["50", "60", "70", "80", "95", "100"], "-misset": ["10", "20", "30"], "-default_F": ["1"],
        "-detpixels": ["64"], "-pixel": ["0.2"], "-distance": ["90"], "-detector_rotx": ["2"],
        "-detector_roty": ["-3"], "-detector_rotz": ["4"], "-twotheta": ["7"], "-lambda": ["1"], "-phi": ["0"],
        "-osc": ["3"], "-phisteps": ["3"], "-mosaic": ["1"], "-mosaic_dom": ["4"], "-divergence": ["1"],
        "-divsteps": ["3"], "-dispersion": ["2"], "-dispsteps": ["3"]}
# other values of every parameter the command line sets (the beam centre in the convention's own flags)
MOVED = {"-cell": ["52", "58", "73", "84", "91", "103"], "-misset": ["-7", "25", "33"], "-distance": ["97"],
         "-detector_rotx": ["-1"], "-detector_roty": ["2.5"], "-detector_rotz": ["-3"], "-twotheta": ["11"],
         "-lambda": ["1.3"]}
CENTRE = {"mosflm": ["-Xbeam", "5.3", "-Ybeam", "7.1"], "denzo": ["-Xbeam", "5.3", "-Ybeam", "7.1"],
          "adxv": ["-Xbeam", "5.3", "-Ybeam", "7.1"]}


def _tokens(flags, case, parity, centre=()):
    out = []
    for flag, values in flags.items():
        out += [flag] + list(values)
    return out + list(centre) + CASES[case][0] + (["-c_parity"] if parity else [])


@pytest.mark.parametrize("parity", [False, True], ids=["spec", "parity"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_convention_and_pivot(case, parity, tmp_path):
    """Each convention and pivot once for certain (the property above draws them at random)."""
    _, convention, pivot = CASES[case]
    sc = _scene(_tokens(BASE, case, parity), {}, tmp_path)
    assert (sc.convention, sc.pivot) == (convention, pivot)
    errors = geometry_errors(sc)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


@pytest.mark.parametrize("parity", [False, True], ids=["spec", "parity"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parameters_move_the_geometry_as_the_command_line_does(case, parity, tmp_path):
    """A Simulator built from one command line, its parameters then set to another's values
    (distance, beam centre, rotations, two-theta, misset, cell, wavelength), has the other's
    geometry.  (Under -c_parity the cell stays: C's triclinic cell, quirk (n), is a fixed
    orientation U at the first cell's constants.)"""
    moved = dict(BASE, **{k: v for k, v in MOVED.items() if not (parity and k == "-cell")})
    _, convention, pivot = CASES[case]
    centre = CENTRE.get(convention, ["-Xclose", "5.3", "-Yclose", "7.1"])
    first = simulator_for(_scene(_tokens(BASE, case, parity), {}, tmp_path / "first"))
    other = _scene(_tokens(moved, case, parity, centre), {}, tmp_path / "other")
    assert (other.convention, other.pivot) == (convention, pivot)
    with torch.no_grad():
        for name, value in simulator_for(other).named_parameters():
            getattr(first, name).copy_(value)
    errors = geometry_errors(other, first)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, (worst, errors[worst])


# ---- every differentiable function: float64 gradcheck -------------------

def _frame(convention, pivot, pix0=None):
    from torchsim.geometry import Frame
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Frame(t(0, 0.1, 1) / math.sqrt(1.01), t(0, -1, 0), t(1, 0, -0.1) / math.sqrt(1.01), t(1, 0, 0),
                 t(0, 0, -1), convention, pivot, 1e-4, 0.05, pix0)


@pytest.mark.parametrize("convention,pivot", [("mosflm", "beam"), ("adxv", "beam"), ("xds", "sample"),
                                              ("custom", "sample"), ("denzo", "beam")])
def test_detector_placement_gradcheck(convention, pivot):
    from torchsim.geometry import place_detector
    frame = _frame(convention, pivot)

    def placed(distance, centre, rotations, twotheta):
        p = place_detector(frame, distance, centre, rotations, twotheta)
        return torch.cat((p.pix0, p.fdet, p.sdet, p.odet, p.distance[None], p.close_distance[None]))

    x = (torch.tensor(0.09), torch.tensor([0.021, 0.017]), torch.tensor([0.02, -0.03, 0.04]), torch.tensor(0.0))
    x = tuple(v.double().requires_grad_(True) for v in x)
    assert torch.autograd.gradcheck(placed, x)
    zero = tuple(torch.zeros_like(v).requires_grad_(True) if i > 1 else v for i, v in enumerate(x))
    assert torch.autograd.gradcheck(placed, zero)            # rotations and two-theta from 0


def test_crystal_and_sources_gradcheck():
    from torchsim.crystal import cell_vectors, mosaic_rotations
    from torchsim.sources import generated_directions
    U = torch.eye(3, dtype=torch.float64)
    lengths = torch.tensor([50.0, 60.0, 70.0], dtype=torch.float64, requires_grad=True)
    angles = torch.tensor([1.4, 1.6, 1.7], dtype=torch.float64, requires_grad=True)
    misset = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, m: torch.cat([x.reshape(-1) for x in cell_vectors(a, b, m, U)])
                                    * torch.tensor([1e10] * 9 + [1.0] * 9, dtype=torch.float64),
                                    (lengths, angles, misset))
    axes = torch.nn.functional.normalize(torch.tensor([[0.0, 0, 1], [0.3, 0.4, 0.5], [-1, 0.2, 0.1]],
                                                      dtype=torch.float64), dim=-1)
    fractions = torch.tensor([0.0, 0.7, 0.4], dtype=torch.float64)
    for spread in (0.0, 0.01):                                # the spread acts from 0
        assert torch.autograd.gradcheck(lambda s: mosaic_rotations(axes, fractions, s),
                                        (torch.tensor(spread, dtype=torch.float64, requires_grad=True),))
    beam = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    polar = torch.tensor([0.0, 0, 1], dtype=torch.float64)
    angles = torch.tensor([[-0.01, 0.0, 0.01], [0.005, -0.005, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: generated_directions(beam, polar, a[0], a[1]), (angles,))


if __name__ == "__main__":             # measure the errors that set TOLERANCE
    import sys
    import tempfile
    import warnings

    warnings.simplefilter("ignore")            # hypothesis: .example() outside a test
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    worst: dict = {}
    strategy = command_lines()
    with tempfile.TemporaryDirectory() as root:
        done = 0
        for i in range(count * 3):
            if done >= count:
                break
            tokens, files = strategy.example()
            try:
                sc = _scene(tokens, files, os.path.join(root, str(i)))
            except InputError:
                continue
            errors = geometry_errors(sc)
            done += 1
            for key, value in errors.items():
                if np.isfinite(value) and value > worst.get(key, (0.0,))[0]:
                    worst[key] = (value, " ".join(tokens))
    print(f"{done} command lines")
    for key, (value, command) in sorted(worst.items()):
        print(f"{key:15s} {value:.3g}")
