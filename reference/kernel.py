"""The pixel kernel: the C program's loop nest, compiled with Numba.

Loop order, outermost first (as in C): pixel row (parallel), pixel column,
sensor layer, sub-pixel row, sub-pixel column, source, phi step, mosaic
domain (:func:`render_pixel`).  Each quantity of one evaluation has one
function, in the order the loop computes them:

1. :func:`pixel_position`: where a sub-pixel of a sensor layer sits;
2. :func:`scattering_vector`: diffracted and incident directions, the
   scattering vector S and sin(theta)/lambda (with :func:`beyond_resolution`,
   the ``-dmin`` cut);
3. :func:`miller_indices`: fractional h, k, l and the nearest node;
4. :func:`lattice_factor`: F_latt, the crystal's interference function;
5. :func:`structure_factor`: F_cell (nearest node, tricubic, default_F);
6. :func:`solid_angle`: omega;
7. :func:`polarization_factor`: the Kahn polarization factor;
8. :func:`capture_fraction`: the share of photons a sensor layer absorbs;
9. :func:`accumulate` and :func:`pixel_value`: the running sums and the
   factors that multiply them.

Per pixel the solid angle, polarization and capture fraction are computed
once (at the first sub-pixel, first source, and first sub-pixel of each
layer) and reused, as C does, unless an ``-oversample_*`` flag asks for them
per sub-pixel.  The stages, and :func:`render_pixel` itself, are inlined
into the row function (``inline="always"``), which runs without reference
counting (:data:`NO_REFCOUNT`), so splitting the arithmetic into functions
does not slow it down (a real call of :func:`render_pixel`, which passes the
scene's tuples of arrays, cost more per pixel than a light image's
arithmetic; specs/engines.md).

Frames and units: lab frame, metres for positions, 1/metre for the
scattering vector; direct cell vectors in metres, so ``h = a . s`` is
dimensionless.  The reciprocal vectors used by the round/Gaussian/top-hat
spot shapes are in 1/Angstrom, as C keeps them.

Only arrays and scalars cross the boundary; everything is float64.  The
crystal orientation for every (phi step, mosaic domain) is precomputed by
:mod:`reference.render` into tables, which gives the same numbers C computes
inside the loop, and lets ``-c_parity`` choose which table a phi loop reads
(see :func:`render_rows`).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit, prange
from numba.core.cpu import CPUTargetOptions

# Compiler options for every kernel function: cached on disk, and C's IEEE
# arithmetic (x / 0 gives inf or nan, no Python exception check per division).
JIT = dict(cache=True, error_model="numpy")
# The row function allocates nothing, so it runs without Numba's reference
# counting: the stages inlined into its loop receive copies of the scene's
# tuples of arrays, and counting the references of those copies (atomic
# operations the optimizer cannot always remove) made it about a third slower.
# (``_nrt`` is a Numba option without a public name; where it is gone, the
# row function is compiled like the others, only slower.)
NO_REFCOUNT = dict(JIT, _nrt=False) if hasattr(CPUTargetOptions, "_nrt") else JIT
SQUARE, ROUND, GAUSS, TOPHAT = 0, 1, 2, 3

# Slots of the per-pixel trace array (values of the last evaluation).
TRACE_FIELDS = (
    "pixel_pos_x", "pixel_pos_y", "pixel_pos_z", "diffracted_x", "diffracted_y", "diffracted_z",
    "scattering_x", "scattering_y", "scattering_z", "stol", "h", "k", "l", "h0", "k0", "l0",
    "F_latt", "F_cell", "omega", "polar", "capture_fraction", "I_sum", "pixel_value", "airpath",
    "a_x", "a_y", "a_z", "b_x", "b_y", "b_z", "c_x", "c_y", "c_z", "lambda", "evaluations",
)
TRACE_SIZE = len(TRACE_FIELDS)
_T = {name: i for i, name in enumerate(TRACE_FIELDS)}
T_POS, T_DIFF, T_SCAT, T_STOL, T_HKL, T_HKL0 = _T["pixel_pos_x"], _T["diffracted_x"], _T["scattering_x"], _T["stol"], _T["h"], _T["h0"]
T_FLATT, T_FCELL, T_OMEGA, T_POLAR, T_CAP, T_I = _T["F_latt"], _T["F_cell"], _T["omega"], _T["polar"], _T["capture_fraction"], _T["I_sum"]
T_VALUE, T_AIR, T_ABC, T_LAMBDA, T_NEVAL = _T["pixel_value"], _T["airpath"], _T["a_x"], _T["lambda"], _T["evaluations"]

Detector = namedtuple("Detector", [
    "pix0", "fdet", "sdet", "odet", "beam",          # (3,) each, metres / unit
    "pixel_size", "oversample", "distance", "close_distance",
    "curved", "point_pixel",
    "thicksteps", "thickstep", "mu", "thick",       # sensor layers, m, 1/m, m
    "fpixels", "spixels", "roi", "mask", "has_mask",  # roi: (4,) int64; mask: uint16 (s, f)
])
Beam = namedtuple("Beam", [
    "directions", "wavelengths", "scales",          # (n,3) sample->source, (n,) m, (n,)
    "polar_vector", "kahn", "nopolar", "dmin",
])
Lattice = namedtuple("Lattice", [
    "abc_first", "abc_later",                       # (phisteps, domains, 3, 3) metres
    "recip",                                        # (3, 3) a*, b*, c* in 1/A (rows)
    "Na", "Nb", "Nc", "shape", "fudge",
    "c_sinc3",                                      # parity: C's sinc3 near zero
    "degrees",                                      # (3,) int64: Chebyshev degree per axis, -1: sines
])
Factors = namedtuple("Factors", [
    "Fhkl", "hkl_min", "hkl_max", "hkls", "default_F", "interpolate",
])
Options = namedtuple("Options", [
    "over_thick", "over_polar", "over_omega", "parity", "water_size", "I_bg", "scale",
    "first_pixel", "cut_pixel", "cut_eval",
])


@njit(inline="always", **JIT)
def _unitize(x, y, z):
    """(length, unit vector) of (x, y, z); the zero vector's unit vector is zero."""
    m = math.sqrt(x * x + y * y + z * z)
    if m != 0.0:
        return m, x / m, y / m, z / m
    return m, 0.0, 0.0, 0.0


@njit(inline="always", **JIT)
def _rotate_axis(v0, v1, v2, ax, phi):
    """(v0, v1, v2) rotated by ``phi`` radians about the unit vector ``ax`` (Rodrigues)."""
    s, c = math.sin(phi), math.cos(phi)
    d = (ax[0] * v0 + ax[1] * v1 + ax[2] * v2) * (1.0 - c)
    return (ax[0] * d + v0 * c + (-ax[2] * v1 + ax[1] * v2) * s,
            ax[1] * d + v1 * c + (+ax[2] * v0 - ax[0] * v2) * s,
            ax[2] * d + v2 * c + (-ax[1] * v0 + ax[0] * v1) * s)


# --------------------------------------------------------------------------
# 1. pixel position
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def pixel_is_rendered(spixel, fpixel, det):
    """Whether the loop renders this pixel: inside the ROI (inclusive bounds), mask non-zero."""
    if fpixel < det.roi[0] or fpixel > det.roi[1] or spixel < det.roi[2] or spixel > det.roi[3]:
        return False
    return not (det.has_mask and det.mask[spixel, fpixel] == 0)


@njit(inline="always", **JIT)
def pixel_position(spixel, fpixel, subS, subF, layer, det):
    """Lab position (m) of the centre of one sub-pixel, at the front of one sensor layer.

    A pixel is cut into ``oversample`` x ``oversample`` sub-pixels; ``layer``
    lies ``layer x thickstep`` behind the detector face, along odet.  On a
    curved detector every position is at the same distance: the flat
    position's lab y and z, over the distance, become rotations of
    distance x beam about sdet and fdet.
    """
    n_over = det.oversample
    sub = det.pixel_size / n_over
    Fdet = sub * (fpixel * n_over + subF) + sub / 2.0
    Sdet = sub * (spixel * n_over + subS) + sub / 2.0
    Odet = layer * det.thickstep
    fdet, sdet, odet, pix0 = det.fdet, det.sdet, det.odet, det.pix0
    p0 = Fdet * fdet[0] + Sdet * sdet[0] + Odet * odet[0] + pix0[0]
    p1 = Fdet * fdet[1] + Sdet * sdet[1] + Odet * odet[1] + pix0[1]
    p2 = Fdet * fdet[2] + Sdet * sdet[2] + Odet * odet[2] + pix0[2]
    if det.curved:
        D = det.distance
        v0, v1, v2 = _rotate_axis(D * det.beam[0], D * det.beam[1], D * det.beam[2], sdet, p1 / D)
        p0, p1, p2 = _rotate_axis(v0, v1, v2, fdet, p2 / D)
    return p0, p1, p2


# --------------------------------------------------------------------------
# 2. scattering vector
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def diffracted_direction(p0, p1, p2):
    """(airpath, d): distance (m) from the sample to a position, and the unit vector to it."""
    return _unitize(p0, p1, p2)


@njit(inline="always", **JIT)
def scattering_vector(d0, d1, d2, beam, source):
    """Incident direction i, scattering vector S (1/m) and stol for one source.

    i is the unit vector from the source to the sample (the beam's
    ``directions`` point the other way); S = (d - i) / lambda for the
    diffracted direction d; stol = |S| / 2 = sin(theta) / lambda.
    Returns (i0, i1, i2, S0, S1, S2, stol).
    """
    lam = beam.wavelengths[source]
    i0, i1, i2 = -beam.directions[source, 0], -beam.directions[source, 1], -beam.directions[source, 2]
    s0, s1, s2 = (d0 - i0) / lam, (d1 - i1) / lam, (d2 - i2) / lam
    stol = 0.5 * math.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
    return i0, i1, i2, s0, s1, s2, stol


@njit(inline="always", **JIT)
def beyond_resolution(stol, dmin):
    """The -dmin cut: the lattice spacing 1 / (2 stol) probed is finer than ``dmin`` (m)."""
    return dmin > 0.0 and stol > 0.0 and dmin > 0.5 / stol


# --------------------------------------------------------------------------
# 3. Miller indices
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def miller_indices(cells, phi, domain, s0, s1, s2):
    """Fractional (h, k, l) = (a.S, b.S, c.S) and the nearest node (h0, k0, l0).

    ``cells[phi, domain]`` (3, 3) holds the cell vectors a, b, c (m) as rows
    for one phi step and mosaic domain.  The nearest node is C's
    ceil(x - 0.5): a half-integer goes down.
    """
    h = cells[phi, domain, 0, 0] * s0 + cells[phi, domain, 0, 1] * s1 + cells[phi, domain, 0, 2] * s2
    k = cells[phi, domain, 1, 0] * s0 + cells[phi, domain, 1, 1] * s1 + cells[phi, domain, 1, 2] * s2
    l = cells[phi, domain, 2, 0] * s0 + cells[phi, domain, 2, 1] * s1 + cells[phi, domain, 2, 2] * s2
    return h, k, l, int(math.ceil(h - 0.5)), int(math.ceil(k - 0.5)), int(math.ceil(l - 0.5))


# --------------------------------------------------------------------------
# 4. lattice factor
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def sincg(x, N):
    """Interference function of N unit cells: sin(N x) / sin(x), N at x = 0."""
    if x == 0.0:
        return N
    return math.sin(x * N) / math.sin(x)


@njit(inline="always", **JIT)
def chebyshev_u(c, n):
    """U_n(c), the Chebyshev polynomial of the second kind, by its three-term recurrence.

    U_n(cos x) = sin((n + 1) x) / sin(x), so U_{N-1}(cos x) is sincg(x, N) for
    whole N: one cosine and N - 2 multiply-adds instead of two sines and a
    division, with no 0/0 at the nodes (where it is exactly +-N).
    """
    if n == 0:
        return 1.0
    two_c = 2.0 * c
    u_prev, u = 1.0, two_c
    for _ in range(n - 1):
        u_prev, u = u, two_c * u - u_prev
    return u


@njit(inline="always", **JIT)
def interference(h, h0, N, degree):
    """sin(pi N h) / sin(pi h) for N cells at fractional index h (nearest node h0).

    degree >= 0 (whole N = degree + 1): U_degree(cos(pi h)), with the cosine
    taken of the offset from the node, cos(pi h) = (-1)^h0 cos(pi (h - h0)):
    a small argument, cheaper and more accurate than pi h; U_degree(-c) =
    (-1)^degree U_degree(c) puts the sign back.  Otherwise :func:`sincg`.
    """
    if degree < 0:
        return sincg(math.pi * h, N)
    u = chebyshev_u(math.cos(math.pi * (h - h0)), degree)
    return -u if (h0 * degree) & 1 else u


@njit(inline="always", **JIT)
def sinc3(x, as_c):
    """Fourier transform of a sphere, 3 (sin x - x cos x) / x^3, 1 at x = 0.

    C evaluates the closed form down to x = 0, where sin(x)/x - cos(x)
    cancels catastrophically (it gives 0 instead of 1 for |x| < ~1e-8);
    spec mode switches to the Taylor series 1 - x^2/10 below |x| = 1e-3.
    """
    if x == 0.0:
        return 1.0
    if not as_c and abs(x) < 1e-3:
        return 1.0 - x * x / 10.0
    return 3.0 * (math.sin(x) / x - math.cos(x)) / (x * x)


@njit(inline="always", **JIT)
def lattice_factor(h, k, l, h0, k0, l0, lat):
    """F_latt for fractional (h, k, l) near the nearest node (h0, k0, l0)."""
    Na, Nb, Nc = lat.Na, lat.Nb, lat.Nc
    if lat.shape == SQUARE:
        F = 1.0
        if Na > 1:
            F *= interference(h, h0, Na, lat.degrees[0])
        if Nb > 1:
            F *= interference(k, k0, Nb, lat.degrees[1])
        if Nc > 1:
            F *= interference(l, l0, Nc, lat.degrees[2])
        return F
    r = lat.recip
    dh, dk, dl = h - h0, k - k0, l - l0
    dx = dh * r[0, 0] + dk * r[1, 0] + dl * r[2, 0]
    dy = dh * r[0, 1] + dk * r[1, 1] + dl * r[2, 1]
    dz = dh * r[0, 2] + dk * r[1, 2] + dl * r[2, 2]
    rad_star_sqr = (dx * dx + dy * dy + dz * dz) * Na * Na * Nb * Nb * Nc * Nc
    if lat.shape == ROUND:
        hrad_sqr = dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc
        # 0.7236 scales a sphere to the volume of the Na x Nb x Nc box
        return Na * Nb * Nc * 0.723601254558268 * sinc3(math.pi * math.sqrt(hrad_sqr * lat.fudge), lat.c_sinc3)
    if lat.shape == GAUSS:
        return Na * Nb * Nc * math.exp(-(rad_star_sqr / 0.63 * lat.fudge))
    return Na * Nb * Nc * (1.0 if rad_star_sqr * lat.fudge < 0.3969 else 0.0)


# --------------------------------------------------------------------------
# 5. structure factor
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _lagrange4(xa0, xa1, xa2, xa3, y0, y1, y2, y3, x):
    """Cubic Lagrange polynomial through four points, evaluated at x."""
    t0 = (x - xa1) * (x - xa2) * (x - xa3) * y0 / ((xa0 - xa1) * (xa0 - xa2) * (xa0 - xa3))
    t1 = (x - xa0) * (x - xa2) * (x - xa3) * y1 / ((xa1 - xa0) * (xa1 - xa2) * (xa1 - xa3))
    t2 = (x - xa0) * (x - xa1) * (x - xa3) * y2 / ((xa2 - xa0) * (xa2 - xa1) * (xa2 - xa3))
    t3 = (x - xa0) * (x - xa1) * (x - xa2) * y3 / ((xa3 - xa0) * (xa3 - xa1) * (xa3 - xa2))
    return t0 + t1 + t2 + t3


@njit(inline="always", **JIT)
def _cubic_through_nodes(n, y0, y1, y2, y3, x):
    """The cubic through (n - 1, y0), (n, y1), (n + 1, y2), (n + 2, y3), at x."""
    return _lagrange4(float(n - 1), float(n), float(n + 1), float(n + 2), y0, y1, y2, y3, x)


@njit(inline="always", **JIT)
def _cubic_along_l(F, i, j, il, lf, l):
    """F interpolated along l at table row (i, j), from the 4 nodes starting at index il."""
    return _cubic_through_nodes(lf, F[i, j, il], F[i, j, il + 1], F[i, j, il + 2], F[i, j, il + 3], l)


@njit(inline="always", **JIT)
def _cubic_along_kl(F, i, ik, il, kf, lf, k, l):
    """F interpolated at (k, l) in table plane i, from the 4 x 4 nodes starting at (ik, il)."""
    return _cubic_through_nodes(kf, _cubic_along_l(F, i, ik, il, lf, l), _cubic_along_l(F, i, ik + 1, il, lf, l),
                                _cubic_along_l(F, i, ik + 2, il, lf, l), _cubic_along_l(F, i, ik + 3, il, lf, l), k)


@njit(inline="always", **JIT)
def tricubic_F(h, k, l, sf):
    """Tricubic Lagrange interpolation of F over the 4x4x4 nodes around (h, k, l).

    The nodes are floor(x) - 1 ... floor(x) + 2 along each index; F is
    interpolated along l, then k, then h.
    """
    hf, kf, lf = int(np.floor(h)), int(np.floor(k)), int(np.floor(l))
    ih, ik, il = hf - 1 - sf.hkl_min[0], kf - 1 - sf.hkl_min[1], lf - 1 - sf.hkl_min[2]
    F = sf.Fhkl
    return _cubic_through_nodes(hf, _cubic_along_kl(F, ih, ik, il, kf, lf, k, l),
                                _cubic_along_kl(F, ih + 1, ik, il, kf, lf, k, l),
                                _cubic_along_kl(F, ih + 2, ik, il, kf, lf, k, l),
                                _cubic_along_kl(F, ih + 3, ik, il, kf, lf, k, l), h)


@njit(inline="always", **JIT)
def nearest_F(h0, k0, l0, sf):
    """F of the nearest reflection, or default_F outside the table."""
    if (sf.hkls != 0 and sf.hkl_min[0] <= h0 <= sf.hkl_max[0] and sf.hkl_min[1] <= k0 <= sf.hkl_max[1]
            and sf.hkl_min[2] <= l0 <= sf.hkl_max[2]):
        return sf.Fhkl[h0 - sf.hkl_min[0], k0 - sf.hkl_min[1], l0 - sf.hkl_min[2]]
    return sf.default_F


@njit(inline="always", **JIT)
def outside_interpolation_grid(h, k, l, sf):
    """C's (conservative) test that the 4x4x4 neighbourhood may leave the table."""
    h_range = sf.hkl_max[0] - sf.hkl_min[0] + 1
    k_range = sf.hkl_max[1] - sf.hkl_min[1] + 1
    l_range = sf.hkl_max[2] - sf.hkl_min[2] + 1
    return ((h - sf.hkl_min[0] + 3) > h_range or (h - 2) < sf.hkl_min[0]
            or (k - sf.hkl_min[1] + 3) > k_range or (k - 2) < sf.hkl_min[1]
            or (l - sf.hkl_min[2] + 3) > l_range or (l - 2) < sf.hkl_min[2])


@njit(inline="always", **JIT)
def interpolates(pix, n_eval, sf, opt):
    """Whether evaluation ``n_eval`` of pixel ``pix`` interpolates F.

    -interpolate asks for it; under -c_parity it stops for the rest of the run
    at the run's first out-of-table evaluation (quirk c), which a first pass
    finds: (``cut_pixel``, ``cut_eval``) in raster order.
    """
    return sf.interpolate != 0 and (pix < opt.cut_pixel or (pix == opt.cut_pixel and n_eval < opt.cut_eval))


@njit(inline="always", **JIT)
def structure_factor(h, k, l, h0, k0, l0, sf, interpolate):
    """F_cell at fractional (h, k, l), and whether interpolation fell back.

    With ``interpolate``: tricubic interpolation over the 4x4x4 nodes around
    (h, k, l), or, where that neighbourhood may leave the table, the nearest
    node (the second value is then True).  Without: the nearest node's F;
    default_F off the table or without one.
    """
    if interpolate:
        if not outside_interpolation_grid(h, k, l, sf):
            return tricubic_F(h, k, l, sf), False
        return nearest_F(h0, k0, l0, sf), True
    return nearest_F(h0, k0, l0, sf), False


# --------------------------------------------------------------------------
# 6. solid angle
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def solid_angle(airpath, det):
    """omega (sr): the pixel seen from the sample, for a sub-pixel ``airpath`` (m) away.

    pixel_size^2 / airpath^2 times the obliquity close_distance / airpath;
    -point_pixel drops area and obliquity: 1 / airpath^2.
    """
    if det.point_pixel:
        return 1.0 / airpath / airpath
    return det.pixel_size * det.pixel_size / airpath / airpath * det.close_distance / airpath


# --------------------------------------------------------------------------
# 7. polarization factor
# --------------------------------------------------------------------------

@njit(**JIT)
def polarization_factor(kahn, i0, i1, i2, d0, d1, d2, axis):
    """Kahn polarization factor for incident unit vector i and diffracted d.

    ``axis`` is the E-vector direction of the incident beam; kahn = 0 is an
    unpolarized beam, 1 fully polarized along ``axis``.
    """
    cos2t = i0 * d0 + i1 * d1 + i2 * d2
    cos2t_sqr = cos2t * cos2t
    sin2t_sqr = 1 - cos2t_sqr
    psi = 0.0
    if kahn != 0.0:
        # B = axis x incident, E = incident x B, both unit
        _, b0, b1, b2 = _unitize(axis[1] * i2 - axis[2] * i1, axis[2] * i0 - axis[0] * i2, axis[0] * i1 - axis[1] * i0)
        _, e0, e1, e2 = _unitize(i1 * b2 - i2 * b1, i2 * b0 - i0 * b2, i0 * b1 - i1 * b0)
        psi = -math.atan2(d0 * b0 + d1 * b1 + d2 * b2, d0 * e0 + d1 * e1 + d2 * e2)
    return 0.5 * (1.0 + cos2t_sqr - kahn * math.cos(2 * psi) * sin2t_sqr)


# --------------------------------------------------------------------------
# 8. capture fraction
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def capture_fraction(layer, d0, d1, d2, det):
    """Share of the photons along the unit vector d that sensor layer ``layer`` absorbs.

    Beer-Lambert between the layer's front and back faces, the path through
    the sensor lengthened by the parallax 1 / (d . odet):
    exp(-t dt mu / parallax) - exp(-(t + 1) dt mu / parallax) with dt = thickstep.
    """
    parallax = d0 * det.odet[0] + d1 * det.odet[1] + d2 * det.odet[2]
    return (math.exp(-layer * det.thickstep * det.mu / parallax)
            - math.exp(-(layer + 1) * det.thickstep * det.mu / parallax))


# --------------------------------------------------------------------------
# 9. accumulation
# --------------------------------------------------------------------------
# omega, polar and the capture fraction are cached per pixel, as C does: each
# is computed where it is still 0 (at the pixel's first sub-pixel and source;
# the capture fraction at each layer's first sub-pixel), then reused, unless
# its -oversample_omega/_polar/_thick flag asks for it per sub-pixel.  A factor
# asked per sub-pixel multiplies in accumulate(); the others once per pixel,
# in pixel_value().

@njit(inline="always", **JIT)
def accumulate(term, weight, capfrac, polar, omega, I_run, I_layer, opt):
    """Add one evaluation's ``term`` = F_cell^2 F_latt^2 to the pixel's sums.

    Returns (I_run, I_layer).  -c_parity: C's running sum ``I_run`` gains the
    term, then the per-sub-pixel factors multiply the whole sum (quirk b).
    Spec mode: they multiply the term, which is weighted by its source's
    ``weight`` and added to ``I_layer``, one sensor layer's photons.
    """
    if opt.parity:
        I_run += term
        if opt.over_thick:
            I_run *= capfrac
        if opt.over_polar:
            I_run *= polar
        if opt.over_omega:
            I_run *= omega
    else:
        if opt.over_thick:
            term *= capfrac
        if opt.over_polar:
            term *= polar
        if opt.over_omega:
            term *= omega
        I_layer += term * weight
    return I_run, I_layer


@njit(inline="always", **JIT)
def add_layer(I, I_layer, capfrac, opt):
    """Spec mode: a sensor layer's photons, weighted by that layer's own capture fraction.

    (Under -oversample_thick the terms already carry it.)
    """
    return I + (I_layer if opt.over_thick else I_layer * capfrac)


@njit(inline="always", **JIT)
def pixel_value(I, I_run, capfrac, polar, omega, capsum, polar_first, omega_first, opt):
    """Photons in the pixel: the sums times the factors cached per pixel, times ``opt.scale``.

    ``opt.scale`` is r_e^2 x fluence / steps.  -c_parity: C's running sum
    (background included) times the last cached capture fraction (the last
    layer's, for every layer: quirk g), polar and omega.  Spec mode: the Bragg
    sum ``I`` times the cached polar and omega, plus the water background
    times the pixel's first cached factors (``capsum``: the layers' capture
    fractions), whatever the flags.
    """
    if opt.parity:
        value = opt.scale * I_run
        if not opt.over_thick:
            value *= capfrac
        if not opt.over_polar:
            value *= polar
        if not opt.over_omega:
            value *= omega
        return value
    bragg = I
    if not opt.over_polar:
        bragg *= polar
    if not opt.over_omega:
        bragg *= omega
    return opt.scale * (bragg + opt.I_bg * capsum * polar_first * omega_first)


# --------------------------------------------------------------------------
# tracing (-trace_pixel): the intermediates of the last evaluation
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _trace_evaluation(trace, h, k, l, h0, k0, l0, F_latt, F_cell, cells, phi, domain):
    trace[T_HKL], trace[T_HKL + 1], trace[T_HKL + 2] = h, k, l
    trace[T_HKL0], trace[T_HKL0 + 1], trace[T_HKL0 + 2] = h0, k0, l0
    trace[T_FLATT], trace[T_FCELL] = F_latt, F_cell
    for j in range(3):
        for q in range(3):
            trace[T_ABC + 3 * j + q] = cells[phi, domain, j, q]


@njit(inline="always", **JIT)
def _trace_source(trace, s0, s1, s2, stol, lam):
    trace[T_SCAT], trace[T_SCAT + 1], trace[T_SCAT + 2] = s0, s1, s2
    trace[T_STOL], trace[T_LAMBDA] = stol, lam


@njit(inline="always", **JIT)
def _trace_subpixel(trace, p0, p1, p2, d0, d1, d2, airpath):
    trace[T_POS], trace[T_POS + 1], trace[T_POS + 2] = p0, p1, p2
    trace[T_DIFF], trace[T_DIFF + 1], trace[T_DIFF + 2] = d0, d1, d2
    trace[T_AIR] = airpath


@njit(inline="always", **JIT)
def _trace_pixel(trace, omega, polar, capfrac, I_sum, value, n_eval):
    trace[T_OMEGA], trace[T_POLAR], trace[T_CAP] = omega, polar, capfrac
    trace[T_I] = I_sum
    trace[T_VALUE] = value
    trace[T_NEVAL] = n_eval


# --------------------------------------------------------------------------
# one pixel: the loop nest
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def render_pixel(spixel, fpixel, det, beam, lat, sf, opt, trace, oob):
    """Photons in one pixel; also returns the summed solid angle (for statistics).

    ``trace`` (length TRACE_SIZE, or 0 to skip) receives the intermediates of
    the last evaluation.  ``oob`` (length 4) receives the index of the first
    evaluation whose interpolation neighbourhood left the table, and its h, k, l.
    """
    pix = spixel * det.fpixels + fpixel
    do_trace = trace.shape[0] > 0
    nphi, ndomains = lat.abc_later.shape[0], lat.abc_later.shape[1]
    parity = opt.parity

    I = 0.0                 # spec: Bragg photons, each layer weighted by its capture fraction
    I_run = opt.I_bg        # parity: C's running sum, which starts at the background
    # the factors cached per pixel (0: not computed yet), and their first values (spec background)
    omega = 0.0
    polar = 1.0 if beam.nopolar else 0.0
    capfrac = 0.0
    omega_first = 0.0
    polar_first = polar
    capsum = 0.0            # the layers' cached capture fractions
    omega_sum = 0.0
    n_eval = 0
    fresh = pix == opt.first_pixel      # parity: the run's first phi loop sees the unrotated cell

    for t in range(det.thicksteps):
        capfrac = 1.0 if det.thick == 0.0 else 0.0
        I_layer = 0.0
        for subS in range(det.oversample):
            for subF in range(det.oversample):
                p0, p1, p2 = pixel_position(spixel, fpixel, subS, subF, t, det)
                airpath, d0, d1, d2 = diffracted_direction(p0, p1, p2)

                if omega == 0.0 or opt.over_omega:
                    omega = solid_angle(airpath, det)
                omega_sum += omega
                if omega_first == 0.0:
                    omega_first = omega
                # (C recomputes even without a sensor, which zeroes the image: parity only, quirk l)
                if capfrac == 0.0 or (opt.over_thick and (parity or det.thick != 0.0)):
                    capfrac = capture_fraction(t, d0, d1, d2, det)
                if subS == 0 and subF == 0:
                    capsum += capfrac

                for s in range(beam.directions.shape[0]):
                    i0, i1, i2, s0, s1, s2, stol = scattering_vector(d0, d1, d2, beam, s)
                    if beyond_resolution(stol, beam.dmin):
                        continue
                    # (C polarizes under -nopolar -oversample_polar: parity only, quirk k)
                    if polar == 0.0 or (opt.over_polar and (parity or not beam.nopolar)):
                        polar = polarization_factor(beam.kahn, i0, i1, i2, d0, d1, d2, beam.polar_vector)
                        if polar_first == 0.0:
                            polar_first = polar
                        # C renormalises the diffracted vector in place here
                        _, d0, d1, d2 = _unitize(d0, d1, d2)

                    cells = lat.abc_first if fresh else lat.abc_later
                    fresh = False
                    for p in range(nphi):
                        for m in range(ndomains):
                            h, k, l, h0, k0, l0 = miller_indices(cells, p, m, s0, s1, s2)
                            F_latt = lattice_factor(h, k, l, h0, k0, l0, lat)
                            if F_latt == 0.0 and opt.water_size == 0.0:
                                continue            # C's shortcut: not counted as an evaluation
                            F_cell, fell_back = structure_factor(h, k, l, h0, k0, l0, sf,
                                                                 interpolates(pix, n_eval, sf, opt))
                            if fell_back and oob[0] < 0:
                                oob[0], oob[1], oob[2], oob[3] = n_eval, h, k, l
                            n_eval += 1
                            I_run, I_layer = accumulate(F_cell * F_cell * F_latt * F_latt, beam.scales[s],
                                                        capfrac, polar, omega, I_run, I_layer, opt)
                            if do_trace:
                                _trace_evaluation(trace, h, k, l, h0, k0, l0, F_latt, F_cell, cells, p, m)
                    if do_trace:
                        _trace_source(trace, s0, s1, s2, stol, beam.wavelengths[s])
                if do_trace:
                    _trace_subpixel(trace, p0, p1, p2, d0, d1, d2, airpath)
        I = add_layer(I, I_layer, capfrac, opt)

    value = pixel_value(I, I_run, capfrac, polar, omega, capsum, polar_first, omega_first, opt)
    if do_trace:
        _trace_pixel(trace, omega, polar, capfrac, I_run if parity else I + opt.I_bg * capsum, value, n_eval)
    return value, omega_sum


@njit(parallel=True, **JIT)
def render_rows(image, omega_rows, oob_eval, oob_hkl, det, beam, lat, sf, opt, row_start, row_end):
    """Render the active pixels of rows [row_start, row_end) of ``image``, rows in parallel.

    ``image`` is float32 (slow, fast).

    A pixel is active inside the ROI (inclusive bounds) where the mask is
    non-zero.  ``oob_eval``/``oob_hkl`` (per pixel) receive the first
    out-of-table interpolation of that pixel, -1 if none.
    """
    no_trace = np.zeros(0)
    for spixel in prange(row_start, row_end):
        oob = np.empty(4)
        render_row(image, omega_rows, oob_eval, oob_hkl, det, beam, lat, sf, opt, spixel, no_trace, oob)


@njit(**NO_REFCOUNT)
def render_row(image, omega_rows, oob_eval, oob_hkl, det, beam, lat, sf, opt, spixel, no_trace, oob):
    """Render the active pixels of row ``spixel`` (see :func:`render_rows`).

    A function of its own, called once per row, so that the pixel loop with
    :func:`render_pixel` inlined compiles as ordinary code: inlined into the
    parallel loop itself it took Numba's parallel passes twice as long to
    compile.  ``no_trace`` (empty) and ``oob`` (4 slots) are the caller's, so
    that this function allocates nothing (:data:`NO_REFCOUNT`).
    """
    row_omega = 0.0
    for fpixel in range(det.fpixels):
        if not pixel_is_rendered(spixel, fpixel, det):
            continue
        oob[0] = -1.0
        value, omega_sum = render_pixel(spixel, fpixel, det, beam, lat, sf, opt, no_trace, oob)
        image[spixel, fpixel] = value          # rounded to the image's dtype
        row_omega += omega_sum
        if oob[0] >= 0 and oob_eval.shape[0] > 1:
            pix = spixel * det.fpixels + fpixel
            oob_eval[pix] = np.int64(oob[0])
            oob_hkl[pix, 0], oob_hkl[pix, 1], oob_hkl[pix, 2] = oob[1], oob[2], oob[3]
    omega_rows[spixel] = row_omega


@njit(**JIT)
def first_evaluated_pixel(det, beam):
    """Index of the first pixel (raster order) whose phi loop runs at all.

    A phi loop is skipped only when the resolution cut rejects a source, so
    this is the first active pixel with a sub-pixel and source inside -dmin.
    """
    for spixel in range(det.spixels):
        for fpixel in range(det.fpixels):
            if not pixel_is_rendered(spixel, fpixel, det):
                continue
            if beam.dmin <= 0.0:
                return spixel * det.fpixels + fpixel
            for t in range(det.thicksteps):
                for subS in range(det.oversample):
                    for subF in range(det.oversample):
                        p0, p1, p2 = pixel_position(spixel, fpixel, subS, subF, t, det)
                        _, d0, d1, d2 = diffracted_direction(p0, p1, p2)
                        for s in range(beam.directions.shape[0]):
                            stol = scattering_vector(d0, d1, d2, beam, s)[6]
                            if not beyond_resolution(stol, beam.dmin):
                                return spixel * det.fpixels + fpixel
    return -1
