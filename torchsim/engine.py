"""Render a :class:`reference.scene.Scene` with the torch kernel.

The scene (shared front end) is turned into tensors on the requested device
and dtype, the active pixels are rendered in chunks sized to a memory
budget, and the result has the same form as the reference engine's.
"""

from __future__ import annotations


import numpy as np
import torch

from reference.errors import InputError
from reference.scene import R_E_SQR, SHAPE_CODE, RenderResult, first_out_of_table, rendered_mask
from torchsim import kernel as K
from torchsim.crystal import orientation_tables

# bytes of working memory per (pixel, layer, sub-pixel, source, phi, domain)
BYTES_PER_EVAL = 400
BYTES_PER_EVAL_INTERP = 2400


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("-device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def scene_tensors(sc, device, dtype):
    """The kernel's inputs for ``sc`` as tensors on ``device`` in ``dtype``."""
    cfg = sc.cfg
    # geometry (positions, directions, cell vectors) stays float64 whatever
    # the compute dtype: Miller indices of ~100 need it (see torchsim.kernel)
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64), device=device)  # noqa: E731
    c = lambda x: t(x).to(dtype)  # noqa: E731
    det = K.Detector(t(sc.pix0), t(sc.fdet), t(sc.sdet), t(sc.odet), t(sc.beam), t(sc.pixel_size),
                     t(sc.distance), t(sc.close_distance), t(sc.thickstep), t(sc.mu), int(sc.oversample),
                     int(sc.thicksteps), float(sc.thick), bool(cfg.curved_detector), bool(cfg.point_pixel),
                     int(sc.fpixels), int(sc.spixels))
    weights = sc.source_weight
    if sc.parity or np.all(weights == weights[0]):
        scales = np.ones_like(weights)
    else:
        scales = weights / weights.mean()
    beam = K.Beam(t(sc.sources), t(sc.source_lambda), c(scales), t(sc.polar_vector), t(cfg.polarization),
                  bool(cfg.nopolar), float(cfg.dmin))
    cell = t([sc.a0, sc.b0, sc.c0])
    phis = [sc.phi0 + sc.phistep * i for i in range(sc.phisteps)]
    umats = t(sc.mosaic_umats).reshape(-1, 3, 3)
    first, later = orientation_tables(cell, t(sc.spindle), phis, umats, sc.mosaic_spread, sc.parity)
    cry = K.Crystal(first, later, c([sc.a_star, sc.b_star, sc.c_star]), c([sc.Na, sc.Nb, sc.Nc]),
                    SHAPE_CODE[cfg.xtal_shape], c(cfg.fudge), tuple(int(n) for n in (sc.Na, sc.Nb, sc.Nc)))
    sf = K.Factors(c(sc.Fhkl), tuple(int(x) for x in sc.hkl_min), tuple(int(x) for x in sc.hkl_max),
                   sc.hkls != 0, float(cfg.default_F), bool(sc.interpolate))
    opt = K.Options(bool(cfg.oversample_thick), bool(cfg.oversample_polar), bool(cfg.oversample_omega),
                    bool(sc.parity), float(cfg.water_size), c(sc.I_bg), c(R_E_SQR * sc.fluence / sc.steps),
                    -1, sc.fpixels * sc.spixels, 0)
    return det, beam, cry, sf, opt


def active_pixels(sc) -> np.ndarray:
    """Raster indices of the pixels the C loop renders (ROI, inclusive; mask non-zero)."""
    return np.flatnonzero(rendered_mask(sc))


# On a CPU, chunks beyond a few hundred MB only cost page faults and cache
# misses (measured on workload (a), float32, one thread: 4 GB chunks 3.1 s,
# 1 GB 2.0 s, 256 MB 2.1 s, 64 MB 1.9 s), so the budget is a ceiling there.
CPU_CHUNK_BYTES = 256e6


def chunk_size(sc, det, beam, cry, sf, budget_bytes, cap_cpu=True) -> int:
    evals = det.thicksteps * det.oversample ** 2 * beam.directions.shape[0] * cry.abc_later.shape[0] \
        * cry.abc_later.shape[1]
    per_eval = BYTES_PER_EVAL_INTERP if sf.interpolate else BYTES_PER_EVAL
    if cap_cpu and det.pix0.device.type == "cpu":
        budget_bytes = min(budget_bytes, CPU_CHUNK_BYTES)
    return max(1, int(budget_bytes // (evals * per_eval)))


def _first_evaluated(sc, pixels, det, beam):
    """First active pixel whose phi loop runs (needs the dmin cut)."""
    if beam.dmin <= 0.0:
        return int(pixels[0]) if pixels.size else -1
    step = 4096
    for start in range(0, pixels.size, step):
        pix = torch.as_tensor(pixels[start:start + step], device=det.pix0.device)
        pos = K.subpixel_positions(pix, det)
        d = pos / torch.linalg.vector_norm(pos, dim=-1, keepdim=True)
        scat = (d[:, :, :, None, :] + beam.directions) / beam.wavelengths[:, None]
        stol = 0.5 * torch.linalg.vector_norm(scat, dim=-1)
        ok = ~((stol > 0) & (beam.dmin > 0.5 / stol))
        hit = ok.reshape(pix.shape[0], -1).any(-1).nonzero()
        if hit.numel():
            return int(pix[hit[0, 0]])
    return -1


def _render_pass(sc, pixels, tensors, opt, chunk, progress, out_dtype=torch.float32):
    det, beam, cry, sf = tensors
    values = torch.zeros(sc.fpixels * sc.spixels, dtype=out_dtype)
    omega = 0.0
    oob_eval = np.full(sc.fpixels * sc.spixels, -1, dtype=np.int64)
    oob_hkl = np.zeros((sc.fpixels * sc.spixels, 3))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=pixels.size, unit="px", desc="rendering", leave=False)
    with torch.no_grad():
        for start in range(0, pixels.size, chunk):
            idx = pixels[start:start + chunk]
            pix = torch.as_tensor(idx, device=det.pix0.device)
            v, om, oe, oh, _ = K.render_pixels(pix, det, beam, cry, sf, opt)
            values[torch.as_tensor(idx)] = v.to("cpu", out_dtype)
            omega += float(om.sum())
            if sf.interpolate:
                oob_eval[idx] = oe.cpu().numpy()
                oob_hkl[idx] = oh.cpu().double().numpy()
            if bar is not None:
                bar.update(idx.size)
    if bar is not None:
        bar.close()
    return values.numpy().reshape(sc.spixels, sc.fpixels), omega, oob_eval, oob_hkl


def render(sc, progress: bool = True, keep_precision: bool = False) -> RenderResult:
    """Render the whole detector; same contract as :func:`reference.render.render`.

    The image is float32 as the C program stores it, or the engine's own
    dtype with ``keep_precision``.
    """
    cfg = sc.cfg
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    det, beam, cry, sf, opt = scene_tensors(sc, device, dtype)
    pixels = active_pixels(sc)
    if sc.parity:
        opt.first_pixel = _first_evaluated(sc, pixels, det, beam)
    chunk = chunk_size(sc, det, beam, cry, sf, cfg.memory_gb * 1e9)
    out_dtype = dtype if keep_precision else torch.float32
    image, omega, oob_eval, oob_hkl = _render_pass(sc, pixels, (det, beam, cry, sf), opt, chunk, progress, out_dtype)
    found = first_out_of_table(oob_eval, oob_hkl) if sf.interpolate else None
    warning = cut = None
    if found is not None:
        first, evaluation, warning = found
        if sc.parity:
            # C turns interpolation off for good at this evaluation: render again
            opt.cut_pixel, opt.cut_eval = cut = (first, evaluation)
            image, omega, _, _ = _render_pass(sc, pixels, (det, beam, cry, sf), opt, chunk, progress, out_dtype)
    return RenderResult(image, omega, warning, cut)


def trace_pixel(sc, spixel: int, fpixel: int) -> dict:
    """Intermediates of one pixel's last evaluation (names as the reference trace)."""
    cfg = sc.cfg
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    det, beam, cry, sf, opt = scene_tensors(sc, device, dtype)
    if sc.parity:
        opt.first_pixel = _first_evaluated(sc, active_pixels(sc), det, beam)
    pix = torch.tensor([spixel * sc.fpixels + fpixel], device=device)
    with torch.no_grad():
        *_, trace = K.render_pixels(pix, det, beam, cry, sf, opt, want_trace=True)
    return trace
