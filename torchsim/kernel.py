"""The vectorized pixel kernel: the reference loop nest as batched tensor algebra.

Dimension order (fixed throughout the engine), outermost first::

    P  pixels of the chunk
    T  sensor layers (detector thickness steps)
    S  sub-pixels, slow-major (subS * oversample + subF)
    K  sources (divergence x dispersion, or the source file)
    F  phi steps
    M  mosaic domains

Physics vectors are trailing ``(..., 3)`` in the lab frame: positions in
metres, the scattering vector in 1/metre, direct cell vectors in metres (so
h = a . S is dimensionless).  Every tensor is made on the device and in the
dtype of the inputs.

Semantics follow :mod:`reference.kernel` exactly, including the per-pixel
cached factors and, under ``parity``, the C bugs: the running-sum
multiplication under ``-oversample_*`` becomes a reverse cumulative product,
the stale phi = 0 cell of the first phi loop is patched in for the run's
first pixel, and interpolation is cut at (cut_pixel, cut_eval) in raster
order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchsim.lattice import lattice_factor, lattice_factor_reduced
from torchsim.structure_factors import nearest_F, outside_interpolation_grid, tricubic_F


@dataclass
class Detector:
    pix0: torch.Tensor          # (3,) m
    fdet: torch.Tensor          # (3,) unit
    sdet: torch.Tensor
    odet: torch.Tensor
    beam: torch.Tensor          # (3,) unit, for the curved detector
    pixel_size: torch.Tensor    # m
    distance: torch.Tensor      # m
    close_distance: torch.Tensor
    thickstep: torch.Tensor     # m
    mu: torch.Tensor            # 1/m
    oversample: int
    thicksteps: int
    thick: float                # m (0: no sensor absorption)
    curved: bool
    point_pixel: bool
    fpixels: int
    spixels: int


@dataclass
class Beam:
    directions: torch.Tensor    # (K, 3) unit, sample -> source
    wavelengths: torch.Tensor   # (K,) m
    scales: torch.Tensor        # (K,) source weight / mean weight (ones in parity)
    polar_vector: torch.Tensor  # (3,)
    kahn: torch.Tensor          # Kahn polarization factor
    nopolar: bool
    dmin: float                 # m


@dataclass
class Crystal:
    abc_first: torch.Tensor     # (F, M, 3, 3) rows a, b, c in metres
    abc_later: torch.Tensor
    recip: torch.Tensor         # (3, 3) rows a*, b*, c* in 1/A
    N: torch.Tensor             # (3,) cells
    shape: int
    fudge: torch.Tensor
    N_int: tuple | None = None  # (Na, Nb, Nc) as ints when whole numbers (faster, exact)


@dataclass
class Factors:
    Fhkl: torch.Tensor
    hkl_min: tuple
    hkl_max: tuple
    has_table: bool
    default_F: float
    interpolate: bool


@dataclass
class Options:
    over_thick: bool
    over_polar: bool
    over_omega: bool
    parity: bool
    water_size: float
    I_bg: torch.Tensor
    scale: torch.Tensor         # r_e^2 * fluence / steps
    first_pixel: int
    cut_pixel: int
    cut_eval: int


def dot3(x, y):
    """x . y over the trailing 3-vector dimension (faster than a size-3 reduction)."""
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def norm3(x):
    return torch.sqrt(dot3(x, x))


def rotate_axis(v, axis, phi):
    """Rotate vectors ``v`` (..., 3) by angles ``phi`` (...) about unit ``axis`` (3,)."""
    s, c = torch.sin(phi)[..., None], torch.cos(phi)[..., None]
    d = dot3(v, axis)[..., None] * (1.0 - c)
    return axis * d + v * c + torch.cross(axis.expand_as(v), v, dim=-1) * s


def polarization_factor(kahn, incident, diffracted, axis):
    """Kahn factor for unit incident (..., 3) and diffracted (..., 3) vectors."""
    cos2t = dot3(incident, diffracted)
    cos2t_sqr = cos2t * cos2t
    sin2t_sqr = 1 - cos2t_sqr
    B = torch.cross(axis.expand_as(incident), incident, dim=-1)
    B = B / _safe_norm(B)[..., None]
    E = torch.cross(incident, B, dim=-1)
    E = E / _safe_norm(E)[..., None]
    y, x = dot3(diffracted, B), dot3(diffracted, E)
    # along the beam (2theta = 0) psi is undefined and irrelevant (sin^2 2theta = 0):
    # mask it so that atan2(0, 0) gives no NaN gradient
    undefined = (y == 0) & (x == 0)
    psi = -torch.atan2(torch.where(undefined, torch.zeros_like(y), y), torch.where(undefined, torch.ones_like(x), x))
    return 0.5 * (1.0 + cos2t_sqr - kahn * torch.cos(2 * psi) * sin2t_sqr)


def _safe_norm(v):
    n2 = dot3(v, v)
    safe = torch.where(n2 > 0, n2, torch.ones_like(n2))
    return torch.where(n2 > 0, torch.sqrt(safe), torch.ones_like(n2))


def subpixel_positions(pix, det: Detector):
    """Lab positions (P, T, S, 3) of every sub-pixel of every layer of pixels ``pix``."""
    dtype, device = det.pix0.dtype, det.pix0.device
    n = det.oversample
    sub = det.pixel_size / n
    spixel = torch.div(pix, det.fpixels, rounding_mode="floor")
    fpixel = pix - spixel * det.fpixels
    grid = torch.arange(n, device=device)
    subS = grid.repeat_interleave(n)             # slow-major sub-pixel order
    subF = grid.repeat(n)
    Fdet = sub * (fpixel[:, None] * n + subF[None, :]).to(dtype) + sub / 2.0
    Sdet = sub * (spixel[:, None] * n + subS[None, :]).to(dtype) + sub / 2.0
    Odet = torch.arange(det.thicksteps, device=device, dtype=dtype) * det.thickstep
    pos = (Fdet[:, None, :, None] * det.fdet + Sdet[:, None, :, None] * det.sdet
           + Odet[None, :, None, None] * det.odet + det.pix0)
    if det.curved:
        # every pixel at the same distance: detector coordinates become angles
        D = det.distance
        start = (D * det.beam).expand_as(pos)
        pos = rotate_axis(rotate_axis(start, det.sdet, pos[..., 1] / D), det.fdet, pos[..., 2] / D)
    return pos


def _first_true(mask):
    """Index of the first True along the last dimension, and whether any is True."""
    n = mask.shape[-1]
    idx = torch.arange(n, device=mask.device)
    first = torch.where(mask, idx, torch.full_like(idx, n)).min(-1).values
    return first, first < n


def _reverse_cumprod(g):
    return torch.flip(torch.cumprod(torch.flip(g, (-1,)), -1), (-1,))


def _reverse_cumsum(x):
    return torch.flip(torch.cumsum(torch.flip(x, (-1,)), -1), (-1,))


def render_pixels(pix, det: Detector, beam: Beam, cry: Crystal, sf: Factors, opt: Options, want_trace=False):
    """Photons in each pixel of ``pix`` (P,) (raster indices).

    Returns (values (P,), omega_sum (P,), oob_eval (P,) long, oob_hkl (P, 3),
    trace dict or None).  ``oob_eval`` is the evaluation index of the first
    interpolation neighbourhood that left the table (-1 if none).
    """
    dtype = opt.scale.dtype            # compute dtype of the per-evaluation work
    gdt = det.pix0.dtype               # geometry dtype (float64: positions and h need it)
    P = pix.shape[0]
    T, S = det.thicksteps, det.oversample * det.oversample
    K = beam.directions.shape[0]

    pos = subpixel_positions(pix, det)                                   # (P,T,S,3)
    airpath = norm3(pos)
    d = pos / airpath[..., None]

    pixel_sq = det.pixel_size * det.pixel_size
    if det.point_pixel:
        omega_all = 1.0 / airpath / airpath
    else:
        omega_all = pixel_sq / airpath / airpath * det.close_distance / airpath
    omega_all = omega_all.to(dtype)
    omega_cached = omega_all[:, 0, 0]                                    # first sub-pixel

    if det.thick == 0.0 and not (opt.parity and opt.over_thick):
        cap_all = torch.ones_like(airpath)      # (C zeroes it with -oversample_thick: parity only)
    else:
        parallax = dot3(d, det.odet)
        t = torch.arange(T, device=pix.device, dtype=gdt)[None, :, None]
        cap_all = (torch.exp(-t * det.thickstep * det.mu / parallax)
                   - torch.exp(-(t + 1) * det.thickstep * det.mu / parallax))
    cap_all = cap_all.to(dtype)
    cap_cached = cap_all[:, :, 0]                                        # (P,T) per layer

    incident = -beam.directions                                          # (K,3)
    scat = (d[:, :, :, None, :] - incident) / beam.wavelengths[:, None]  # (P,T,S,K,3)
    stol = 0.5 * norm3(scat)
    if beam.dmin > 0.0:
        keep = ~((stol > 0.0) & (beam.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol))))
    else:
        keep = torch.ones_like(stol, dtype=torch.bool)
    keep_flat = keep.reshape(P, T * S * K)
    first_kept, any_kept = _first_true(keep_flat)

    need_all_polar = opt.over_polar and (opt.parity or not beam.nopolar)
    pol_all = None
    if need_all_polar or (not beam.nopolar and beam.dmin > 0.0):
        pol_all = polarization_factor(beam.kahn, incident.expand_as(scat), d[:, :, :, None, :].expand_as(scat),
                                      beam.polar_vector).to(dtype)       # (P,T,S,K)
    elif not beam.nopolar:
        # without a resolution cut the cached factor is the first sub-pixel's, first source's
        first = polarization_factor(beam.kahn, incident[0], d[:, 0, 0], beam.polar_vector).to(dtype)
        pol_all = first.reshape(P, 1, 1, 1).expand(P, T, S, K)
    if beam.nopolar:
        polar_cached = torch.ones(P, dtype=dtype, device=pix.device)
        polar_first = polar_cached
    else:
        gathered = pol_all.reshape(P, -1).gather(1, first_kept.clamp(max=T * S * K - 1)[:, None])[:, 0]
        polar_cached = torch.where(any_kept, gathered, torch.zeros_like(gathered))
        polar_first = polar_cached

    # Miller indices for every (phi, mosaic) orientation: (P,T,S,K,F,M) each
    fast_low_precision = (dtype != gdt and not sf.interpolate and not want_trace
                          and not (opt.parity and opt.first_pixel >= 0))
    if fast_low_precision:
        (dh, nh), (dk, nk), (dl, nl) = _offsets_from_nodes(scat, cry.abc_later, dtype)
        F_latt = lattice_factor_reduced(dh, dk, dl, nh, nk, nl, cry.shape, cry.N, cry.recip, cry.fudge,
                                        cry.N_int, opt.parity)
        h = dh                                   # (only its shape is used below)
        if sf.has_table:
            h0, k0, l0 = (_node_value(n) for n in (nh, nk, nl))
    elif opt.parity and opt.first_pixel >= 0:
        hkl = torch.einsum("ptskc,fmjc->ptskfmj", scat, cry.abc_later)
        hkl = _patch_first_phi_loop(hkl, pix, scat, cry, opt, first_kept, any_kept)
        h, k, l = (x.contiguous() for x in hkl.unbind(-1))
    else:
        # one product per index keeps each of h, k, l contiguous in memory
        h, k, l = (torch.einsum("ptskc,fmc->ptskfm", scat, cry.abc_later[:, :, j]) for j in range(3))
    if fast_low_precision:
        pass
    elif dtype == gdt:
        h0, k0, l0 = torch.ceil(h - 0.5), torch.ceil(k - 0.5), torch.ceil(l - 0.5)   # C's rounding
        F_latt = lattice_factor(h, k, l, h0, k0, l0, cry.shape, cry.N, cry.recip, cry.fudge, opt.parity)
    else:
        # lower precision: work with the offsets from the nearest node, which
        # the geometry dtype gives exactly (sin of large arguments would not)
        # (round-half-even differs from C's ceil(h - 0.5) only at exact halves)
        h0, k0, l0 = torch.round(h), torch.round(k), torch.round(l)
        F_latt = lattice_factor_reduced((h - h0).to(dtype), (k - k0).to(dtype), (l - l0).to(dtype),
                                        h0, k0, l0, cry.shape, cry.N, cry.recip, cry.fudge, cry.N_int, opt.parity)
    valid = keep[..., None, None].expand_as(h)
    if opt.water_size == 0.0:
        valid = valid & (F_latt != 0.0)

    if sf.has_table:
        F_near = nearest_F(h0.long(), k0.long(), l0.long(), sf.Fhkl, sf.hkl_min, sf.hkl_max, sf.default_F, True)
    else:
        F_near = None                     # every reflection takes default_F
    oob_eval = torch.full((P,), -1, dtype=torch.long, device=pix.device)
    oob_hkl = torch.zeros(P, 3, dtype=gdt, device=pix.device)
    if sf.interpolate:
        flat_valid = valid.reshape(P, -1)
        eval_index = (torch.cumsum(flat_valid.long(), -1) - 1).reshape(valid.shape)
        pixb = pix.reshape((P,) + (1,) * (valid.dim() - 1))
        use_interp = (pixb < opt.cut_pixel) | ((pixb == opt.cut_pixel) & (eval_index < opt.cut_eval))
        oob = outside_interpolation_grid(h, k, l, sf.hkl_min, sf.hkl_max)
        oob_here = (valid & use_interp & oob).reshape(P, -1)
        first_oob, any_oob = _first_true(oob_here)
        at = first_oob.clamp(max=oob_here.shape[1] - 1)[:, None]
        oob_eval = torch.where(any_oob, eval_index.reshape(P, -1).gather(1, at)[:, 0], oob_eval)
        for j, x in enumerate((h, k, l)):
            oob_hkl[:, j] = torch.where(any_oob, x.reshape(P, -1).gather(1, at)[:, 0], oob_hkl[:, j])
        interp_ok = use_interp & ~oob
        F_interp = tricubic_F(h, k, l, sf.Fhkl, sf.hkl_min, interp_ok)
        F_cell = torch.where(interp_ok, F_interp, F_near)
    else:
        F_cell = F_near

    zero = torch.zeros((), dtype=dtype, device=pix.device)
    if F_cell is None:                    # constant F: one scalar factor
        term = torch.where(valid, (sf.default_F * sf.default_F) * (F_latt * F_latt), zero)
        F_cell = torch.full_like(F_latt, sf.default_F) if want_trace else None
    else:
        term = torch.where(valid, F_cell * F_cell * F_latt * F_latt, zero)   # (P,T,S,K,F,M)
    over_any = opt.over_thick or opt.over_polar or opt.over_omega
    ext = (...,) + (None,) * 2                                            # broadcast over F, M

    if opt.parity:
        if over_any:
            g = torch.ones_like(term)
            if opt.over_thick:
                g = g * cap_all[:, :, :, None, None, None]
            if opt.over_polar:
                g = g * pol_all[ext]
            if opt.over_omega:
                g = g * omega_all[:, :, :, None, None, None]
            g = torch.where(valid, g, torch.ones_like(g)).reshape(P, -1)
            # C multiplies the running sum: every term by all factors after it.
            # The products are accumulated as logarithms (and signs) so that
            # no partial product over- or underflows where C's sums do not.
            rev_log = _reverse_cumsum(torch.log(g.abs()))
            rev_sign = _reverse_cumprod(torch.sign(g))
            flat_term = term.reshape(P, -1)
            weighted = torch.where(flat_term == 0, torch.zeros_like(flat_term),
                                   flat_term * rev_sign * torch.exp(rev_log))
            I = weighted.sum(-1) + opt.I_bg * rev_sign[:, 0] * torch.exp(rev_log[:, 0])
        else:
            I = opt.I_bg + term.reshape(P, -1).sum(-1)
        value = opt.scale * I
        if not opt.over_thick:
            value = value * cap_cached[:, -1]               # the last layer's fraction
    else:
        term = term * beam.scales[:, None, None]
        if opt.over_thick:
            term = term * cap_all[:, :, :, None, None, None]
        if opt.over_polar and not beam.nopolar:
            term = term * pol_all[ext]
        if opt.over_omega:
            term = term * omega_all[:, :, :, None, None, None]
        per_layer = term.reshape(P, T, -1).sum(-1)
        I = per_layer.sum(-1) if opt.over_thick else (per_layer * cap_cached).sum(-1)
        bragg = I
        if not opt.over_polar:
            bragg = bragg * polar_cached
        if not opt.over_omega:
            bragg = bragg * omega_cached
        # the background takes the pixel's cached factors, whatever the flags
        value = opt.scale * (bragg + opt.I_bg * cap_cached.sum(-1) * polar_first * omega_cached)
    if opt.parity and not opt.over_polar:
        value = value * polar_cached
    if opt.parity and not opt.over_omega:
        value = value * omega_cached
    omega_sum = (omega_all if opt.over_omega else omega_cached[:, None, None].expand(P, T, S)).sum((1, 2))

    trace = None
    if want_trace:
        trace = _trace(pos, d, airpath, scat, stol, keep_flat, h, k, l, h0, k0, l0, F_latt, F_cell, valid,
                       omega_all if opt.over_omega else omega_cached, polar_cached,
                       cap_all[:, -1, -1] if opt.over_thick else cap_cached[:, -1], I, value, beam, cry)
    return value, omega_sum, oob_eval, oob_hkl, trace


def _offsets_from_nodes(scat, abc, dtype):
    """Offsets from the nearest reciprocal-lattice node, accurate in a low dtype.

    The first sub-pixel of the first layer anchors each pixel: its Miller
    indices are computed in the geometry dtype and split into the nearest
    node and a small offset; every sub-pixel adds its own small change of h
    computed in ``dtype`` (a difference of nearby scattering vectors loses
    nothing there).  Returns ((dh, node_h), (dk, node_k), (dl, node_l)) with
    |d| <= 1/2 in ``dtype`` and each node a pair (anchor node, whole offset).
    """
    anchor = scat[:, :1, :1]                                   # (P,1,1,K,3)
    near = (scat - anchor).to(dtype)                           # (P,T,S,K,3), small
    out = []
    for j in range(3):
        axis = abc[:, :, j]                                    # (F,M,3)
        coarse = torch.einsum("ptskc,fmc->ptskfm", anchor, axis)
        node = torch.round(coarse)
        delta = (coarse - node).to(dtype) + torch.einsum("ptskc,fmc->ptskfm", near, axis.to(dtype))
        step = torch.round(delta)
        out.append((delta - step, (node, step)))
    return out


def _node_value(node):
    """The whole Miller index of a (anchor node, whole offset) pair, as a geometry-dtype tensor."""
    coarse, step = node
    return coarse + step.to(coarse.dtype)


def _patch_first_phi_loop(hkl, pix, scat, cry, opt, first_kept, any_kept):
    """Parity: the run's first phi loop reads the unrotated-start table."""
    hit = (pix == opt.first_pixel).nonzero()
    if hit.numel() == 0:
        return hkl
    p = int(hit[0, 0])
    if not bool(any_kept[p]):
        return hkl
    P, T, S, K = scat.shape[:4]
    idx = int(first_kept[p])
    t, rest = divmod(idx, S * K)
    s, kk = divmod(rest, K)
    fresh = torch.einsum("c,fmjc->fmj", scat[p, t, s, kk], cry.abc_first)
    hkl = hkl.clone()
    hkl[p, t, s, kk] = fresh
    return hkl


def _trace(pos, d, airpath, scat, stol, keep_flat, h, k, l, h0, k0, l0, F_latt, F_cell, valid,
           omega, polar, capfrac, I, value, beam, cry):
    """Intermediates of the last evaluation of pixel 0 (names as reference.kernel)."""
    out = {}
    last_pos = pos[0, -1, -1]
    for axis, j in zip("xyz", range(3)):
        out[f"pixel_pos_{axis}"] = last_pos[j]
        out[f"diffracted_{axis}"] = d[0, -1, -1, j]
    kept = keep_flat[0].nonzero()
    K = scat.shape[3]
    if kept.numel():
        i = int(kept[-1, 0])
        t, rest = divmod(i, scat.shape[2] * K)
        s, kk = divmod(rest, K)
        for axis, j in zip("xyz", range(3)):
            out[f"scattering_{axis}"] = scat[0, t, s, kk, j]
        out["stol"] = stol[0, t, s, kk]
        out["lambda"] = beam.wavelengths[kk]
    flat_valid = valid[0].reshape(-1).nonzero()
    if flat_valid.numel():
        e = int(flat_valid[-1, 0])
        for name, x in (("h", h), ("k", k), ("l", l), ("h0", h0), ("k0", k0), ("l0", l0),
                        ("F_latt", F_latt), ("F_cell", F_cell)):
            out[name] = x[0].reshape(-1)[e]
        F, M = h.shape[4], h.shape[5]
        fm = e % (F * M)
        abc = cry.abc_later[fm // M, fm % M]
        for v, name in enumerate("abc"):
            for j, axis in enumerate("xyz"):
                out[f"{name}_{axis}"] = abc[v, j]
    out["omega"] = omega[0].reshape(-1)[-1]
    out["polar"] = polar[0]
    out["capture_fraction"] = capfrac[0]
    out["I_sum"] = I[0]
    out["pixel_value"] = value[0]
    out["airpath"] = airpath[0, -1, -1]
    out["evaluations"] = valid[0].sum()
    return {name: float(v) for name, v in out.items()}
