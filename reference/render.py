"""Drive the Numba kernel over a :class:`~reference.scene.Scene`.

Packs the scene into the kernel's arrays, precomputes the crystal
orientation of every (phi step, mosaic domain), renders the detector in
row blocks (for the progress bar), and, under ``-c_parity``, reproduces the
two C behaviours that depend on the order in which pixels are visited:

* the phi = 0 step reuses the rotated cell left by the previous phi loop, so
  only the very first phi loop of the run sees the unrotated cell;
* interpolation is switched off for the rest of the run (raster order) at
  the first evaluation whose neighbourhood leaves the HKL table.
"""

from __future__ import annotations

import time

import numpy as np

from reference import kernel as K
from reference import vectors as V
from reference.scene import R_E_SQR, SHAPE_CODE, RenderResult, Scene, first_out_of_table, rendered_mask


def orientation_tables(sc: Scene, parity: bool):
    """Cell vectors (metres) for every phi step and mosaic domain.

    Returns (first, later), each (phisteps, domains, 3, 3): ``first`` for the
    run's first phi loop, ``later`` for every other.  They differ only in
    parity mode when a phi step is exactly zero: C leaves the cell as the
    previous rotation left it, spec mode uses the unrotated cell.
    """
    cell0 = (sc.a0, sc.b0, sc.c0)
    phis = [sc.phi0 + sc.phistep * tic for tic in range(sc.phisteps)]
    umats = sc.mosaic_umats

    def one_loop(state):
        table = np.empty((len(phis), len(umats), 3, 3))
        for p, phi in enumerate(phis):
            if phi != 0.0:
                state = tuple(V.rotate_axis(v, sc.spindle, phi) for v in cell0)
            elif not parity:
                state = cell0
            for m, u in enumerate(umats):
                if sc.mosaic_spread > 0.0:
                    table[p, m] = [V.rotate_umat(v, u) for v in state]
                else:
                    table[p, m] = state
        return table, state

    first, end_state = one_loop(cell0)
    later, _ = one_loop(end_state)
    return first, later


def _first_evaluated_pixel(sc: Scene, det, beam) -> int:
    """First pixel (raster order) whose phi loop runs; -1 if none."""
    if beam.dmin > 0.0:
        return int(K.first_evaluated_pixel(det, beam))
    hits = np.flatnonzero(rendered_mask(sc))
    return int(hits[0]) if hits.size else -1


# Whole cell counts up to this many use the Chebyshev form of the interference function in spec
# mode; above it the recurrence's N - 2 dependent multiply-adds cost more than two sines.
CHEBYSHEV_MAX_N = 32


def chebyshev_degrees(N, parity: bool) -> np.ndarray:
    """Per axis, the Chebyshev degree N - 1 of the lattice factor, or -1 for C's sines.

    Spec mode evaluates sin(N x)/sin(x) of a whole N up to CHEBYSHEV_MAX_N as
    U_{N-1}(cos x) (:func:`reference.kernel.chebyshev_u`); -c_parity keeps C's
    quotient of sines, whose rounding it reproduces.
    """
    return np.array([int(n) - 1 if not parity and n == int(n) and 1 <= n <= CHEBYSHEV_MAX_N else -1
                     for n in N], dtype=np.int64)


def kernel_inputs(sc: Scene):
    """The kernel's named tuples for this scene."""
    cfg = sc.cfg
    parity = sc.parity
    f64 = lambda v: np.ascontiguousarray(v, dtype=np.float64)  # noqa: E731
    has_mask = cfg.mask_image is not None
    mask = np.ascontiguousarray(cfg.mask_image, dtype=np.uint16) if has_mask else np.ones((1, 1), np.uint16)
    det = K.Detector(f64(sc.pix0), f64(sc.fdet), f64(sc.sdet), f64(sc.odet), f64(sc.beam),
                     float(sc.pixel_size), int(sc.oversample), float(sc.distance), float(sc.close_distance),
                     bool(cfg.curved_detector), bool(cfg.point_pixel),
                     int(sc.thicksteps), float(sc.thickstep), float(sc.mu), float(sc.thick),
                     int(sc.fpixels), int(sc.spixels), np.asarray(sc.roi, dtype=np.int64), mask, has_mask)
    weights = sc.source_weight
    if parity or np.all(weights == weights[0]):
        scales = np.ones_like(weights)            # C ignores source weights
    else:
        scales = weights / weights.mean()
    beam = K.Beam(f64(sc.sources), f64(sc.source_lambda), f64(scales), f64(sc.polar_vector),
                  float(cfg.polarization), bool(cfg.nopolar), float(cfg.dmin))
    first, later = orientation_tables(sc, parity)
    recip = f64([sc.a_star, sc.b_star, sc.c_star])
    lat = K.Lattice(first, later, recip, float(sc.Na), float(sc.Nb), float(sc.Nc),
                    SHAPE_CODE[cfg.xtal_shape], float(cfg.fudge), bool(parity),
                    chebyshev_degrees((sc.Na, sc.Nb, sc.Nc), parity))
    sf = K.Factors(f64(sc.Fhkl), np.asarray(sc.hkl_min, dtype=np.int64), np.asarray(sc.hkl_max, dtype=np.int64),
                   int(sc.hkls), float(cfg.default_F), int(sc.interpolate))
    npix = sc.fpixels * sc.spixels
    first_pixel = _first_evaluated_pixel(sc, det, beam) if parity else -1
    opt = K.Options(bool(cfg.oversample_thick), bool(cfg.oversample_polar), bool(cfg.oversample_omega),
                    bool(parity), float(cfg.water_size), float(sc.I_bg),
                    R_E_SQR * sc.fluence / sc.steps, first_pixel, npix, 0)
    return det, beam, lat, sf, opt


# Rows are rendered in blocks that each take about this long (seconds): short enough that a
# signal (Python runs its handler only between two kernel calls) stops the run promptly, long
# enough that the pool's start-up per call is lost in the noise.
BLOCK_SECONDS = 0.25


def _row_blocks(rows: np.ndarray, seconds_per_row):
    """Yield consecutive slices of ``rows``, each sized to take about BLOCK_SECONDS.

    ``seconds_per_row()`` gives the rate measured so far, None while too
    little time has passed to measure it; until then blocks double in size,
    from a few rows.
    """
    start = 0
    while start < rows.size:
        rate = seconds_per_row()
        size = max(4, start) if rate is None else int(BLOCK_SECONDS / max(rate, 1e-9))
        size = min(max(size, 1), rows.size - start)
        yield rows[start:start + size]
        start += size


def _render_pass(det, beam, lat, sf, opt, npix, progress, image_dtype=np.float32):
    image = np.zeros((det.spixels, det.fpixels), dtype=image_dtype)
    omega_rows = np.zeros(det.spixels)
    track = sf.interpolate != 0
    oob_eval = np.full(npix if track else 1, -1, dtype=np.int64)
    oob_hkl = np.zeros((npix if track else 1, 3))
    # only the ROI's rows cost anything, so they alone make the blocks and the bar (its ETA is right)
    roi_rows = np.arange(max(int(det.roi[2]), 0), min(int(det.roi[3]), det.spixels - 1) + 1)
    bar = _progress_bar(progress, roi_rows.size)
    spent, done = 0.0, 0
    rate = lambda: spent / done if done and spent > 0.01 else None  # noqa: E731
    try:
        for rows in _row_blocks(roi_rows, rate):
            began = time.perf_counter()
            K.render_rows(image, omega_rows, oob_eval, oob_hkl, det, beam, lat, sf, opt, rows[0], rows[-1] + 1)
            spent += time.perf_counter() - began
            done += rows.size
            if bar is not None:
                bar.update(rows.size)
    finally:
        if bar is not None:
            bar.close()
    return image, omega_rows, oob_eval, oob_hkl


def _progress_bar(enabled, total):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="row", desc="rendering", leave=False)


def render(sc: Scene, progress: bool = True, image_dtype=np.float32) -> RenderResult:
    """Render the whole detector with the reference kernel.

    The C program stores float32 pixels; ``image_dtype=np.float64`` keeps the
    kernel's double-precision values (for cross-checking engines).
    """
    det, beam, lat, sf, opt = kernel_inputs(sc)
    npix = sc.fpixels * sc.spixels
    image, omega_rows, oob_eval, oob_hkl = _render_pass(det, beam, lat, sf, opt, npix, progress, image_dtype)
    found = first_out_of_table(oob_eval, oob_hkl) if sf.interpolate else None
    warning = cut = None
    if found is not None:
        first, evaluation, warning = found
        if sc.parity:
            # C turns interpolation off for good at this evaluation: render again
            cut = (first, evaluation)
            opt = opt._replace(cut_pixel=first, cut_eval=evaluation)
            image, omega_rows, _, _ = _render_pass(det, beam, lat, sf, opt, npix, progress, image_dtype)
    return RenderResult(image, float(omega_rows.sum()), warning, cut)


def trace_pixel(sc: Scene, spixel: int, fpixel: int) -> dict:
    """Every intermediate of one pixel's last evaluation, by name."""
    det, beam, lat, sf, opt = kernel_inputs(sc)
    trace = np.zeros(K.TRACE_SIZE)
    oob = np.full(4, -1.0)
    K.render_pixel(spixel, fpixel, det, beam, lat, sf, opt, trace, oob)
    return dict(zip(K.TRACE_FIELDS, trace.tolist()))
