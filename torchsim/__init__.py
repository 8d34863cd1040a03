"""Vectorized, differentiable PyTorch engine for nanoBragg.

``Simulator`` is a ``torch.nn.Module`` whose parameters are the physical
quantities; its forward pass is the float image.  ``nanobragg -engine
torch`` runs that same pass under ``torch.no_grad()``
(:func:`torchsim.engine.render`).  The physics is in modules named for it:
``geometry`` (detector placement), ``crystal`` (cell, orientation, phi,
mosaic domains), ``sources``, ``kernel`` (the pixels), ``lattice`` and
``structure_factors``.
"""

from torchsim.simulator import Simulator

__all__ = ["Simulator"]
