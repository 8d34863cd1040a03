"""X-ray sources in torch: divergence and dispersion around the beam.

Each source is a unit vector from the sample towards the source and a
wavelength.  Generated sources sit on a grid of divergence angles: the
source starts ``SOURCE_DISTANCE`` up-beam, is tilted by the vertical angle
about the polarization (E) vector, then by the horizontal angle about
beam x E (specs/physics.md; :mod:`reference.sources` builds the same list).
A ``-sourcefile`` gives the directions directly.  Wavelengths are the
central wavelength times each source's fixed ratio to it.
"""

from __future__ import annotations

import numpy as np
import torch

from torchsim.kernel import norm3, rotate_axis

SOURCE_DISTANCE = 10.0     # metres: where generated sources start


def _unit(v):
    """v / |v| over the last axis; a zero vector stays zero (as the reference's unitize)."""
    n = norm3(v)[..., None]
    return torch.where(n > 0, v / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(v))


def generated_directions(beam, polar_vector, hdiv, vdiv):
    """Unit directions (K, 3) sample -> source for divergence angles ``hdiv``, ``vdiv`` (K,) rad."""
    vertical = _unit(torch.cross(beam, polar_vector, dim=-1))
    start = (-SOURCE_DISTANCE * beam).expand(hdiv.shape[0], 3)
    tilted = rotate_axis(rotate_axis(start, polar_vector, vdiv), vertical, hdiv)
    return _unit(tilted)


def wavelengths(central, ratios):
    """Source wavelengths (K,) in metres: ``central`` (m) times each source's ``ratios`` (K,)."""
    return central * ratios


def divergence_grid(cfg):
    """The divergence angles (hdiv, vdiv) in radians of every generated source, in the
    reference's order (grid point major, wavelength minor), as NumPy arrays.

    The step rules are the shared front end's (:func:`reference.scene.build_scene`);
    only the angles, which the scene does not keep, are enumerated here.
    """
    from reference.scene import auto_steps
    from reference.sources import inside_ellipse

    def steps(count, span, step):
        count, span, step = auto_steps(count, span, step, 1.0)
        if span <= 0.0 or step <= 0.0 or count <= 0:
            return 1, 0.0, 0.0
        return count, span, step

    hsteps, hrange, hstep = steps(cfg.hdivsteps, cfg.hdivrange, cfg.hdivstep)
    vsteps, vrange, vstep = steps(cfg.vdivsteps, cfg.vdivrange, cfg.vdivstep)
    dsteps, dispersion, dstep = auto_steps(cfg.dispsteps, cfg.dispersion, -1.0, 1.0)
    if dispersion <= 0.0 or dstep <= 0.0 or dsteps <= 0:
        dsteps = 1
    grid = []
    for ih in range(hsteps):
        for iv in range(vsteps):
            hdiv = hstep * ih - hrange / 2.0
            vdiv = vstep * iv - vrange / 2.0
            if cfg.round_div and not inside_ellipse(hdiv, vdiv, hstep, hsteps, hrange, vstep, vsteps, vrange):
                continue
            grid.extend([(hdiv, vdiv)] * dsteps)
    angles = np.array(grid, dtype=np.float64).reshape(-1, 2)
    return angles[:, 0], angles[:, 1]
