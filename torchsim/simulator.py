"""``Simulator``: the torch engine as a differentiable ``torch.nn.Module``.

Its parameters are the physical quantities, in the units of the command line:

=================  =====  ==========================================================
name               shape  meaning
=================  =====  ==========================================================
cell_a/_b/_c       ()     unit-cell lengths (Angstrom)
cell_alpha/...     ()     unit-cell angles (degrees)
misset             (3,)   rotations about x, y, z (degrees), applied to the
                          reciprocal cell as C applies -misset (after a -mat)
N                  (3,)   unit cells along a, b, c (continuous)
mosaic_spread      ()     mosaic spread (degrees); the domains' random axes are fixed
lambda_A           ()     wavelength (Angstrom); every source wavelength scales with it
distance_mm        ()     sample to beam spot along the beam (mm)
beam_center_mm     (2,)   the convention's Xbeam, Ybeam (mm); for the XDS and DIALS
                          conventions (sample pivot) the near point Fclose, Sclose
detector_rot       (3,)   detector rotations about x, y, z (degrees)
twotheta           ()     detector two-theta swing (degrees)
fluence            ()     photons per square metre
polar              ()     Kahn polarization factor
=================  =====  ==========================================================

The structure factors are the buffer ``Fhkl`` (call ``requires_grad_()`` on it
to refine them).  With a -mat input the orientation is a fixed rotation U
such that the reciprocal cell is R(misset) U B(cell), so -mat and -cell
inputs refine the same way.

``forward()`` returns the float image (slow, fast): what -floatfile writes,
in the module's dtype.  Everything not listed above (sources' directions,
phi steps, oversampling, sensor layers, ROI, mask) is fixed at construction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from reference.scene import AVOGADRO, R_E_SQR, SHAPE_CODE, WATER_F, WATER_MW, build_scene
from torchsim import kernel as K
from torchsim.crystal import orientation_tables, rotate_xyz
from torchsim.engine import active_pixels, chunk_size
from torchsim.engine import render as render_engine

DEG = math.pi / 180.0


def reciprocal_cell(a, b, c, alpha, beta, gamma):
    """Reciprocal basis (3, 3) with columns a*, b*, c* (1/Angstrom), a* along x.

    Lengths in Angstrom, angles in radians (tensors); the construction is the
    C program's standard orientation (b* in the x-y plane).
    """
    ca, cb, cg = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sa, sb, sg = torch.sin(alpha), torch.sin(beta), torch.sin(gamma)
    V = a * b * c * torch.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    as0, bs0, cs0 = b * c * sa / V, c * a * sb / V, a * b * sg / V
    cas = (cb * cg - ca) / (sb * sg)
    cbs = (cg * ca - cb) / (sg * sa)
    cgs = (ca * cb - cg) / (sa * sb)
    sgs = torch.sqrt(1 - cgs * cgs)
    zero = torch.zeros_like(a)
    a_star = torch.stack((as0, zero, zero))
    b_star = torch.stack((bs0 * cgs, bs0 * sgs, zero))
    c_star = torch.stack((cs0 * cbs, cs0 * (cas - cbs * cgs) / sgs, 1.0 / (V * as0 * bs0 * sgs)))
    return torch.stack((a_star, b_star, c_star), dim=1)


def direct_from_reciprocal(recip_cols):
    """Direct vectors (rows a, b, c) from reciprocal columns, same length unit inverted."""
    a_s, b_s, c_s = recip_cols.unbind(1)
    V_star = torch.dot(a_s, torch.cross(b_s, c_s, dim=0))
    return torch.stack((torch.cross(b_s, c_s, dim=0), torch.cross(c_s, a_s, dim=0),
                        torch.cross(a_s, b_s, dim=0))) / V_star


def axis_angle_matrices(axes, angles):
    """Rotation matrices (M, 3, 3) about unit ``axes`` (M, 3) by ``angles`` (M,) radians."""
    c, s = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    x, y, z = axes.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack((torch.stack((zero, -z, y), -1), torch.stack((z, zero, -x), -1),
                         torch.stack((-y, x, zero), -1)), -2)
    eye = torch.eye(3, dtype=axes.dtype, device=axes.device)
    return c * eye + (1 - c) * axes[:, :, None] * axes[:, None, :] + s * cross


def _mosaic_draws(scene):
    """Each domain's rotation axis and angle fraction, from C's generator and seed.

    The draws start from the scene's mosaic stream, so that with ``-c_parity``
    they continue on the shuffle table a random misset left, as the
    reference's matrices do.
    """
    from reference import rng
    M = scene.mosaic_umats.shape[0]
    axes, fractions = np.zeros((M, 3)), np.zeros(M)
    if scene.mosaic_spread <= 0.0 or M == 1:
        axes[:, 2] = 1.0
        return axes, fractions
    state = scene.mosaic_stream.copy()
    for m in range(M):
        r1, r2, r3 = (2.0 * rng.ran1(state) - 1.0 for _ in range(3))
        xy = math.sqrt(1.0 - r2 * r2)
        axes[m] = (xy * math.sin(math.pi * r1), xy * math.cos(math.pi * r1), r2)
        fractions[m] = (1.0 - r3 * r3) ** (1.0 / 3.0)
    fractions[0] = 0.0                        # domain 0 is forced to be unrotated
    return axes, fractions


class Simulator(nn.Module):
    """Differentiable nanoBragg: parameters in, float image out."""

    @classmethod
    def from_args(cls, tokens, device=None, dtype=torch.float64):
        """Build from the same command-line tokens ``nanobragg`` takes."""
        from reference.cli import parse_args
        return cls(parse_args(list(tokens)), device=device, dtype=dtype)

    def __init__(self, config, device=None, dtype=torch.float64):
        super().__init__()
        device = torch.device(device or config.device)
        self.scene = sc = build_scene(config, echo=False)
        self.config = config
        P = lambda v: nn.Parameter(torch.as_tensor(np.asarray(v, dtype=np.float64), device=device).to(dtype))  # noqa: E731
        B = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float64), device=device).to(dtype)  # noqa: E731

        # crystal: lengths and angles of the scene's cell, orientation U = R(misset)^T A* B^-1
        a, b, c = (np.asarray(v) * 1e10 for v in (sc.a0, sc.b0, sc.c0))
        la, lb, lc = (float(np.linalg.norm(v)) for v in (a, b, c))
        angle = lambda u, v: math.degrees(math.acos(float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))))  # noqa: E731
        self.cell_a, self.cell_b, self.cell_c = P(la), P(lb), P(lc)
        self.cell_alpha, self.cell_beta, self.cell_gamma = P(angle(b, c)), P(angle(a, c)), P(angle(a, b))
        self.misset = P(np.degrees(sc.misset))
        with torch.no_grad():
            Bcell = reciprocal_cell(*(torch.tensor(x, dtype=torch.float64) for x in (la, lb, lc)),
                                    *(torch.tensor(math.radians(x), dtype=torch.float64)
                                      for x in (angle(b, c), angle(a, c), angle(a, b)))).numpy()
            R = rotate_xyz(torch.eye(3, dtype=torch.float64), torch.tensor(sc.misset, dtype=torch.float64)).numpy().T
        # columns a*, b*, c* of the scene's direct cell (its own a_star can be off: C quirk (n))
        A_star = np.linalg.inv(np.array([a, b, c]))
        U = R.T @ A_star @ np.linalg.inv(Bcell)
        self.register_buffer("orientation", B(U))
        # The spot shapes use C's reciprocal vectors, which for a triclinic -cell under -c_parity
        # are not the reciprocal of C's direct cell (quirk (n)): keep the difference fixed
        self.register_buffer("_recip_offset", B(np.zeros((3, 3))))
        if sc.parity:
            with torch.no_grad():
                _, recip_rows = self.cell_vectors()
            c_recip = np.array([sc.a_star, sc.b_star, sc.c_star], dtype=np.float64)
            self._recip_offset = B(c_recip) - recip_rows
        self.N = P([sc.Na, sc.Nb, sc.Nc])
        self.mosaic_spread = P(math.degrees(sc.mosaic_spread))
        axes, fractions = _mosaic_draws(sc)
        self.register_buffer("mosaic_axes", B(axes))
        self.register_buffer("mosaic_fractions", B(fractions))

        # beam and detector
        self.lambda_A = P(sc.lambda0 * 1e10)
        self.register_buffer("relative_wavelengths", B(sc.source_lambda / sc.lambda0))
        self.distance_mm = P(sc.placement_distance * 1000.0)
        self.beam_center_mm = P(self._initial_beam_center(sc))
        self.detector_rot = P(np.degrees([config.detector_rotx, config.detector_roty, config.detector_rotz]))
        self.twotheta = P(math.degrees(sc.twotheta))
        self.fluence = P(sc.fluence)
        self.polar = P(config.polarization)
        self.register_buffer("Fhkl", B(sc.Fhkl))

        self._fixed = {name: B(getattr(sc, name)) for name in
                       ("fdet0", "sdet0", "odet0", "twotheta_axis", "beam", "sources", "polar_vector", "spindle")}
        for name, value in self._fixed.items():
            self.register_buffer("_" + name, value)
        weights = sc.source_weight
        scales = np.ones_like(weights) if sc.parity or np.all(weights == weights[0]) else weights / weights.mean()
        self.register_buffer("_source_scales", B(scales))
        self._pixels = active_pixels(sc)
        self._cut = (sc.fpixels * sc.spixels, 0)
        if sc.parity and sc.interpolate:
            self._cut = self._parity_interpolation_cut()

    # ---- beam centre conventions ---------------------------------------
    @staticmethod
    def _initial_beam_center(sc):
        if sc.pivot == "sample" and sc.convention in ("xds", "dials"):
            return [sc.pivot_F * 1000.0, sc.pivot_S * 1000.0]
        return [sc.Xbeam * 1000.0, sc.Ybeam * 1000.0]

    def _pivot_point(self):
        """(F, S) in metres that the pivot formula uses, from the beam-centre parameter."""
        sc = self.scene
        X, Y = (self.beam_center_mm / 1000.0).unbind()
        if sc.pivot == "sample" and sc.convention in ("xds", "dials"):
            return X, Y
        px = sc.pixel_size
        if sc.convention == "mosflm":
            return Y + 0.5 * px, X + 0.5 * px
        if sc.convention == "denzo":
            return Y, X
        if sc.convention == "adxv":
            return X, sc.detsize_s - Y
        return X, Y                           # custom (and xds/dials with a beam pivot)

    # ---- derived geometry --------------------------------------------------
    def cell_vectors(self):
        """(direct rows a, b, c in metres, reciprocal rows a*, b*, c* in 1/Angstrom)."""
        Bcell = reciprocal_cell(self.cell_a, self.cell_b, self.cell_c, self.cell_alpha * DEG,
                                self.cell_beta * DEG, self.cell_gamma * DEG)
        R = rotate_xyz(torch.eye(3, dtype=Bcell.dtype, device=Bcell.device), self.misset * DEG).T
        recip = R @ self.orientation @ Bcell
        return direct_from_reciprocal(recip) * 1e-10, recip.T + self._recip_offset

    def detector(self):
        """The kernel's Detector for the current parameters."""
        sc = self.scene
        rot = self.detector_rot * DEG
        tt = self.twotheta * DEG
        axis, beam = self._twotheta_axis, self._beam
        place = lambda v: K.rotate_axis(rotate_xyz(v, rot), axis, tt)  # noqa: E731
        ratio = K.dot3(beam, rotate_xyz(self._odet0, rot))
        close = torch.abs(ratio * self.distance_mm / 1000.0)
        F, S = self._pivot_point()
        fdet, sdet, odet = place(self._fdet0), place(self._sdet0), place(self._odet0)
        if sc.pivot == "sample":
            pix0 = place(-F * self._fdet0 - S * self._sdet0 + close * self._odet0)
        else:
            pix0 = -F * fdet - S * sdet + close / ratio * beam
        close_distance = K.dot3(pix0, odet)
        t = lambda x: torch.as_tensor(x, dtype=pix0.dtype, device=pix0.device)  # noqa: E731
        return K.Detector(pix0, fdet, sdet, odet, beam, t(sc.pixel_size), close_distance / ratio,
                          close_distance, t(sc.thickstep), t(sc.mu), int(sc.oversample), int(sc.thicksteps),
                          float(sc.thick), bool(self.config.curved_detector), bool(self.config.point_pixel),
                          int(sc.fpixels), int(sc.spixels))

    def _kernel_inputs(self):
        sc, cfg = self.scene, self.config
        det = self.detector()
        beam = K.Beam(self._sources, self.relative_wavelengths * self.lambda_A * 1e-10, self._source_scales,
                      self._polar_vector, self.polar, bool(cfg.nopolar), float(cfg.dmin))
        cell, recip = self.cell_vectors()
        umats = axis_angle_matrices(self.mosaic_axes, self.mosaic_fractions * self.mosaic_spread * DEG)
        phis = [sc.phi0 + sc.phistep * i for i in range(sc.phisteps)]
        first, later = orientation_tables(cell, self._spindle, phis, umats, sc.mosaic_spread, sc.parity)
        cry = K.Crystal(first, later, recip, self.N, SHAPE_CODE[cfg.xtal_shape],
                        torch.as_tensor(cfg.fudge, dtype=cell.dtype, device=cell.device))
        sf = K.Factors(self.Fhkl, tuple(int(x) for x in sc.hkl_min), tuple(int(x) for x in sc.hkl_max),
                       sc.hkls != 0, float(cfg.default_F), bool(sc.interpolate))
        I_bg = WATER_F * WATER_F * R_E_SQR * self.fluence * cfg.water_size ** 3 * 1e6 * AVOGADRO / WATER_MW
        opt = K.Options(bool(cfg.oversample_thick), bool(cfg.oversample_polar), bool(cfg.oversample_omega),
                        bool(sc.parity), float(cfg.water_size), I_bg, R_E_SQR * self.fluence / sc.steps,
                        self._first_pixel(det, beam), self._cut[0], self._cut[1])
        return det, beam, cry, sf, opt

    def _first_pixel(self, det, beam):
        if not self.scene.parity:
            return -1
        from torchsim.engine import _first_evaluated
        with torch.no_grad():
            return _first_evaluated(self.scene, self._pixels, det, beam)

    def _parity_interpolation_cut(self):
        """Where C switches interpolation off (raster order), found once with the engine."""
        with torch.no_grad():
            cut = render_engine(self.scene, progress=False).cut
        return cut if cut is not None else self._cut

    # ---- forward -----------------------------------------------------------
    def forward(self):
        """Float image (slow, fast) in photons per pixel."""
        sc = self.scene
        det, beam, cry, sf, opt = self._kernel_inputs()
        device = det.pix0.device
        # the whole budget: more chunks mean checkpointing, i.e. a second forward in backward
        chunk = chunk_size(sc, det, beam, cry, sf, self.config.memory_gb * 1e9, cap_cpu=False)
        pixels = torch.as_tensor(self._pixels, device=device)
        values = []
        for start in range(0, pixels.shape[0], chunk):
            pix = pixels[start:start + chunk]
            if chunk < pixels.shape[0] and torch.is_grad_enabled():
                v = checkpoint(lambda p: K.render_pixels(p, det, beam, cry, sf, opt)[0], pix, use_reentrant=False)
            else:
                v = K.render_pixels(pix, det, beam, cry, sf, opt)[0]
            values.append(v)
        flat = torch.zeros(sc.fpixels * sc.spixels, dtype=det.pix0.dtype, device=device)
        if values:
            flat = flat.index_put((pixels,), torch.cat(values))
        return flat.reshape(sc.spixels, sc.fpixels)
