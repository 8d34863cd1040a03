"""-trace_pixel: both engines report the same intermediates for the same pixel."""

import numpy as np
import pytest

from reference.cli import parse_args
from reference.render import render, trace_pixel as trace_reference
from reference.scene import build_scene

torch = pytest.importorskip("torch")
from torchsim.engine import trace_pixel as trace_torch  # noqa: E402

SHARED = ("pixel_pos_x", "pixel_pos_y", "pixel_pos_z", "diffracted_x", "diffracted_y", "diffracted_z",
          "scattering_x", "scattering_y", "scattering_z", "stol", "h", "k", "l", "h0", "k0", "l0",
          "F_latt", "F_cell", "omega", "polar", "capture_fraction", "I_sum", "pixel_value", "lambda",
          "evaluations")


@pytest.mark.parametrize("extra", [[], ["-c_parity"], ["-oversample", "2", "-mosaic", "0.5", "-mosaic_dom", "3"]])
def test_engines_trace_the_same_pixel(extra):
    args = ["-cell", "50", "60", "70", "90", "90", "90", "-misset", "3", "4", "5", "-default_F", "10", "-N", "4",
            "-lambda", "1.2", "-distance", "60", "-detpixels", "16", "-pixel", "0.8", "-phi", "0", "-osc", "1",
            "-phisteps", "2", "-detector_abs", "200", "-detector_thick", "100", "-thicksteps", "2"] + extra
    scene = build_scene(parse_args(args + ["-engine", "torch"]), echo=False)
    ours = trace_reference(scene, 5, 7)
    theirs = trace_torch(scene, 5, 7)
    for name in SHARED:
        assert theirs[name] == pytest.approx(ours[name], rel=1e-9, abs=1e-12 * max(1.0, abs(ours[name]))), name
    image = render(scene, progress=False, image_dtype=np.float64).image
    assert ours["pixel_value"] == pytest.approx(image[5, 7], rel=1e-15)
