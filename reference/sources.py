"""X-ray sources: beam divergence and spectral dispersion, or a source file.

Each source is a unit vector pointing from the sample towards the source, a
wavelength (metres) and a weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reference import vectors as V
from reference.errors import InputError

SOURCE_DISTANCE = 10.0     # metres: where generated sources sit


@dataclass
class Sources:
    direction: np.ndarray     # (n, 3) unit vectors, sample -> source
    wavelength: np.ndarray    # (n,) metres
    weight: np.ndarray        # (n,)
    divsteps: int             # divergence points kept (C prints -1 for a file)


def _ieee_div(x, y):
    """x / y with IEEE results for y == 0 (C arithmetic, not a Python error)."""
    return float(np.float64(x) / np.float64(y)) if y == 0 else x / y


def inside_ellipse(hdiv, vdiv, hstep, hsteps, hrange, vstep, vsteps, vrange):
    """C's test for keeping a divergence grid point (round_div)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        test = _ieee_div(hdiv * hdiv - hstep * hstep / 4.0 * (1 - hsteps % 2), hrange)
        test = _ieee_div(test, hrange)
        t2 = _ieee_div(vdiv * vdiv - vstep * vstep / 4.0 * (1 - vsteps % 2), vrange)
        test += _ieee_div(t2, vrange)
    return not (test * 4.0 > 1.1)


def build_sources(cfg, beam, polar_vector, lambda0, hdivsteps, hdivrange, hdivstep,
                  vdivsteps, vdivrange, vdivstep, dispsteps, dispersion, dispstep, log) -> Sources:
    """The source list, generated or read, printed as the C program prints it."""
    if cfg.source_file is not None:
        rows = _read_file_sources(cfg.source_file, beam, lambda0, cfg.c_parity)
        divsteps = -1
    else:
        rows, divsteps = _generate(cfg, beam, polar_vector, lambda0, hdivsteps, hdivrange, hdivstep,
                                   vdivsteps, vdivrange, vdivstep, dispsteps, dispersion, dispstep, log)
    log("  created a total of %d sources:" % len(rows))
    direction = np.zeros((len(rows), 3))
    for s, (x, y, z, weight, lam) in enumerate(rows):
        log("%g %g %g   %g %g" % (x, y, z, weight, lam))
        unit, length = V.unitize((x, y, z))
        if length == 0.0:
            raise InputError(f"source {s + 1} sits at the sample (zero direction)")
        if not lam > 0.0:
            raise InputError(f"source {s + 1} has a non-positive wavelength")
        direction[s] = unit
    return Sources(direction, np.array([r[4] for r in rows], dtype=np.float64),
                   np.array([r[3] for r in rows], dtype=np.float64), divsteps)


def _read_file_sources(path, beam, lambda0, c_parity=False):
    from reference.fileio import read_source_file
    table = read_source_file(path, c_parity=c_parity)
    rows = []
    for x, y, z, weight, lam in table:
        rows.append((-SOURCE_DISTANCE * beam[0] if math.isnan(x) else x,
                     -SOURCE_DISTANCE * beam[1] if math.isnan(y) else y,
                     -SOURCE_DISTANCE * beam[2] if math.isnan(z) else z,
                     1.0 if math.isnan(weight) else weight,
                     lambda0 if math.isnan(lam) else lam))
    return rows


def _generate(cfg, beam, polar_vector, lambda0, hdivsteps, hdivrange, hdivstep,
              vdivsteps, vdivrange, vdivstep, dispsteps, dispersion, dispstep, log):
    """A divergence grid (optionally trimmed to an ellipse) times a wavelength list."""
    vert, _ = V.unitize(V.cross(beam, polar_vector))
    grid = []
    for ih in range(hdivsteps):
        for iv in range(vdivsteps):
            hdiv = hdivstep * ih - hdivrange / 2.0
            vdiv = vdivstep * iv - vdivrange / 2.0
            if cfg.round_div and not inside_ellipse(hdiv, vdiv, hdivstep, hdivsteps, hdivrange,
                                                     vdivstep, vdivsteps, vdivrange):
                continue
            grid.append((hdiv, vdiv))
            log("divergence deviation: %g %g" % (hdiv, vdiv))
    lambdas = [lambda0 * (1.0 + dispstep * d - dispersion / 2.0) for d in range(dispsteps)]
    for d, lam in enumerate(lambdas):
        log("lambda%d = %.15g" % (d, lam))
    if not grid:
        raise InputError("the divergence settings leave no source")
    weight = 1.0 / (len(grid) * dispsteps)
    rows = []
    for hdiv, vdiv in grid:
        start = (-SOURCE_DISTANCE * beam[0], -SOURCE_DISTANCE * beam[1], -SOURCE_DISTANCE * beam[2])
        # divergence is an angle: tilt about the E-vector, then about the vertical
        tilted = V.rotate_axis(V.rotate_axis(start, polar_vector, vdiv), vert, hdiv)
        for lam in lambdas:
            rows.append((tilted[0], tilted[1], tilted[2], weight, lam))
    return rows, len(grid)
