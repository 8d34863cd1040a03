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

The order above is the tensors' logical shape; their memory can run in
another order, chosen for the CPU: the sub-pixel vectors component-major
((3, P, T, S) seen as (P, T, S, 3)) and the per-evaluation tensors
orientation-major ((F, M, P, T, S, K), see :func:`project`), so that
element-wise operations run over long contiguous rows.  Nothing depends on
the layout but the speed.

Semantics follow :mod:`reference.kernel` exactly, including the per-pixel
cached factors and, under ``parity``, the C bugs: the running-sum
multiplication under ``-oversample_*`` becomes a reverse cumulative product,
the stale phi = 0 cell of the first phi loop is patched in for the run's
first pixel, and interpolation is cut at (cut_pixel, cut_eval) in raster
order.

:func:`render_pixels` runs the stages, each named for what it computes (the
reference engine has the same stages under the same names):

=======================  ==================================================
:func:`pixel_positions`  sub-pixel positions of every sensor layer
:func:`scattering_vectors`  diffracted and incident rays, S, stol, dmin cut
:func:`miller_indices`   h, k, l per orientation, nearest nodes, offsets
``lattice_factor``       F_latt (:mod:`torchsim.lattice`)
``structure_factor``     F_cell (:mod:`torchsim.structure_factors`)
:func:`solid_angle`      omega of each sub-pixel
:func:`polarization_factor`  Kahn polarization factor
:func:`capture_fraction`  sensor absorption per layer
:func:`accumulate`       the sum over layers, sub-pixels, sources, phi and
                         mosaic with C's per-pixel cached factors
=======================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torchsim.lattice import lattice_factor
from torchsim.structure_factors import structure_factor


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
    # (Na, Nb, Nc) as ints when whole numbers: C's exact form (and the faster
    # path in low precision).  None when N is a free, real parameter: the
    # lattice factor then takes the real-N form, smooth in N (torchsim.lattice).
    N_int: tuple | None = None


@dataclass
class Factors:
    Fhkl: torch.Tensor
    hkl_min: tuple
    hkl_max: tuple
    has_table: bool
    default_F: float
    interpolate: bool
    finite: bool = False        # every table entry and default_F finite (the sums may skip the F_latt = 0 mask)


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


# ---------------------------------------------------------------------------
# the stages, in the order a pixel goes through them
# ---------------------------------------------------------------------------

def render_pixels(pix, det: Detector, beam: Beam, cry: Crystal, sf: Factors, opt: Options, want_trace=False):
    """Photons in each pixel of ``pix`` (P,) (raster indices).

    Returns (values (P,), omega_sum (P,), oob_eval (P,) long, oob_hkl (P, 3),
    trace dict or None).  ``oob_eval`` is the evaluation index of the first
    interpolation neighbourhood that left the table (-1 if none).
    """
    dtype = opt.scale.dtype            # compute dtype of the per-evaluation work
    P = pix.shape[0]

    pos = pixel_positions(pix, det)                                      # (P,T,S,3)
    rays = scattering_vectors(pos, beam)                                 # (P,T,S,K,...)
    if rays.all_kept:
        first_kept = torch.zeros(P, dtype=torch.long, device=pix.device)
        any_kept = torch.ones(P, dtype=torch.bool, device=pix.device)
    else:
        first_kept, any_kept = _first_true(rays.keep.reshape(P, -1))

    # low precision without interpolation or tracing: offsets from a float64 anchor
    anchored = (dtype != det.pix0.dtype and not sf.interpolate and not want_trace
                and not (opt.parity and opt.first_pixel >= 0))
    miller = miller_indices(pix, rays.S, cry, opt, dtype, anchored, first_kept, any_kept)
    F_latt = lattice_factor(miller, cry, opt.parity, signed=want_trace)  # (P,T,S,K,F,M); the image needs F_latt^2
    valid = None
    if _needs_mask(beam, sf, opt, want_trace):
        valid = rays.keep[..., None, None].expand(miller.shape)
        if opt.water_size == 0.0:
            valid = valid & (F_latt != 0.0)   # C skips the evaluation (and the table look-up)

    use_interp, eval_index = _interpolation_cut(pix, valid, opt) if sf.interpolate else (None, None)
    F_cell, off_grid = structure_factor(miller.hkl, miller.nodes if sf.has_table else None, sf, use_interp)
    oob_eval, oob_hkl = _first_out_of_table(pix, valid, use_interp, off_grid, eval_index, miller.hkl, det.pix0.dtype)

    factors = pixel_factors(pos, rays, det, beam, opt, dtype, first_kept, any_kept)
    term = intensity_terms(F_cell, F_latt, valid, sf.default_F)
    value, I = accumulate(term, valid, factors, beam, opt)
    T, S = det.thicksteps, det.oversample * det.oversample
    omega_sum = (factors.omega if opt.over_omega else factors.omega_cached[:, None, None].expand(P, T, S)).sum((1, 2))

    trace = None
    if want_trace:
        if F_cell is None:
            F_cell = torch.full_like(F_latt, sf.default_F)
        trace = _trace(pos, rays, miller, F_latt, F_cell, valid,
                       factors.omega if opt.over_omega else factors.omega_cached, factors.polar_cached,
                       factors.capture[:, -1, -1] if opt.over_thick else factors.capture_cached[:, -1],
                       I, value, beam, cry)
    return value, omega_sum, oob_eval, oob_hkl, trace


def _needs_mask(beam: Beam, sf: Factors, opt: Options, want_trace: bool) -> bool:
    """Whether any evaluation is skipped in a way the sums can see.

    C skips an evaluation outside the resolution cut, and one whose F_latt
    is 0.  Without a cut the second changes nothing when every structure
    factor is finite (its term is 0 either way), so spec mode then sums the
    terms unmasked; parity, interpolation and the trace count evaluations.
    """
    return opt.parity or sf.interpolate or want_trace or beam.dmin > 0.0 or not sf.finite


def pixel_positions(pix, det: Detector):
    """Stage: lab positions (P, T, S, 3) in metres of every sub-pixel of every sensor layer.

    Sub-pixel centres step by pixel_size / oversample along fdet and sdet
    from pix0 (slow-major order); layer t sits t * thickstep behind the
    front face along odet.  The curved detector maps the flat detector
    coordinates onto a sphere of radius ``distance``.
    """
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
    # component-major memory, (3, P, T, S) seen as (P, T, S, 3): every later operation on
    # the vectors then runs over long contiguous rows (the trailing 3 is a CPU's slowest stride)
    pos = torch.stack([Fdet[:, None, :] * det.fdet[c] + Sdet[:, None, :] * det.sdet[c]
                       + Odet[None, :, None] * det.odet[c] + det.pix0[c] for c in range(3)]).permute(1, 2, 3, 0)
    if det.curved:
        # every pixel at the same distance: detector coordinates become angles
        D = det.distance
        start = (D * det.beam).expand_as(pos)
        pos = rotate_axis(rotate_axis(start, det.sdet, pos[..., 1] / D), det.fdet, pos[..., 2] / D)
    return pos


subpixel_positions = pixel_positions          # the name the engine used first


@dataclass
class Scattering:
    """What the geometry of one evaluation gives, before the crystal enters."""
    airpath: torch.Tensor       # (P, T, S) m, sample to sub-pixel
    diffracted: torch.Tensor    # (P, T, S, 3) unit
    incident: torch.Tensor      # (K, 3) unit, direction of travel
    S: torch.Tensor             # (P, T, S, K, 3) scattering vector, 1/m
    keep: torch.Tensor          # (P, T, S, K) bool: passes the -dmin resolution cut
    all_kept: bool              # no resolution cut: keep is all True

    @property
    def stol(self) -> torch.Tensor:
        """(P, T, S, K) sin(theta)/lambda, 1/m (formed when asked: only the cut and the trace need it)."""
        return 0.5 * norm3(self.S)


def scattering_vectors(pos, beam: Beam) -> Scattering:
    """Stage: diffracted and incident directions, S = (d - i) / lambda, and the dmin cut on stol."""
    airpath = norm3(pos)
    d = pos / airpath[..., None]
    incident = -beam.directions                                          # (K,3)
    S = (d[:, :, :, None, :] - incident) / beam.wavelengths[:, None]     # (P,T,S,K,3)
    rays = Scattering(airpath, d, incident, S, None, beam.dmin <= 0.0)
    if rays.all_kept:
        rays.keep = torch.ones(S.shape[:-1], dtype=torch.bool, device=S.device)
    else:
        stol = rays.stol
        rays.keep = ~((stol > 0.0) & (beam.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol))))
    return rays


@dataclass
class MillerIndices:
    """Fractional Miller indices of every evaluation and their nearest nodes, (P, T, S, K, F, M) each.

    ``hkl``: (h, k, l) in the geometry dtype, or None where only offsets were
    formed (the anchored low-precision path).  ``nodes``: the nearest node
    (h0, k0, l0), geometry-dtype tensors, or on the anchored path (anchor
    node, whole step) pairs whose sum is meant.  ``offsets``: (h - h0, ...)
    in the compute dtype, or None when it is the geometry dtype (then formed
    on demand by :meth:`node_offsets`).
    """
    hkl: tuple | None
    nodes: tuple
    offsets: tuple | None

    @property
    def shape(self):
        return (self.offsets or self.hkl)[0].shape

    def node_values(self):
        """(h0, k0, l0) as whole-valued geometry-dtype tensors."""
        return tuple(_node_value(n) if isinstance(n, tuple) else n for n in self.nodes)

    def node_offsets(self):
        """(h - h0, k - k0, l - l0), |offset| <= 1/2."""
        if self.offsets is not None:
            return self.offsets
        return tuple(x - x0 for x, x0 in zip(self.hkl, self.nodes))


def miller_indices(pix, S, cry: Crystal, opt: Options, dtype, anchored: bool, first_kept, any_kept) -> MillerIndices:
    """Stage: h = a . S, k = b . S, l = c . S for every (phi, mosaic) orientation, and the nearest nodes.

    In the geometry dtype the nodes are C's ceil(h - 0.5).  In a lower
    compute dtype the indices stay in the geometry dtype and the lattice
    factor gets their offsets from the nearest node (round-half-even differs
    from C's rounding only at exact halves), because sin of large arguments
    would lose the spot's shape; ``anchored`` forms the offsets from one
    float64 anchor per pixel without ever forming h in float64 for every
    sub-pixel.  Under parity the run's first phi loop reads the unrotated
    cell (quirk a).
    """
    if anchored:
        (dh, nh), (dk, nk), (dl, nl) = _offsets_from_nodes(S, cry.abc_later, dtype)
        return MillerIndices(None, (nh, nk, nl), (dh, dk, dl))
    if opt.parity and opt.first_pixel >= 0:
        hkl = torch.einsum("ptskc,fmjc->ptskfmj", S, cry.abc_later)
        hkl = _patch_first_phi_loop(hkl, pix, S, cry, opt, first_kept, any_kept)
        h, k, l = (x.contiguous() for x in hkl.unbind(-1))
    else:
        # one product per index keeps each of h, k, l contiguous in memory
        h, k, l = (project(S, cry.abc_later[:, :, j]) for j in range(3))
    if dtype == h.dtype:
        h0, k0, l0 = torch.ceil(h - 0.5), torch.ceil(k - 0.5), torch.ceil(l - 0.5)   # C's rounding
        return MillerIndices((h, k, l), (h0, k0, l0), None)
    h0, k0, l0 = torch.round(h), torch.round(k), torch.round(l)
    return MillerIndices((h, k, l), (h0, k0, l0), ((h - h0).to(dtype), (k - k0).to(dtype), (l - l0).to(dtype)))


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
    # layers and sub-pixels outermost in memory: the anchor's per-pixel part then adds
    # along contiguous rows of (P, K) (it is the same for every layer and sub-pixel)
    near = (scat - anchor).to(dtype).permute(1, 2, 0, 3, 4)   # (T,S,P,K,3), small
    in_place = not torch.is_grad_enabled()
    out = []
    for j in range(3):
        axis = abc[:, :, j]                                    # (F,M,3)
        coarse = project(anchor, axis)                         # (P,1,1,K,F,M)
        node = torch.round(coarse)
        start = (coarse - node).to(dtype).permute(1, 2, 0, 3, 4, 5)
        delta = project(near, axis.to(dtype), start=start).permute(2, 0, 1, 3, 4, 5)     # (P,T,S,K,F,M)
        step = torch.round(delta)
        out.append((delta.sub_(step) if in_place else delta - step, (node, step)))
    return out


def project(v, axes, start=None):
    """v . axes for every (phi, mosaic) orientation: (P, T, S, K, 3) x (F, M, 3) -> (P, T, S, K, F, M).

    The result is a view whose memory runs orientation-major, (F, M, P, T, S,
    K): one matrix product (F M, 3) x (3, P T S K) whose rows are long,
    against a product with F M columns, which a CPU runs several times
    slower.  Element-wise operations keep that layout, and the sums over
    (F, M) run over the outermost memory dimensions.  ``start``
    (broadcastable to the result) is added.
    """
    F, M = axes.shape[:2]
    lead = v.shape[:-1]
    columns = v.movedim(-1, 0).reshape(3, -1)            # a view when v is component-major
    out = torch.mm(axes.reshape(F * M, 3), columns).view(F, M, *lead)
    out = out.permute(*range(2, 2 + len(lead)), 0, 1)
    if start is None:
        return out
    return out.add_(start) if not torch.is_grad_enabled() else out + start


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


def _interpolation_cut(pix, valid, opt: Options):
    """Where interpolation is on (parity: off from (cut_pixel, cut_eval) in raster order, quirk c).

    Returns (use_interp bool (P,T,S,K,F,M), the pixel's evaluation counter, same shape).
    """
    P = pix.shape[0]
    eval_index = (torch.cumsum(valid.reshape(P, -1).long(), -1) - 1).reshape(valid.shape)
    pixb = pix.reshape((P,) + (1,) * (valid.dim() - 1))
    use_interp = (pixb < opt.cut_pixel) | ((pixb == opt.cut_pixel) & (eval_index < opt.cut_eval))
    return use_interp, eval_index


def _first_out_of_table(pix, valid, use_interp, off_grid, eval_index, hkl, gdt):
    """Each pixel's first evaluation whose interpolation neighbourhood leaves the table.

    Returns (evaluation index (P,) long, -1 if none; its (h, k, l) (P, 3)):
    the engine's warning, and under parity where C switches interpolation off.
    """
    P, device = pix.shape[0], pix.device
    oob_eval = torch.full((P,), -1, dtype=torch.long, device=device)
    oob_hkl = torch.zeros(P, 3, dtype=gdt, device=device)
    if off_grid is None:
        return oob_eval, oob_hkl
    here = (valid & use_interp & off_grid).reshape(P, -1)
    first, any_here = _first_true(here)
    at = first.clamp(max=here.shape[1] - 1)[:, None]
    oob_eval = torch.where(any_here, eval_index.reshape(P, -1).gather(1, at)[:, 0], oob_eval)
    for j, x in enumerate(hkl):
        oob_hkl[:, j] = torch.where(any_here, x.reshape(P, -1).gather(1, at)[:, 0], oob_hkl[:, j])
    return oob_eval, oob_hkl


def solid_angle(pos, airpath, det: Detector):
    """Stage: solid angle omega (P, T, S) in sr of each sub-pixel seen from the sample.

    pixel_size^2 / airpath^2 * close_distance / airpath: the pixel's area
    times the obliquity of its normal; ``-point_pixel``: 1 / airpath^2.
    """
    if det.point_pixel:
        return 1.0 / airpath / airpath
    pixel_sq = det.pixel_size * det.pixel_size
    return pixel_sq / airpath / airpath * det.close_distance / airpath


def polarization_factor(kahn, incident, diffracted, axis):
    """Stage: Kahn polarization factor for unit incident (..., 3) and diffracted (..., 3) vectors.

    0.5 (1 + cos^2 2theta - kahn cos(2 psi) sin^2 2theta), psi the azimuth of
    the diffracted ray about the incident one, measured from the plane that
    contains the polarization ``axis`` (3,).
    """
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


def capture_fraction(diffracted, det: Detector):
    """Stage: fraction (P, T, S) of the photons absorbed in each sensor layer.

    Layer t spans depths [t, t + 1] * thickstep along odet; a ray of
    parallax cos = d . odet crosses it between path lengths depth / cos:
    exp(-mu t s / cos) - exp(-mu (t + 1) s / cos).
    """
    parallax = dot3(diffracted, det.odet)
    t = torch.arange(det.thicksteps, device=diffracted.device, dtype=diffracted.dtype)[None, :, None]
    return (torch.exp(-t * det.thickstep * det.mu / parallax)
            - torch.exp(-(t + 1) * det.thickstep * det.mu / parallax))


@dataclass
class PixelFactors:
    """Solid angle, polarization and capture fraction, and the values C caches per pixel."""
    omega: torch.Tensor             # (P, T, S)
    omega_cached: torch.Tensor      # (P,) first sub-pixel of the first layer
    polar: torch.Tensor | None      # (P, T, S, K), where needed (None with -nopolar)
    polar_cached: torch.Tensor      # (P,) first evaluation the resolution cut keeps (0 if none)
    capture: torch.Tensor           # (P, T, S)
    capture_cached: torch.Tensor    # (P, T) first sub-pixel of each layer


def pixel_factors(pos, rays: Scattering, det: Detector, beam: Beam, opt: Options, dtype, first_kept, any_kept):
    """The per-sub-pixel factors in the compute dtype, and C's per-pixel cached values.

    Without the -oversample_* flags C computes omega, polarization and the
    capture fraction once per pixel (per layer for the capture fraction) and
    applies that value to all the pixel's sub-pixels; the cached values are
    taken at the evaluation where C takes them.
    """
    P, T = pos.shape[:2]
    S, K = pos.shape[2], rays.incident.shape[0]
    omega = solid_angle(pos, rays.airpath, det).to(dtype)

    if det.thick == 0.0 and not (opt.parity and opt.over_thick):
        capture = torch.ones_like(rays.airpath)  # (C zeroes it with -oversample_thick: parity only)
    else:
        capture = capture_fraction(rays.diffracted, det)
    capture = capture.to(dtype)

    polar = None
    every_evaluation = opt.over_polar and (opt.parity or not beam.nopolar)
    if every_evaluation or (not beam.nopolar and beam.dmin > 0.0):
        polar = polarization_factor(beam.kahn, rays.incident.expand_as(rays.S),
                                    rays.diffracted[:, :, :, None, :].expand_as(rays.S),
                                    beam.polar_vector).to(dtype)                 # (P,T,S,K)
    elif not beam.nopolar:
        # without a resolution cut the cached factor is the first sub-pixel's, first source's
        first = polarization_factor(beam.kahn, rays.incident[0], rays.diffracted[:, 0, 0],
                                    beam.polar_vector).to(dtype)
        polar = first.reshape(P, 1, 1, 1).expand(P, T, S, K)
    if beam.nopolar:
        polar_cached = torch.ones(P, dtype=dtype, device=pos.device)
    else:
        gathered = polar.reshape(P, -1).gather(1, first_kept.clamp(max=T * S * K - 1)[:, None])[:, 0]
        polar_cached = torch.where(any_kept, gathered, torch.zeros_like(gathered))
    return PixelFactors(omega, omega[:, 0, 0], polar, polar_cached, capture, capture[:, :, 0])


def intensity_terms(F_cell, F_latt, valid, default_F):
    """F_cell^2 F_latt^2 of every evaluation (0 where skipped; ``valid`` None: none is);
    F_cell None: the constant default_F."""
    F = F_latt * default_F if F_cell is None else F_cell * F_latt           # (P,T,S,K,F,M)
    term = F.square_() if not torch.is_grad_enabled() else F * F
    if valid is None:
        return term
    return torch.where(valid, term, torch.zeros((), dtype=term.dtype, device=term.device))


def accumulate(term, valid, factors: PixelFactors, beam: Beam, opt: Options):
    """Stage: sum the terms over layers, sub-pixels, sources, phi steps and mosaic domains.

    Returns (photons (P,), the intensity sum I (P,) before the scale).
    Spec mode weights each source, applies each -oversample_* factor per
    evaluation and the cached per-pixel factor otherwise, and gives the
    water background the pixel's cached factors.  Parity reproduces C's
    order of operations, including the multiplication of the running sum
    (quirk b) under the -oversample_* flags.
    """
    P, T = term.shape[:2]
    f = factors
    over_any = opt.over_thick or opt.over_polar or opt.over_omega
    ext = (...,) + (None,) * 2                                            # broadcast over F, M

    if opt.parity:
        if over_any:
            g = torch.ones_like(term)
            if opt.over_thick:
                g = g * f.capture[:, :, :, None, None, None]
            if opt.over_polar:
                g = g * f.polar[ext]
            if opt.over_omega:
                g = g * f.omega[:, :, :, None, None, None]
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
            value = value * f.capture_cached[:, -1]         # the last layer's fraction
        if not opt.over_polar:
            value = value * f.polar_cached
        if not opt.over_omega:
            value = value * f.omega_cached
        return value, I

    # every weight below is the same for all (phi, mosaic) orientations: sum those first
    term = term.sum((-2, -1)) * beam.scales                             # (P,T,S,K)
    if opt.over_thick:
        term = term * f.capture[..., None]
    if opt.over_polar and not beam.nopolar:
        term = term * f.polar
    if opt.over_omega:
        term = term * f.omega[..., None]
    per_layer = term.reshape(P, T, -1).sum(-1)
    I = per_layer.sum(-1) if opt.over_thick else (per_layer * f.capture_cached).sum(-1)
    bragg = I
    if not opt.over_polar:
        bragg = bragg * f.polar_cached
    if not opt.over_omega:
        bragg = bragg * f.omega_cached
    # the background takes the pixel's cached factors, whatever the flags
    value = opt.scale * (bragg + opt.I_bg * f.capture_cached.sum(-1) * f.polar_cached * f.omega_cached)
    return value, I


def _trace(pos, rays, miller, F_latt, F_cell, valid, omega, polar, capfrac, I, value, beam, cry):
    """Intermediates of the last evaluation of pixel 0 (names as reference.kernel)."""
    d, airpath, scat, stol = rays.diffracted, rays.airpath, rays.S, rays.stol
    keep_flat = rays.keep.reshape(rays.keep.shape[0], -1)
    h, k, l = miller.hkl
    h0, k0, l0 = miller.nodes
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
