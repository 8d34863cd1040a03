"""``nanobragg -engine torch``: render a :class:`reference.scene.Scene` with the Simulator.

The command line's torch engine is :class:`torchsim.Simulator`'s forward
pass under ``torch.no_grad()``: the module is built from the scene the
shared front end derived (its parameters at the scene's values), on the
``-device`` and in the ``-dtype`` the config names, and renders the active
pixels in chunks sized to ``-memory_gb``.  So every corpus, holdout and
generated-scene test of ``-engine torch`` runs the differentiable model's
code.  The result has the same form as the reference engine's.
"""

from __future__ import annotations

import torch

from reference.scene import RenderResult
from torchsim.allocator import keep_freed_memory
from torchsim.simulator import BYTES_PER_EVAL, BYTES_PER_EVAL_INTERP, CPU_CHUNK_BYTES, Simulator, \
    resolve_device, resolve_dtype

__all__ = ["render", "trace_pixel", "simulator_for", "resolve_device", "resolve_dtype",
           "BYTES_PER_EVAL", "BYTES_PER_EVAL_INTERP", "CPU_CHUNK_BYTES"]


def simulator_for(sc) -> Simulator:
    """The Simulator of scene ``sc`` on its config's device and dtype.

    The domains are the scene's (a zero spread renders one domain, as C).
    """
    cfg = sc.cfg
    return Simulator(cfg, device=resolve_device(cfg.device), dtype=resolve_dtype(cfg.dtype), scene=sc,
                     spread_from_zero=False)


def render(sc, progress: bool = True, keep_precision: bool = False) -> RenderResult:
    """Render the whole detector; same contract as :func:`reference.render.render`.

    The image is float32 as the C program stores it, or the engine's own
    dtype with ``keep_precision``.
    """
    sim = simulator_for(sc)
    if resolve_device(sc.cfg.device).type == "cpu":
        keep_freed_memory()         # our own process: chunk after chunk reuses the heap (torchsim.allocator)
    return sim.render(progress=progress, out_dtype=sim.dtype if keep_precision else torch.float32)


def trace_pixel(sc, spixel: int, fpixel: int) -> dict:
    """Intermediates of one pixel's last evaluation (names as the reference trace)."""
    return simulator_for(sc).trace(spixel, fpixel)
