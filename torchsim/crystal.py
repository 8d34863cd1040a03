"""The crystal in torch: unit cell, orientation, misset, phi rotation, mosaic domains.

The cell is parameterised as the crystallographer writes it: reciprocal
basis ``A* = R(misset) U B(cell)``, with ``B`` the standard-orientation
reciprocal cell of the six cell constants (a* along x, b* in the x-y
plane), ``U`` a fixed rotation (identity for a ``-cell`` input; the
orientation of a ``-mat`` file) and ``R`` the misset rotation about x, then
y, then z, applied to the reciprocal vectors as the C program applies it.

Direct vectors are rows a, b, c in metres (so h = a . S for S in 1/m);
reciprocal vectors rows a*, b*, c* in 1/Angstrom.  Functions keep the
dtype and device of their tensor inputs and are differentiable in them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from torchsim.geometry import rotate_xyz
from torchsim.kernel import rotate_axis


def reciprocal_cell(a, b, c, alpha, beta, gamma):
    """Reciprocal basis (3, 3) with columns a*, b*, c* (1/Angstrom), a* along x, b* in x-y.

    Lengths in Angstrom, angles in radians (0-d tensors).  This is the right
    reciprocal cell for every angle (spec mode); C's triclinic variant
    (quirk (n)) enters the engines only through :func:`fixed_orientation`.
    """
    ca, cb, cg = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sa, sb, sg = torch.sin(alpha), torch.sin(beta), torch.sin(gamma)
    V = a * b * c * torch.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    as0, bs0, cs0 = b * c * sa / V, c * a * sb / V, a * b * sg / V
    cas = (cb * cg - ca) / (sb * sg)            # cosines of the reciprocal angles
    cbs = (cg * ca - cb) / (sg * sa)
    cgs = (ca * cb - cg) / (sa * sb)
    sgs = torch.sqrt(1 - cgs * cgs)
    zero = torch.zeros_like(a)
    a_star = torch.stack((as0, zero, zero))
    b_star = torch.stack((bs0 * cgs, bs0 * sgs, zero))
    c_star = torch.stack((cs0 * cbs, cs0 * (cas - cbs * cgs) / sgs, 1.0 / (V * as0 * bs0 * sgs)))
    return torch.stack((a_star, b_star, c_star), dim=1)


def direct_from_reciprocal(recip_cols):
    """Direct vectors (rows a, b, c) of the reciprocal columns; lengths in the inverse unit."""
    a_s, b_s, c_s = recip_cols.unbind(1)
    V_star = torch.dot(a_s, torch.cross(b_s, c_s, dim=0))
    return torch.stack((torch.cross(b_s, c_s, dim=0), torch.cross(c_s, a_s, dim=0),
                        torch.cross(a_s, b_s, dim=0))) / V_star


def misset_rotation(angles):
    """The rotation matrix (3, 3) of :func:`torchsim.geometry.rotate_xyz` by ``angles`` (rad)."""
    eye = torch.eye(3, dtype=angles.dtype, device=angles.device)
    return rotate_xyz(eye, angles).T        # rotate_xyz turns rows; the matrix has them as columns


def cell_constants(direct_rows):
    """(lengths in Angstrom, angles in degrees) of direct rows a, b, c given in metres (NumPy)."""
    a, b, c = (np.asarray(v, dtype=np.float64) * 1e10 for v in direct_rows)

    def angle(u, v):
        return math.degrees(math.acos(float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))))

    lengths = tuple(float(np.linalg.norm(v)) for v in (a, b, c))
    return lengths, (angle(b, c), angle(a, c), angle(a, b))


def fixed_orientation(direct_rows, misset, lengths, angles_deg):
    """The rotation U with R(misset) U B(cell) = the reciprocal of ``direct_rows`` (torch, float64).

    ``direct_rows`` (3, 3) metres and ``misset`` (3,) radians are the
    scene's; ``lengths`` (Angstrom) and ``angles_deg`` its cell constants.
    U is whatever -mat (and C's triclinic cell, quirk (n)) made of the
    orientation; it is a rotation up to float64 rounding.
    """
    A = direct_rows * 1e10
    recip_cols = torch.linalg.inv(A)                  # columns a*, b*, c* of the direct rows
    B = reciprocal_cell(*lengths, *(x * (math.pi / 180.0) for x in angles_deg))
    return misset_rotation(misset).T @ recip_cols @ torch.linalg.inv(B)


def cell_vectors(lengths, angles, misset, orientation, recip_offset=None):
    """(direct rows a, b, c in metres, reciprocal rows a*, b*, c* in 1/Angstrom).

    ``lengths`` (3,) Angstrom, ``angles`` (3,) radians, ``misset`` (3,)
    radians, ``orientation`` the fixed U.  ``recip_offset`` (3, 3), columns
    in the crystal frame (before the misset), is added to the reciprocal
    vectors only: C's reciprocal cell of a triclinic ``-cell`` under
    -c_parity minus the true one (quirk (n)), which turns with the misset.
    The spot shapes use it, the Miller indices do not.
    """
    B = reciprocal_cell(*lengths.unbind(), *angles.unbind())
    R = misset_rotation(misset)
    recip = R @ orientation @ B
    direct = direct_from_reciprocal(recip) * 1e-10
    if recip_offset is None:
        return direct, recip.T
    return direct, (recip + R @ recip_offset).T


# ---- mosaic domains -----------------------------------------------------

def axis_angle_matrices(axes, angles):
    """Rotation matrices (M, 3, 3) about unit ``axes`` (M, 3) by ``angles`` (M,) radians."""
    c, s = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    x, y, z = axes.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack((torch.stack((zero, -z, y), -1), torch.stack((z, zero, -x), -1),
                         torch.stack((-y, x, zero), -1)), -2)
    eye = torch.eye(3, dtype=axes.dtype, device=axes.device)
    return c * eye + (1 - c) * axes[:, :, None] * axes[:, None, :] + s * cross


def mosaic_rotations(axes, fractions, spread):
    """Each domain's rotation (M, 3, 3): ``fractions`` (M,) of ``spread`` (rad) about ``axes``."""
    return axis_angle_matrices(axes, fractions * spread)


def mosaic_draws(mosaic_stream, domains: int, spread: float):
    """Each domain's rotation axis (M, 3) and angle as a fraction (M,) of the spread (NumPy).

    The draws replay C's generator from ``mosaic_stream`` (the scene's
    generator state as the mosaic domains start, see :mod:`reference.rng`):
    the axis is uniform on the sphere and the angle ``spread (1 - r^2)^(1/3)``
    fills a spherical cap.  C rounds each angle to float32; for ``spread`` > 0
    the fraction is that rounded angle over the spread, so that the domains
    at the scene's spread are C's to float64 rounding.  With ``spread`` 0 the
    fractions are the unrounded shape.  Domain 0 is unrotated, as in C.
    """
    from reference import rng
    axes, fractions = np.zeros((domains, 3)), np.zeros(domains)
    axes[:, 2] = 1.0
    if domains == 1:
        return axes, fractions
    state = mosaic_stream.copy()
    for m in range(domains):
        r1, r2, r3 = (2.0 * rng.ran1(state) - 1.0 for _ in range(3))
        xy = math.sqrt(1.0 - r2 * r2)
        axes[m] = (xy * math.sin(math.pi * r1), xy * math.cos(math.pi * r1), r2)
        if spread > 0.0:
            # the angle exactly as C computes it (float * powf), over the spread
            fractions[m] = float(rng.mosaic_angle(spread, r3)) / spread
        else:
            fractions[m] = (1.0 - r3 * r3) ** (1.0 / 3.0)
    fractions[0] = 0.0
    return axes, fractions


# ---- phi rotation -------------------------------------------------------

def orientation_tables(cell, spindle, phis, umats, parity: bool):
    """Cell vectors for every (phi step, mosaic domain): two (F, M, 3, 3) tables.

    ``cell`` is (3, 3) with rows a, b, c (metres); ``spindle`` (3,) unit;
    ``phis`` a list of floats (radians: the sweep is fixed); ``umats`` (M, 3, 3)
    the domains' rotations (the identity for one domain).  The first table
    serves the run's first phi loop, the second every later loop; they
    differ only under ``parity`` when a phi step is exactly zero (C then
    keeps the previous rotation, quirk (a)).
    """
    def one_loop(state):
        rows = []
        for phi in phis:
            if phi != 0.0:
                state = rotate_axis(cell, spindle, cell.new_tensor(phi).expand(3))
            elif not parity:
                state = cell
            rows.append(state)
        per_phi = torch.stack(rows)                                  # (F, 3, 3)
        return torch.einsum("mij,fvj->fmvi", umats, per_phi), state

    first, end_state = one_loop(cell)
    later, _ = one_loop(end_state)
    return first, later
