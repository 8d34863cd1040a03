"""Crystal orientations: uniform random rotations, misset angles, and the truth of a rendered crystal.

Frames.  Every vector here is in nanoBragg's lab frame (the frame of the
scene's ``-beam_vector``, ``-spindle_axis`` and detector vectors; with the
default MOSFLM convention x runs along the beam, z along the spindle and y
up).  :func:`lab_to_mcstas` gives the rotation into the NeXus (McStas) frame:
z along the beam, x horizontal, y up, taking the polarisation vector
(``-polar_vector``, the electric field, horizontal at a synchrotron) as -x.
"""

from __future__ import annotations

import math

import numpy as np

from reference.flags import RTD


def uniform_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly over all orientations (Haar measure).

    A unit quaternion with four independent Gaussian components, normalised,
    is uniform on the 3-sphere, hence its rotation is uniform over SO(3).
    """
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def misset_angles(rotation: np.ndarray) -> tuple:
    """``-misset`` angles (rotx, roty, rotz; degrees) that rotate as ``rotation`` does.

    nanoBragg applies a misset as a rotation about x, then y, then z (fixed lab
    axes), that is R = Rz(rotz) Ry(roty) Rx(rotx); so R[2,0] = -sin(roty),
    R[2,1] / R[2,2] = tan(rotx) and R[1,0] / R[0,0] = tan(rotz).  (The gimbal
    lock |R[2,0]| = 1 has probability zero for a uniform draw.)
    """
    r = np.asarray(rotation, dtype=np.float64)
    roty = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    rotx = math.atan2(r[2, 1], r[2, 2])
    rotz = math.atan2(r[1, 0], r[0, 0])
    return rotx * RTD, roty * RTD, rotz * RTD


def rotation_from_misset(rotx_deg: float, roty_deg: float, rotz_deg: float) -> np.ndarray:
    """The matrix of a misset (the inverse of :func:`misset_angles`)."""
    ax, ay, az = (v / RTD for v in (rotx_deg, roty_deg, rotz_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def crystal_truth(cfg) -> dict:
    """The crystal nanoBragg builds from ``cfg``: cell, real and reciprocal vectors at spindle angle 0.

    Runs the reference set-up of the unit cell (``-cell``, ``-mat``,
    ``-misset``) exactly as a render does, without the rest of the scene.
    Returns lengths in Angstrom, angles in degrees, reciprocal vectors in
    1/Angstrom, all in the lab frame; ``A`` is the matrix whose columns are
    a*, b*, c* (so that the scattering vector of h, k, l is A (h, k, l)).
    """
    from reference import rng
    from reference.crystal import build_cell

    table = rng.empty_table() if cfg.c_parity else None
    cell = build_cell(cfg, cfg.lambda0, lambda text="": None, table=table)
    a, b, c = (np.array(v) * 1e10 for v in (cell.a, cell.b, cell.c))
    la, lb, lc = (float(np.linalg.norm(v)) for v in (a, b, c))

    def angle(u, v, lu, lv):
        return math.degrees(math.acos(max(-1.0, min(1.0, float(u @ v) / (lu * lv)))))

    A = np.column_stack([cell.a_star, cell.b_star, cell.c_star])
    return {
        "cell": [la, lb, lc, angle(b, c, lb, lc), angle(a, c, la, lc), angle(a, b, la, lb)],
        "volume_A3": float(cell.V_cell),
        "a": a.tolist(), "b": b.tolist(), "c": c.tolist(),
        "a_star": list(cell.a_star), "b_star": list(cell.b_star), "c_star": list(cell.c_star),
        "A": A.tolist(),
        "misset_deg": [x * RTD for x in cell.misset],
    }


def lab_to_mcstas(beam, polar) -> np.ndarray:
    """Rotation matrix taking nanoBragg lab vectors to the NeXus McStas frame.

    Rows are the McStas axes written in the lab frame: z = the beam direction,
    x = minus the polarisation vector made perpendicular to the beam, y = z x x.
    With the MOSFLM convention (beam +x, polarisation +z) this is
    (x, y, z)_McStas = (-z, y, x)_lab.  The result is a proper rotation, so the
    handedness of every rotation (the spindle's included) is kept.
    """
    z = np.asarray(beam, dtype=np.float64)
    z = z / np.linalg.norm(z)
    p = np.asarray(polar, dtype=np.float64)
    p = p - (p @ z) * z
    if np.linalg.norm(p) < 1e-9:            # polarisation along the beam: any perpendicular will do
        p = np.cross(z, [0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.cross(z, [1.0, 0.0, 0.0])
    x = -p / np.linalg.norm(p)
    y = np.cross(z, x)
    return np.vstack([x, y, z])


# McStas (NeXus) to imgCIF (DIALS, dxtbx): a half turn about y
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])
