"""The pixel kernel: the C program's loop nest, compiled with Numba.

Loop order, outermost first (as in C): pixel row (parallel), pixel column,
sensor layer, sub-pixel row, sub-pixel column, source, phi step, mosaic
domain.  Per pixel the solid angle, polarization and capture fraction are
computed once (at the first sub-pixel, first source, and first sub-pixel of
each layer) and reused, as C does, unless an ``-oversample_*`` flag asks for
them per sub-pixel.

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

# Compiler options for every kernel function: cached on disk, and C's IEEE
# arithmetic (x / 0 gives inf or nan, no Python exception check per division).
JIT = dict(cache=True, error_model="numpy")

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
])
Factors = namedtuple("Factors", [
    "Fhkl", "hkl_min", "hkl_max", "hkls", "default_F", "interpolate",
])
Options = namedtuple("Options", [
    "over_thick", "over_polar", "over_omega", "parity", "water_size", "I_bg", "scale",
    "first_pixel", "cut_pixel", "cut_eval",
])


# --------------------------------------------------------------------------
# lattice transforms
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def sincg(x, N):
    """Interference function of N unit cells: sin(N x) / sin(x), N at x = 0."""
    if x == 0.0:
        return N
    return math.sin(x * N) / math.sin(x)


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
            F *= sincg(math.pi * h, Na)
        if Nb > 1:
            F *= sincg(math.pi * k, Nb)
        if Nc > 1:
            F *= sincg(math.pi * l, Nc)
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
# structure factors
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _lagrange4(xa0, xa1, xa2, xa3, y0, y1, y2, y3, x):
    """Cubic Lagrange polynomial through four points, evaluated at x."""
    t0 = (x - xa1) * (x - xa2) * (x - xa3) * y0 / ((xa0 - xa1) * (xa0 - xa2) * (xa0 - xa3))
    t1 = (x - xa0) * (x - xa2) * (x - xa3) * y1 / ((xa1 - xa0) * (xa1 - xa2) * (xa1 - xa3))
    t2 = (x - xa0) * (x - xa1) * (x - xa3) * y2 / ((xa2 - xa0) * (xa2 - xa1) * (xa2 - xa3))
    t3 = (x - xa0) * (x - xa1) * (x - xa2) * y3 / ((xa3 - xa0) * (xa3 - xa1) * (xa3 - xa2))
    return t0 + t1 + t2 + t3


@njit(**JIT)
def tricubic_F(h, k, l, sf):
    """Tricubic Lagrange interpolation of F over the 4x4x4 nodes around (h, k, l)."""
    hf, kf, lf = int(np.floor(h)), int(np.floor(k)), int(np.floor(l))
    hm, km, lm = sf.hkl_min[0], sf.hkl_min[1], sf.hkl_min[2]
    hx = np.empty(4)
    kx = np.empty(4)
    lx = np.empty(4)
    for i in range(4):
        hx[i] = hf - 1 + i
        kx[i] = kf - 1 + i
        lx[i] = lf - 1 + i
    F = sf.Fhkl
    along_h = np.empty(4)
    along_k = np.empty(4)
    il = lf - 1 - lm
    for i in range(4):
        ih = hf - 1 + i - hm
        for j in range(4):
            ik = kf - 1 + j - km
            along_k[j] = _lagrange4(lx[0], lx[1], lx[2], lx[3],
                                    F[ih, ik, il], F[ih, ik, il + 1], F[ih, ik, il + 2], F[ih, ik, il + 3], l)
        along_h[i] = _lagrange4(kx[0], kx[1], kx[2], kx[3], along_k[0], along_k[1], along_k[2], along_k[3], k)
    return _lagrange4(hx[0], hx[1], hx[2], hx[3], along_h[0], along_h[1], along_h[2], along_h[3], h)


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


# --------------------------------------------------------------------------
# per-pixel geometric factors
# --------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _rotate_axis(v0, v1, v2, ax, phi):
    s, c = math.sin(phi), math.cos(phi)
    d = (ax[0] * v0 + ax[1] * v1 + ax[2] * v2) * (1.0 - c)
    return (ax[0] * d + v0 * c + (-ax[2] * v1 + ax[1] * v2) * s,
            ax[1] * d + v1 * c + (+ax[2] * v0 - ax[0] * v2) * s,
            ax[2] * d + v2 * c + (-ax[1] * v0 + ax[0] * v1) * s)


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
        b0 = axis[1] * i2 - axis[2] * i1
        b1 = axis[2] * i0 - axis[0] * i2
        b2 = axis[0] * i1 - axis[1] * i0
        m = math.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
        if m != 0.0:
            b0, b1, b2 = b0 / m, b1 / m, b2 / m
        else:
            b0, b1, b2 = 0.0, 0.0, 0.0
        e0 = i1 * b2 - i2 * b1
        e1 = i2 * b0 - i0 * b2
        e2 = i0 * b1 - i1 * b0
        m = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
        if m != 0.0:
            e0, e1, e2 = e0 / m, e1 / m, e2 / m
        else:
            e0, e1, e2 = 0.0, 0.0, 0.0
        psi = -math.atan2(d0 * b0 + d1 * b1 + d2 * b2, d0 * e0 + d1 * e1 + d2 * e2)
    return 0.5 * (1.0 + cos2t_sqr - kahn * math.cos(2 * psi) * sin2t_sqr)


# --------------------------------------------------------------------------
# one pixel
# --------------------------------------------------------------------------

@njit(**JIT)
def render_pixel(spixel, fpixel, det, beam, lat, sf, opt, trace, oob):
    """Photons in one pixel; also returns the summed solid angle (for statistics).

    ``trace`` (length TRACE_SIZE, or 0 to skip) receives the intermediates of
    the last evaluation.  ``oob`` (length 4) receives the index of the first
    evaluation whose interpolation neighbourhood left the table, and its h, k, l.
    """
    pix = spixel * det.fpixels + fpixel
    do_trace = trace.shape[0] > 0
    pixel_size = det.pixel_size
    n_over = det.oversample
    sub = pixel_size / n_over
    fdet, sdet, odet, pix0 = det.fdet, det.sdet, det.odet, det.pix0
    src, lam_of, scale_of = beam.directions, beam.wavelengths, beam.scales
    nsrc = src.shape[0]
    nphi = lat.abc_later.shape[0]
    nmos = lat.abc_later.shape[1]
    parity = opt.parity

    I = 0.0                 # Bragg sum (spec: weighted by per-layer capture)
    I_run = opt.I_bg        # C's running sum (parity)
    polar = 1.0 if beam.nopolar else 0.0
    omega = 0.0
    omega_sum = 0.0
    omega_first = 0.0       # the per-pixel cached values, for the background (spec)
    polar_first = polar
    capsum = 0.0
    capfrac = 0.0
    n_eval = 0
    fresh = pix == opt.first_pixel      # the first phi loop of the run sees the unrotated cell
    h = k = l = F_latt = F_cell = stol = 0.0
    h0 = k0 = l0 = 0
    interp_on = sf.interpolate != 0

    for t in range(det.thicksteps):
        Odet = t * det.thickstep
        capfrac = 1.0 if det.thick == 0.0 else 0.0
        I_layer = 0.0
        for subS in range(n_over):
            for subF in range(n_over):
                Fdet = sub * (fpixel * n_over + subF) + sub / 2.0
                Sdet = sub * (spixel * n_over + subS) + sub / 2.0
                p0 = Fdet * fdet[0] + Sdet * sdet[0] + Odet * odet[0] + pix0[0]
                p1 = Fdet * fdet[1] + Sdet * sdet[1] + Odet * odet[1] + pix0[1]
                p2 = Fdet * fdet[2] + Sdet * sdet[2] + Odet * odet[2] + pix0[2]
                if det.curved:
                    # every pixel at the same distance: detector coordinates become angles
                    D = det.distance
                    v0, v1, v2 = _rotate_axis(D * det.beam[0], D * det.beam[1], D * det.beam[2], sdet, p1 / D)
                    p0, p1, p2 = _rotate_axis(v0, v1, v2, fdet, p2 / D)
                airpath = math.sqrt(p0 * p0 + p1 * p1 + p2 * p2)
                if airpath != 0.0:
                    d0, d1, d2 = p0 / airpath, p1 / airpath, p2 / airpath
                else:
                    d0 = d1 = d2 = 0.0

                if omega == 0.0 or opt.over_omega:
                    omega = pixel_size * pixel_size / airpath / airpath * det.close_distance / airpath
                    if det.point_pixel:
                        omega = 1.0 / airpath / airpath
                omega_sum += omega
                if omega_first == 0.0:
                    omega_first = omega

                # (C recomputes even without a sensor, which zeroes the image: parity only)
                if capfrac == 0.0 or (opt.over_thick and (parity or det.thick != 0.0)):
                    parallax = d0 * odet[0] + d1 * odet[1] + d2 * odet[2]
                    capfrac = (math.exp(-t * det.thickstep * det.mu / parallax)
                               - math.exp(-(t + 1) * det.thickstep * det.mu / parallax))
                if subS == 0 and subF == 0:
                    capsum += capfrac               # the layer's cached fraction (spec mode)

                for s in range(nsrc):
                    i0, i1, i2 = -src[s, 0], -src[s, 1], -src[s, 2]
                    lam = lam_of[s]
                    s0, s1, s2 = (d0 - i0) / lam, (d1 - i1) / lam, (d2 - i2) / lam
                    stol = 0.5 * math.sqrt(s0 * s0 + s1 * s1 + s2 * s2)
                    if beam.dmin > 0.0 and stol > 0.0 and beam.dmin > 0.5 / stol:
                        continue

                    if polar == 0.0 or (opt.over_polar and (parity or not beam.nopolar)):
                        polar = polarization_factor(beam.kahn, i0, i1, i2, d0, d1, d2, beam.polar_vector)
                        if polar_first == 0.0:
                            polar_first = polar
                        # C renormalises the diffracted vector in place here
                        m = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
                        if m != 0.0:
                            d0, d1, d2 = d0 / m, d1 / m, d2 / m

                    table = lat.abc_first if fresh else lat.abc_later
                    fresh = False
                    for p in range(nphi):
                        for m_ in range(nmos):
                            h = table[p, m_, 0, 0] * s0 + table[p, m_, 0, 1] * s1 + table[p, m_, 0, 2] * s2
                            k = table[p, m_, 1, 0] * s0 + table[p, m_, 1, 1] * s1 + table[p, m_, 1, 2] * s2
                            l = table[p, m_, 2, 0] * s0 + table[p, m_, 2, 1] * s1 + table[p, m_, 2, 2] * s2
                            h0 = int(math.ceil(h - 0.5))
                            k0 = int(math.ceil(k - 0.5))
                            l0 = int(math.ceil(l - 0.5))
                            F_latt = lattice_factor(h, k, l, h0, k0, l0, lat)
                            if F_latt == 0.0 and opt.water_size == 0.0:
                                continue

                            use_interp = interp_on and (pix < opt.cut_pixel or (pix == opt.cut_pixel and n_eval < opt.cut_eval))
                            if use_interp and outside_interpolation_grid(h, k, l, sf):
                                if oob[0] < 0:
                                    oob[0], oob[1], oob[2], oob[3] = n_eval, h, k, l
                                use_interp = False
                            if use_interp:
                                F_cell = tricubic_F(h, k, l, sf)
                            else:
                                F_cell = nearest_F(h0, k0, l0, sf)
                            n_eval += 1

                            term = F_cell * F_cell * F_latt * F_latt
                            if parity:
                                # C multiplies the running sum, not the term
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
                                I_layer += term * scale_of[s]
                            if do_trace:
                                trace[T_HKL], trace[T_HKL + 1], trace[T_HKL + 2] = h, k, l
                                trace[T_HKL0], trace[T_HKL0 + 1], trace[T_HKL0 + 2] = h0, k0, l0
                                trace[T_FLATT], trace[T_FCELL] = F_latt, F_cell
                                for j in range(3):
                                    for q in range(3):
                                        trace[T_ABC + 3 * j + q] = table[p, m_, j, q]
                    if do_trace:
                        trace[T_SCAT], trace[T_SCAT + 1], trace[T_SCAT + 2] = s0, s1, s2
                        trace[T_STOL], trace[T_LAMBDA] = stol, lam
                if do_trace:
                    trace[T_POS], trace[T_POS + 1], trace[T_POS + 2] = p0, p1, p2
                    trace[T_DIFF], trace[T_DIFF + 1], trace[T_DIFF + 2] = d0, d1, d2
                    trace[T_AIR] = airpath
        # spec: each layer's photons weighted by that layer's own capture fraction
        I += I_layer if opt.over_thick else I_layer * capfrac

    if parity:
        value = opt.scale * I_run
        if not opt.over_thick:
            value *= capfrac              # the last layer's fraction, for every layer
        if not opt.over_polar:
            value *= polar
        if not opt.over_omega:
            value *= omega
    else:
        bragg = I
        if not opt.over_polar:
            bragg *= polar
        if not opt.over_omega:
            bragg *= omega
        # the background takes the pixel's cached factors, whatever the flags
        value = opt.scale * (bragg + opt.I_bg * capsum * polar_first * omega_first)
    if do_trace:
        trace[T_OMEGA], trace[T_POLAR], trace[T_CAP] = omega, polar, capfrac
        trace[T_I] = I_run if parity else I + opt.I_bg * capsum
        trace[T_VALUE] = value
        trace[T_NEVAL] = n_eval
    return value, omega_sum


@njit(parallel=True, **JIT)
def render_rows(image, omega_rows, oob_eval, oob_hkl, det, beam, lat, sf, opt, row_start, row_end):
    """Render the active pixels of rows [row_start, row_end) of ``image``, rows in parallel.

    ``image`` is float32 (slow, fast).

    A pixel is active inside the ROI (inclusive bounds) where the mask is
    non-zero.  ``oob_eval``/``oob_hkl`` (per pixel) receive the first
    out-of-table interpolation of that pixel, -1 if none.
    """
    xmin, xmax, ymin, ymax = det.roi[0], det.roi[1], det.roi[2], det.roi[3]
    no_trace = np.zeros(0)
    for spixel in prange(row_start, row_end):
        row_omega = 0.0
        oob = np.empty(4)
        for fpixel in range(det.fpixels):
            if fpixel < xmin or fpixel > xmax or spixel < ymin or spixel > ymax:
                continue
            if det.has_mask and det.mask[spixel, fpixel] == 0:
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
    xmin, xmax, ymin, ymax = det.roi[0], det.roi[1], det.roi[2], det.roi[3]
    sub = det.pixel_size / det.oversample
    for spixel in range(det.spixels):
        for fpixel in range(det.fpixels):
            if fpixel < xmin or fpixel > xmax or spixel < ymin or spixel > ymax:
                continue
            if det.has_mask and det.mask[spixel, fpixel] == 0:
                continue
            if beam.dmin <= 0.0:
                return spixel * det.fpixels + fpixel
            for t in range(det.thicksteps):
                Odet = t * det.thickstep
                for subS in range(det.oversample):
                    for subF in range(det.oversample):
                        Fdet = sub * (fpixel * det.oversample + subF) + sub / 2.0
                        Sdet = sub * (spixel * det.oversample + subS) + sub / 2.0
                        p = np.empty(3)
                        for j in range(3):
                            p[j] = Fdet * det.fdet[j] + Sdet * det.sdet[j] + Odet * det.odet[j] + det.pix0[j]
                        if det.curved:
                            D = det.distance
                            v0, v1, v2 = _rotate_axis(D * det.beam[0], D * det.beam[1], D * det.beam[2], det.sdet, p[1] / D)
                            p[0], p[1], p[2] = _rotate_axis(v0, v1, v2, det.fdet, p[2] / D)
                        r = math.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
                        for s in range(beam.directions.shape[0]):
                            lam = beam.wavelengths[s]
                            q0 = (p[0] / r + beam.directions[s, 0]) / lam
                            q1 = (p[1] / r + beam.directions[s, 1]) / lam
                            q2 = (p[2] / r + beam.directions[s, 2]) / lam
                            stol = 0.5 * math.sqrt(q0 * q0 + q1 * q1 + q2 * q2)
                            if not (stol > 0.0 and beam.dmin > 0.5 / stol):
                                return spixel * det.fpixels + fpixel
    return -1
