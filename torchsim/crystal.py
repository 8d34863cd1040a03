"""Crystal orientation in torch: phi rotation about the spindle, mosaic domains.

Vectors are trailing (..., 3) in the lab frame; direct cell vectors in
metres.  Functions keep the dtype and device of their inputs and are
differentiable in the cell vectors and angles.
"""

from __future__ import annotations

import torch

from torchsim.kernel import rotate_axis


def rotate_xyz(v, angles):
    """Rotate ``v`` (..., 3) about x, then y, then z by ``angles`` (3,) radians."""
    x, y, z = v.unbind(-1)
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    y, z = y * cx - z * sx, y * sx + z * cx
    x, z = x * cy + z * sy, -x * sy + z * cy
    x, y = x * cz - y * sz, x * sz + y * cz
    return torch.stack((x, y, z), -1)


def orientation_tables(cell, spindle, phis, umats, mosaic_spread: float, parity: bool):
    """Cell vectors for every (phi step, mosaic domain): two (F, M, 3, 3) tables.

    ``cell`` is (3, 3) with rows a, b, c (metres); ``phis`` a list of floats
    (radians); ``umats`` (M, 3, 3).  The first table serves the run's first
    phi loop, the second every later loop; they differ only in parity mode
    when a phi step is exactly zero (C then keeps the previous rotation).
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
        if mosaic_spread > 0.0:
            return torch.einsum("mij,fvj->fmvi", umats, per_phi), state
        return per_phi[:, None].expand(-1, umats.shape[0], -1, -1), state

    first, end_state = one_loop(cell)
    later, _ = one_loop(end_state)
    return first, later
