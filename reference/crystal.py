"""The crystal: unit cell, orientation, misset and mosaic domains.

Direct-space vectors come out in metres, reciprocal vectors in 1/Angstrom
(as the C program keeps them), both in the lab frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reference import vectors as V
from reference.errors import InputError
from reference.flags import RTD

DBL_MIN = 2.2250738585072014e-308
FLAT_SKEW = 2.5e-13       # (V/abc)^2 / 4 below this is a flat cell: V/abc < 1e-6


@dataclass
class Cell:
    a: tuple          # direct vectors, metres
    b: tuple
    c: tuple
    a_star: tuple     # reciprocal vectors, 1/Angstrom
    b_star: tuple
    c_star: tuple
    V_cell: float     # Angstrom^3
    misset: tuple = (0.0, 0.0, 0.0)   # the misset rotation applied (radians)


def _clamp_angles(sin_x, cos_x):
    sin_x = min(max(sin_x, -1.0), 1.0)
    if cos_x * cos_x > 1.0:
        cos_x = 1.0
    return math.atan2(sin_x, cos_x)


def _oddball(values, log, label):
    if any(v > 1.0000001 or v < -1.0000001 for v in values):
        log(f"WARNING: oddball {label} angles:")


def reciprocal_from_cell(a, b, c, alpha, beta, gamma, log, parity=False):
    """Reciprocal vectors (1/A) of a cell in the standard orientation.

    a* lies along x and b* in the x-y plane, as in the C program.  C's z
    component of c* is wrong unless alpha = beta = 90 degrees (it builds a
    slightly different cell; kept under ``parity``); spec mode uses
    V* / (a* b* sin gamma*).
    Returns (a_star, b_star, c_star, V_cell).
    """
    aavg = (alpha + beta + gamma) / 2
    skew = math.sin(aavg) * math.sin(aavg - alpha) * math.sin(aavg - beta) * math.sin(aavg - gamma)
    # 4*skew = 1 - cos^2(alpha) - cos^2(beta) - cos^2(gamma) + 2 cos(alpha) cos(beta) cos(gamma):
    # (V/abc)^2, negative when no cell has these angles, about 1e-16 when they lie flat (120 120 120)
    if not skew > FLAT_SKEW:
        raise InputError("impossible unit cell: the angles %g %g %g give %s volume"
                         % (alpha * RTD, beta * RTD, gamma * RTD, "no" if skew < 0 else "zero"))
    skew = abs(skew)
    V_cell = 2.0 * a * b * c * math.sqrt(skew)
    if V_cell <= 0.0:
        log("WARNING: impossible unit cell volume: %g" % V_cell)
        raise InputError("impossible unit cell: the angles give zero volume")
    if not V_cell < math.inf:
        raise InputError("impossible unit cell: lengths %g %g %g A are out of range" % (a, b, c))
    V_star = 1.0 / V_cell
    as0 = b * c * math.sin(alpha) * V_star
    bs0 = c * a * math.sin(beta) * V_star
    cs0 = a * b * math.sin(gamma) * V_star
    if as0 <= 0.0 or bs0 <= 0.0 or cs0 <= 0.0:
        raise InputError("impossible unit cell: reciprocal lengths are not positive")
    sin_a = a * V_star / bs0 / cs0
    sin_b = b * V_star / as0 / cs0
    sin_g = c * V_star / as0 / bs0
    cos_a = (math.cos(beta) * math.cos(gamma) - math.cos(alpha)) / (math.sin(beta) * math.sin(gamma))
    cos_b = (math.cos(gamma) * math.cos(alpha) - math.cos(beta)) / (math.sin(gamma) * math.sin(alpha))
    cos_g = (math.cos(alpha) * math.cos(beta) - math.cos(gamma)) / (math.sin(alpha) * math.sin(beta))
    _oddball((sin_a, sin_b, sin_g, cos_a, cos_b, cos_g), log, "reciprocal cell")
    sin_a, sin_b, sin_g = (min(max(x, -1.0), 1.0) for x in (sin_a, sin_b, sin_g))
    cos_a, cos_b, cos_g = (1.0 if x * x > 1.0 else x for x in (cos_a, cos_b, cos_g))
    a_star = (as0, 0.0, 0.0)
    b_star = (bs0 * cos_g, bs0 * sin_g, 0.0)
    cz = cs0 * V_cell / (a * b * c * sin_g) if parity else V_star / (as0 * bs0 * sin_g)
    c_star = (cs0 * cos_b, cs0 * (cos_a - cos_b * cos_g) / sin_g, cz)
    return a_star, b_star, c_star, V_cell


def random_orientation(seed_c, parity, table=None):
    """Misset angles (rotx, roty, rotz radians) of a random orientation.

    C draws a rotation from its spherical-cap generator with a 90 *radian*
    cap (it meant degrees), which is not uniform over orientations.  Spec mode
    draws a uniform random rotation (Shoemake's quaternion method) from the
    same generator and seed.  ``seed_c`` is the C-internal (negated) seed;
    ``table`` is the run's shared generator state (see ``rng.stream``), or
    None for a stream of its own.
    """
    from reference import rng
    state = rng.stream(seed_c, table)
    if parity:
        umat = rng.mosaic_rotation_umat(90.0, state)
    else:
        u1, u2, u3 = rng.ran1(state), rng.ran1(state), rng.ran1(state)
        q = (math.sqrt(1 - u1) * math.sin(2 * math.pi * u2), math.sqrt(1 - u1) * math.cos(2 * math.pi * u2),
             math.sqrt(u1) * math.sin(2 * math.pi * u3), math.sqrt(u1) * math.cos(2 * math.pi * u3))
        x, y, z, w = q
        umat = np.array([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                         2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                         2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)])
    return tuple(float(x) for x in rng.umat2misset(np.asarray(umat, dtype=np.float64)))


def build_cell(cfg, lambda0, log, table=None) -> Cell:
    """Cell vectors from -cell and/or -mat, then misset, as the C program does.

    ``table`` is the run's shared generator state that a random misset draws
    from (``-c_parity``), or None for a stream of its own.
    """
    a_star = b_star = c_star = (0.0, 0.0, 0.0)
    cell = list(cfg.cell)
    V_user = None
    if cfg.user_cell:
        if cell[1] <= 0.0:
            cell[1] = cell[0]
        if cell[2] <= 0.0:
            cell[2] = cell[0]
        for j in (3, 4, 5):
            if cell[j] <= 0.0:
                cell[j] = math.pi / 2
        a_star, b_star, c_star, V_user = reciprocal_from_cell(*cell, log, parity=cfg.c_parity)

    if cfg.mat_file is not None:
        from reference.fileio import read_mosflm_matrix
        m = read_mosflm_matrix(cfg.mat_file, c_parity=cfg.c_parity).tolist()   # Python floats: inf x 0 is quietly NaN
        log("reading %s" % cfg.mat_file)
        s = 1e-10 / lambda0
        a_star = (s * m[0][0], s * m[1][0], s * m[2][0])
        b_star = (s * m[0][1], s * m[1][1], s * m[2][1])
        c_star = (s * m[0][2], s * m[1][2], s * m[2][2])

    misset = cfg.misset
    if cfg.misset_random:
        seed = cfg.misset_seed
        if seed is None:
            seed = -int(__import__("time").time())
        misset = random_orientation(seed, cfg.c_parity, table)
        log("random orientation misset angles: %f %f %f deg" % tuple(x * RTD for x in misset))
    if misset is not None:
        a_star = V.rotate_xyz(a_star, *misset)
        b_star = V.rotate_xyz(b_star, *misset)
        c_star = V.rotate_xyz(c_star, *misset)

    a_x_b = V.cross(a_star, b_star)
    b_x_c = V.cross(b_star, c_star)
    c_x_a = V.cross(c_star, a_star)
    V_star = V.dot(a_star, b_x_c)
    if cfg.user_cell:
        b_x_c = V.rescale(b_x_c, cell[0] / V_user)
        c_x_a = V.rescale(c_x_a, cell[1] / V_user)
        a_x_b = V.rescale(a_x_b, cell[2] / V_user)
        V_star = 1.0 / V_user
    # a matrix file holding NaN or inf (which only -c_parity reads) makes every vector NaN, as in C
    nan_cell = cfg.c_parity and not np.isfinite(np.concatenate([a_star, b_star, c_star])).all()
    if not nan_cell and (V_star == 0.0 or not math.isfinite(V_star)):
        raise InputError("the orientation matrix is singular (zero cell volume)")
    V_cell = 1.0 / V_star
    a = V.scale(b_x_c, V_cell)
    b = V.scale(c_x_a, V_cell)
    c = V.scale(a_x_b, V_cell)
    a_star = V.scale(V.cross(b, c), V_star)
    b_star = V.scale(V.cross(c, a), V_star)
    c_star = V.scale(V.cross(a, b), V_star)

    la, lb, lc = V.norm(a), V.norm(b), V.norm(c)
    las, lbs, lcs = V.norm(a_star), V.norm(b_star), V.norm(c_star)
    if not nan_cell and not all(0.0 < x < math.inf for x in (la, lb, lc, las, lbs, lcs, V_cell)):
        raise InputError("impossible unit cell: lengths %g %g %g A are out of range" % (la, lb, lc))
    sin_al, sin_be, sin_ga = las * V_cell / lb / lc, lbs * V_cell / la / lc, lcs * V_cell / la / lb
    cos_al, cos_be, cos_ga = V.dot(b, c) / lb / lc, V.dot(a, c) / la / lc, V.dot(a, b) / la / lb
    _oddball((sin_al, sin_be, sin_ga, cos_al, cos_be, cos_ga), log, "cell")
    alpha, beta, gamma = (_clamp_angles(s_, c_) for s_, c_ in
                          ((sin_al, cos_al), (sin_be, cos_be), (sin_ga, cos_ga)))
    sin_als, sin_bes, sin_gas = la * V_star / lbs / lcs, lb * V_star / las / lcs, lc * V_star / las / lbs
    cos_als = V.dot(b_star, c_star) / lbs / lcs
    cos_bes = V.dot(a_star, c_star) / las / lcs
    cos_gas = V.dot(a_star, b_star) / las / lbs
    _oddball((sin_als, sin_bes, sin_gas, cos_als, cos_bes, cos_gas), log, "reciprocal cell")
    alpha_s, beta_s, gamma_s = (_clamp_angles(s_, c_) for s_, c_ in
                                ((sin_als, cos_als), (sin_bes, cos_bes), (sin_gas, cos_gas)))

    log("Unit Cell: %g %g %g %g %g %g" % (la, lb, lc, alpha * RTD, beta * RTD, gamma * RTD))
    log("Recp Cell: %g %g %g %g %g %g" % (las, lbs, lcs, alpha_s * RTD, beta_s * RTD, gamma_s * RTD))
    log("volume = %g A^3" % V_cell)
    log("real-space cell vectors (Angstrom):")
    log("     %-10s  %-10s  %-10s" % ("a", "b", "c"))
    for j, axis in enumerate("XYZ"):
        log("%s: %11.8f %11.8f %11.8f" % (axis, a[j], b[j], c[j]))
    log("reciprocal-space cell vectors (Angstrom^-1):")
    log("     %-10s  %-10s  %-10s" % ("a_star", "b_star", "c_star"))
    for j, axis in enumerate("XYZ"):
        log("%s: %11.8f %11.8f %11.8f" % (axis, a_star[j], b_star[j], c_star[j]))

    return Cell(V.scale(a, 1e-10), V.scale(b, 1e-10), V.scale(c, 1e-10), a_star, b_star, c_star, V_cell,
                tuple(misset) if misset is not None else (0.0, 0.0, 0.0))


def mosaic_domain_matrices(spread, domains, seed_c, table=None):
    """Rotation matrices (domains, 9) of the mosaic domains; the first is identity.

    ``spread`` is in radians, ``seed_c`` the C-internal (negated) seed.
    ``table`` is the run's shared generator state (``-c_parity``), or None
    for a stream of its own.
    """
    umats = np.zeros((domains, 9))
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if domains == 1 and table is None:
        # C draws one matrix and overwrites it with identity; with a stream of
        # its own nobody sees the draw, so skip it
        umats[0] = identity
        return umats
    from reference import rng
    state = rng.stream(seed_c, table)
    for m in range(domains):
        umats[m] = rng.mosaic_rotation_umat(spread, state)
    umats[0] = identity
    return umats
