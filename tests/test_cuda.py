"""The torch engine on CUDA: same images and gradients as on the CPU.

Marked ``cuda``; skipped where no CUDA device is present.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

from reference.cli import parse_args  # noqa: E402
from reference.scene import build_scene  # noqa: E402
from torchsim import Simulator  # noqa: E402
from torchsim.engine import render  # noqa: E402

SCENE = ["-cell", "50", "60", "70", "80", "85", "95", "-misset", "3", "4", "5", "-default_F", "10", "-N", "4",
         "-lambda", "1.2", "-distance", "60", "-detpixels", "48", "-pixel", "0.4", "-mosaic", "0.5",
         "-mosaic_dom", "4", "-phi", "0", "-osc", "1", "-phisteps", "3", "-oversample", "2"]


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-4)])
@pytest.mark.parametrize("parity", [[], ["-c_parity"]])
def test_cuda_matches_cpu(dtype, tol, parity):
    images = {}
    for device in ("cpu", "cuda"):
        scene = build_scene(parse_args(SCENE + parity + ["-engine", "torch", "-device", device, "-dtype", dtype]),
                            echo=False)
        images[device] = np.asarray(render(scene, progress=False, keep_precision=True).image, dtype=np.float64)
    peak = np.abs(images["cpu"]).max()
    assert np.abs(images["cuda"] - images["cpu"]).max() <= tol * peak


def test_cuda_gradients_match_cpu():
    grads = {}
    for device in ("cpu", "cuda"):
        sim = Simulator.from_args(SCENE, device=device)
        sim().sum().backward()
        grads[device] = {n: p.grad.detach().cpu() for n, p in sim.named_parameters() if p.grad is not None}
    for name, g in grads["cpu"].items():
        assert torch.allclose(grads["cuda"][name], g, rtol=1e-9, atol=0), name
