"""Vectorized, differentiable PyTorch engine for nanoBragg.

``Simulator`` is a ``torch.nn.Module`` whose parameters are the physical
quantities; :func:`torchsim.engine.render` renders a scene from the shared
front end (used by ``nanobragg -engine torch``).
"""

from torchsim.simulator import Simulator

__all__ = ["Simulator"]
