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
inputs refine the same way.  With spec mode's ``-pix0_vector`` the detector
origin is that fixed vector (the buffer ``pix0_vector``), so ``distance_mm``
and ``beam_center_mm`` do not enter (their gradients are None); under
``-c_parity`` C ignores the vector (quirk (f)) and so does the Simulator.

**Precision.**  Parameters and buffers are float64 whatever the compute
dtype: they are the physical quantities, and the geometry derived from them
(detector positions, directions, cell vectors, Miller indices) needs float64
to hold an index of ~100 to 1e-7 (specs/engines.md).  ``dtype`` (the
constructor's, or the ``dtype`` attribute) is the compute dtype of the
per-evaluation work (lattice factor from the offset to the nearest node,
structure factors, sums) and of the image ``forward()`` returns; gradients
reach the float64 parameters through the casts.  ``module.to(device)``
moves everything; do not cast the module with ``.float()`` (the parameters
would lose the precision the geometry needs).

**Mosaic domains.**  The domains keep the axes and angle fractions that C's
generator drew (from ``-mosaic_seed``); their angles scale with
``mosaic_spread``.  With ``-mosaic 0 -mosaic_dom n`` the command line
renders one domain (C drops the others), but the Simulator keeps the n
drawn axes, all unrotated at spread 0, so that the spread acts from zero:
the image is the same (n equal copies, averaged) and d image / d spread is
the derivative in the domains' directions.  With one domain (the default
at spread 0) there is nothing to rotate and the spread's gradient is None.

**Heap.** On the CPU a pass renders chunk after chunk, and runs faster when
glibc keeps the freed memory for the next chunk instead of faulting fresh
pages in: call :func:`torchsim.allocator.keep_freed_memory` once.  It
changes the whole process's heap settings, so the Simulator leaves that to
you; ``nanobragg -engine torch`` and ``nanobragg-dataset`` call it.

``forward()`` returns the float image (slow, fast): what -floatfile writes.
Everything not listed above (sources' directions, phi steps, oversampling,
sensor layers, ROI, mask) is fixed at construction.  ``render()`` and
``trace()`` are what ``nanobragg -engine torch`` runs: the same pass under
``torch.no_grad()``, with a progress bar and the interpolation warning.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from reference.errors import InputError
from reference.structure_factors import skip_cache_write
from reference.scene import AVOGADRO, R_E_SQR, SHAPE_CODE, WATER_F, WATER_MW, RenderResult, build_scene, \
    first_out_of_table, rendered_mask
from torchsim import kernel as K
from torchsim.crystal import axis_angle_matrices, cell_constants, cell_vectors, fixed_orientation, mosaic_draws, \
    mosaic_rotations, misset_rotation, orientation_tables
from torchsim.geometry import Frame, place_detector
from torchsim.sources import divergence_grid, generated_directions, wavelengths

__all__ = ["Simulator", "axis_angle_matrices"]

DEG = math.pi / 180.0
GEOMETRY = torch.float64          # the dtype of every position, direction and cell vector

# bytes of working memory per (pixel, layer, sub-pixel, source, phi, domain)
BYTES_PER_EVAL = 400
BYTES_PER_EVAL_INTERP = 2400
# On a CPU, chunks beyond a few hundred MB only cost page faults and cache
# misses (measured on workload (a), float32, one thread: 4 GB chunks 3.1 s,
# 1 GB 2.0 s, 256 MB 2.1 s, 64 MB 1.9 s), so the budget is a ceiling there.
CPU_CHUNK_BYTES = 256e6


def resolve_device(name) -> torch.device:
    """A torch device from its name; one clear error when CUDA is asked for and absent."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("-device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name) -> torch.dtype:
    """torch.float64 / torch.float32 from a dtype or its name (-dtype)."""
    if isinstance(name, torch.dtype):
        return name
    return {"float64": torch.float64, "float32": torch.float32}[name]


def _whole(values):
    """``values`` as Python ints when every one is a whole number, else None."""
    if all(float(v) == int(v) for v in values):
        return tuple(int(v) for v in values)
    return None


class Simulator(nn.Module):
    """Differentiable nanoBragg: parameters in, float image out."""

    @classmethod
    def from_args(cls, tokens, device=None, dtype=None, **kwargs):
        """Build from the same command-line tokens ``nanobragg`` takes.

        ``device`` and ``dtype`` default to the tokens' ``-device`` and
        ``-dtype``.  No file is written (a ``-hkl`` table is not cached in
        ``Fdump.bin``); an earlier ``Fdump.bin`` is read as the command line
        reads it.
        """
        from reference.cli import parse_args
        return cls(parse_args(list(tokens)), device=device, dtype=dtype, **kwargs)

    def __init__(self, config, device=None, dtype=None, *, scene=None, spread_from_zero=True):
        """``config``: a :class:`reference.config.Config`; ``scene``: its derived scene, when
        the caller has one (the engine), else it is built here without writing any file.
        ``spread_from_zero``: keep ``-mosaic_dom n`` domains at zero spread (class docstring).
        """
        super().__init__()
        self._device = resolve_device(device if device is not None else config.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else config.dtype)
        if scene is None:
            scene = build_scene(config, echo=False, stage=skip_cache_write)
        self.scene = scene
        self.config = config
        # parameters are created in the order of the class docstring's table
        self._init_crystal(scene)
        self._init_mosaic(scene, config, spread_from_zero)
        self._init_sources(scene, config)
        self._init_detector(scene, config)
        self.fluence = self._parameter(scene.fluence)
        self.polar = self._parameter(config.polarization)
        self.register_buffer("Fhkl", self._buffer(scene.Fhkl))
        self._pixels = np.flatnonzero(rendered_mask(scene))      # raster indices rendered (ROI, mask)

    def _parameter(self, value):
        return nn.Parameter(self._buffer(value))

    def _buffer(self, value):
        return torch.as_tensor(np.asarray(value, dtype=np.float64), device=self._device)

    def _init_crystal(self, sc):
        """Cell constants and misset from the scene's cell; U holds the rest of the orientation."""
        lengths, angles = cell_constants((sc.a0, sc.b0, sc.c0))
        self.cell_a, self.cell_b, self.cell_c = (self._parameter(x) for x in lengths)
        self.cell_alpha, self.cell_beta, self.cell_gamma = (self._parameter(x) for x in angles)
        self.misset = self._parameter(np.degrees(sc.misset))
        direct = torch.tensor(np.array([sc.a0, sc.b0, sc.c0], dtype=np.float64))
        if torch.isfinite(direct).all():
            U = fixed_orientation(direct, torch.tensor(sc.misset, dtype=torch.float64),
                                  *(torch.tensor(x, dtype=torch.float64) for x in (lengths, angles)))
        else:                                 # a NaN cell (-c_parity reads one): NaN, as in C
            U = torch.full((3, 3), math.nan, dtype=torch.float64)
        self.register_buffer("orientation", U.to(self._device))
        # the spot shapes use C's reciprocal vectors, which for a triclinic -cell under -c_parity
        # are not the reciprocal of C's direct cell (quirk (n)): keep the difference fixed in
        # the crystal's frame (it turns with the misset)
        self.register_buffer("_recip_offset", self._buffer(np.zeros((3, 3))))
        if sc.parity:
            with torch.no_grad():
                _, recip_rows = self.cell_vectors()
                offset = (self._buffer([sc.a_star, sc.b_star, sc.c_star]) - recip_rows).T
                self._recip_offset = misset_rotation(self.misset * DEG).T @ offset
        self.N = self._parameter([sc.Na, sc.Nb, sc.Nc])

    def _init_mosaic(self, sc, config, spread_from_zero):
        """The domains C's generator drew, the spindle and the phi steps (fixed)."""
        self.mosaic_spread = self._parameter(math.degrees(sc.mosaic_spread))
        domains = sc.mosaic_umats.shape[0]
        if spread_from_zero and sc.mosaic_spread == 0.0 and config.mosaic_domains > 1:
            domains = config.mosaic_domains
        axes, fractions = mosaic_draws(sc.mosaic_stream, domains, sc.mosaic_spread)
        self.register_buffer("mosaic_axes", self._buffer(axes))
        self.register_buffer("mosaic_fractions", self._buffer(fractions))
        self.register_buffer("spindle", self._buffer(sc.spindle))
        self._phis = [sc.phi0 + sc.phistep * i for i in range(sc.phisteps)]
        # C divides by the number of (source, domain, phi, sub-pixel) steps
        self._steps = sc.steps // sc.mosaic_umats.shape[0] * domains

    def _init_sources(self, sc, config):
        """Wavelength, the divergence grid (or the source file's directions) and the weights."""
        self.lambda_A = self._parameter(sc.lambda0 * 1e10)
        self.register_buffer("relative_wavelengths", self._buffer(sc.source_lambda / sc.lambda0))
        self.register_buffer("beam", self._buffer(sc.beam))
        self.register_buffer("polar_vector", self._buffer(sc.polar_vector))
        if config.source_file is None:
            hdiv, vdiv = divergence_grid(config)
            if hdiv.shape[0] != sc.sources.shape[0]:
                raise RuntimeError("torchsim.sources enumerates %d sources, the scene %d"
                                   % (hdiv.shape[0], sc.sources.shape[0]))
            self.register_buffer("source_hdiv", self._buffer(hdiv))
            self.register_buffer("source_vdiv", self._buffer(vdiv))
            self.register_buffer("source_directions", None)
        else:
            self.register_buffer("source_directions", self._buffer(sc.sources))
        weights = sc.source_weight
        scales = np.ones_like(weights) if sc.parity or np.all(weights == weights[0]) else weights / weights.mean()
        self.register_buffer("source_scales", self._buffer(scales))

    def _init_detector(self, sc, config):
        """Distance, beam centre, rotations and two-theta; the unplaced frame (fixed)."""
        self.distance_mm = self._parameter(sc.placement_distance * 1000.0)
        self.beam_center_mm = self._parameter(self._initial_beam_center(sc))
        # metres = the scene's metres + (mm - initial mm) / 1000: at the command line's values the
        # placement then equals the scene's bit for bit (mm / 1000 can differ in the last bit, and
        # C's sinc3 turns a 1e-19 m offset of a pixel on the direct beam into a zero pixel)
        self.register_buffer("_distance_m0", self._buffer(sc.placement_distance))
        self.register_buffer("_distance_mm0", self.distance_mm.detach().clone())
        self.register_buffer("_beam_center_m0", self._buffer(self._initial_beam_center_m(sc)))
        self.register_buffer("_beam_center_mm0", self.beam_center_mm.detach().clone())
        self.detector_rot = self._parameter(np.degrees([config.detector_rotx, config.detector_roty,
                                                        config.detector_rotz]))
        self.twotheta = self._parameter(math.degrees(sc.twotheta))
        for name in ("fdet0", "sdet0", "odet0", "twotheta_axis"):
            self.register_buffer(name, self._buffer(getattr(sc, name)))
        user_pix0 = config.pix0_vector is not None and not sc.parity     # C ignores it (quirk (f))
        self.register_buffer("pix0_vector", self._buffer(sc.pix0) if user_pix0 else None)

    @staticmethod
    def _initial_beam_center_m(sc):
        """The convention's beam centre (m) that :func:`torchsim.geometry.pivot_point` maps back."""
        if sc.convention in ("mosflm", "denzo", "adxv"):
            return [sc.Xbeam, sc.Ybeam]
        return [sc.pivot_F, sc.pivot_S]      # xds, dials, custom: the pivot point itself

    @classmethod
    def _initial_beam_center(cls, sc):
        """The same in mm, the parameter's unit."""
        return [x * 1000.0 for x in cls._initial_beam_center_m(sc)]

    def _metres(self, value_mm, initial_mm, initial_m):
        """A length parameter in metres, anchored at the scene's value (see _init_detector)."""
        return self._g(initial_m) + (self._g(value_mm) - self._g(initial_mm)) / 1000.0

    # ---- the physics, stage by stage (differentiable) --------------------
    def _g(self, x):
        return x.to(GEOMETRY)

    def frame(self) -> Frame:
        """The unplaced detector (fixed)."""
        sc = self.scene
        return Frame(self.fdet0, self.sdet0, self.odet0, self.beam, self.twotheta_axis, sc.convention, sc.pivot,
                     float(sc.pixel_size), float(sc.detsize_s), self.pix0_vector)

    def detector(self) -> K.Detector:
        """The kernel's Detector for the current parameters."""
        sc, cfg = self.scene, self.config
        g = self._g
        distance = self._metres(self.distance_mm, self._distance_mm0, self._distance_m0)
        beam_center = self._metres(self.beam_center_mm, self._beam_center_mm0, self._beam_center_m0)
        place = place_detector(self.frame(), distance, beam_center, g(self.detector_rot) * DEG, g(self.twotheta) * DEG)
        t = lambda x: torch.as_tensor(x, dtype=GEOMETRY, device=place.pix0.device)  # noqa: E731
        return K.Detector(place.pix0, place.fdet, place.sdet, place.odet, self.beam, t(sc.pixel_size),
                          place.distance, place.close_distance, t(sc.thickstep), t(sc.mu), int(sc.oversample),
                          int(sc.thicksteps), float(sc.thick), bool(cfg.curved_detector), bool(cfg.point_pixel),
                          int(sc.fpixels), int(sc.spixels))

    def source_vectors(self):
        """(directions (K, 3) unit sample -> source, wavelengths (K,) m), float64."""
        if self.source_directions is not None:
            directions = self.source_directions
        else:
            directions = generated_directions(self.beam, self.polar_vector, self.source_hdiv, self.source_vdiv)
        return directions, wavelengths(self._g(self.lambda_A) * 1e-10, self.relative_wavelengths)

    def beam_model(self) -> K.Beam:
        """The kernel's Beam: sources, polarization, resolution cut."""
        cfg = self.config
        directions, lambdas = self.source_vectors()
        return K.Beam(directions, lambdas, self.source_scales.to(self.dtype), self.polar_vector, self._g(self.polar),
                      bool(cfg.nopolar), float(cfg.dmin))

    def cell_vectors(self):
        """(direct rows a, b, c in metres, reciprocal rows a*, b*, c* in 1/Angstrom), float64."""
        g = self._g
        lengths = torch.stack((g(self.cell_a), g(self.cell_b), g(self.cell_c)))
        angles = torch.stack((g(self.cell_alpha), g(self.cell_beta), g(self.cell_gamma))) * DEG
        return cell_vectors(lengths, angles, g(self.misset) * DEG, self.orientation, self._recip_offset)

    def mosaic_umats(self):
        """Each mosaic domain's rotation (M, 3, 3), float64."""
        return mosaic_rotations(self.mosaic_axes, self.mosaic_fractions, self._g(self.mosaic_spread) * DEG)

    def orientation_tables(self):
        """(first, later) cell tables (F, M, 3, 3), see :func:`torchsim.crystal.orientation_tables`."""
        cell, _ = self.cell_vectors()
        return orientation_tables(cell, self.spindle, self._phis, self.mosaic_umats(), self.scene.parity)

    def crystal(self) -> K.Crystal:
        """The kernel's Crystal for the current parameters."""
        cfg = self.config
        _, recip = self.cell_vectors()
        first, later = self.orientation_tables()
        if torch.is_grad_enabled() and self.N.requires_grad:
            N_int = None                      # N is free: the real-N lattice factor
        else:
            N_int = _whole(self.N.detach().cpu().tolist())     # whole N: the faster, exact form
        c = lambda x: x.to(self.dtype)  # noqa: E731
        return K.Crystal(first, later, c(recip), c(self.N), SHAPE_CODE[cfg.xtal_shape],
                         c(torch.as_tensor(cfg.fudge, dtype=GEOMETRY, device=recip.device)), N_int)

    def factors(self) -> K.Factors:
        sc, cfg = self.scene, self.config
        Fhkl = self.Fhkl.to(self.dtype)
        with torch.no_grad():                 # a property of the data, not a differentiable quantity
            finite = math.isfinite(cfg.default_F) and (sc.hkls == 0 or bool(torch.isfinite(Fhkl).all()))
        return K.Factors(Fhkl, tuple(int(x) for x in sc.hkl_min), tuple(int(x) for x in sc.hkl_max), sc.hkls != 0,
                         float(cfg.default_F), bool(sc.interpolate), finite)

    def options(self) -> K.Options:
        """Per-pixel flags and the overall scale; parity's first pixel and cut are set later."""
        sc, cfg = self.scene, self.config
        fluence, w = self._g(self.fluence), cfg.water_size
        # C's expression in C's order (w ** 3 can differ in the last bit and overflow differently)
        I_bg = WATER_F * WATER_F * R_E_SQR * fluence * w * w * w * 1e6 * AVOGADRO / WATER_MW
        scale = R_E_SQR * fluence / self._steps
        npix = sc.fpixels * sc.spixels
        return K.Options(bool(cfg.oversample_thick), bool(cfg.oversample_polar), bool(cfg.oversample_omega),
                         bool(sc.parity), float(w), I_bg.to(self.dtype), scale.to(self.dtype), -1, npix, 0)

    def kernel_inputs(self):
        """(Detector, Beam, Crystal, Factors, Options) for the current parameters."""
        return self.detector(), self.beam_model(), self.crystal(), self.factors(), self.options()

    # ---- rendering -------------------------------------------------------
    def _chunk(self, det, beam, cry, sf, cap_cpu: bool) -> int:
        """Pixels per chunk so that the working set fits ``-memory_gb``."""
        evals = det.thicksteps * det.oversample ** 2 * beam.directions.shape[0] * cry.abc_later.shape[0] \
            * cry.abc_later.shape[1]
        per_eval = BYTES_PER_EVAL_INTERP if sf.interpolate else BYTES_PER_EVAL
        budget = self.config.memory_gb * 1e9
        if cap_cpu and det.pix0.device.type == "cpu":
            budget = min(budget, CPU_CHUNK_BYTES)
        return max(1, int(budget // (evals * per_eval)))

    @torch.no_grad()
    def _first_evaluated(self, det, beam) -> int:
        """Parity: the first active pixel (raster order) whose phi loop runs (needs the dmin cut)."""
        pixels = self._pixels
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

    def _pass(self, inputs, chunk, progress=False, track=False):
        """Render every active pixel once: (flat image (npix,), omega sum, first out-of-table per pixel).

        With gradients on, the chunks are checkpointed (more than one chunk
        means a second forward in backward) and nothing else is recorded.
        """
        det, beam, cry, sf, opt = inputs
        device = det.pix0.device
        npix = self.scene.fpixels * self.scene.spixels
        pixels = torch.as_tensor(self._pixels, device=device)
        if torch.is_grad_enabled():
            values = []
            for start in range(0, pixels.shape[0], chunk):
                pix = pixels[start:start + chunk]
                if chunk < pixels.shape[0]:
                    v = checkpoint(lambda p: K.render_pixels(p, det, beam, cry, sf, opt)[0], pix,
                                   use_reentrant=False)
                else:
                    v = K.render_pixels(pix, det, beam, cry, sf, opt)[0]
                values.append(v)
            flat = torch.zeros(npix, dtype=self.dtype, device=device)
            if values:
                flat = flat.index_put((pixels,), torch.cat(values))
            return flat, None, None
        flat = torch.zeros(npix, dtype=self.dtype, device=device)
        omega = 0.0
        oob = (np.full(npix, -1, dtype=np.int64), np.zeros((npix, 3))) if track else None
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=pixels.shape[0], unit="px", desc="rendering", leave=False)
        for start in range(0, pixels.shape[0], chunk):
            pix = pixels[start:start + chunk]
            v, om, oob_eval, oob_hkl, _ = K.render_pixels(pix, det, beam, cry, sf, opt)
            flat[pix] = v
            omega += float(om.sum())
            if track:
                idx = pix.cpu().numpy()
                oob[0][idx] = oob_eval.cpu().numpy()
                oob[1][idx] = oob_hkl.cpu().double().numpy()
            if bar is not None:
                bar.update(pix.shape[0])
        if bar is not None:
            bar.close()
        return flat, omega, oob

    def _evaluate(self, progress=False):
        """(flat image, omega sum or None, interpolation warning, parity cut) for the current parameters.

        Under -c_parity the first evaluated pixel and, with interpolation,
        the cut (quirk (c): the first out-of-table neighbourhood in raster
        order) depend on the parameters, so both are found here, without
        gradients, before the pass that counts.
        """
        det, beam, cry, sf, opt = inputs = self.kernel_inputs()
        parity = self.scene.parity
        if parity:
            opt.first_pixel = self._first_evaluated(det, beam)
        grad = torch.is_grad_enabled()
        chunk = self._chunk(det, beam, cry, sf, cap_cpu=not grad)
        warning = cut = None
        if sf.interpolate and (parity or not grad):
            with torch.no_grad():
                flat, omega, oob = self._pass(inputs, chunk, progress, track=True)
            found = first_out_of_table(*oob)
            if found is not None:
                first, evaluation, warning = found
                if parity:
                    # C turns interpolation off for good at this evaluation: render again
                    opt.cut_pixel, opt.cut_eval = cut = (first, evaluation)
            if not grad and cut is None:
                return flat, omega, warning, cut
        flat, omega, _ = self._pass(inputs, chunk, progress)
        return flat, omega, warning, cut

    def forward(self):
        """Float image (slow, fast) in photons per pixel, in the compute dtype."""
        flat = self._evaluate()[0]
        return flat.reshape(self.scene.spixels, self.scene.fpixels)

    @torch.no_grad()
    def render(self, progress: bool = False, out_dtype=torch.float32) -> RenderResult:
        """The command line's render: image as NumPy ``out_dtype``, omega sum, warning, cut."""
        flat, omega, warning, cut = self._evaluate(progress)
        image = flat.reshape(self.scene.spixels, self.scene.fpixels).to("cpu", out_dtype).numpy()
        return RenderResult(image, omega, warning, cut)

    @torch.no_grad()
    def trace(self, spixel: int, fpixel: int) -> dict:
        """Intermediates of one pixel's last evaluation (names as the reference trace)."""
        det, beam, cry, sf, opt = self.kernel_inputs()
        if self.scene.parity:
            opt.first_pixel = self._first_evaluated(det, beam)
        pix = torch.tensor([spixel * self.scene.fpixels + fpixel], device=det.pix0.device)
        return K.render_pixels(pix, det, beam, cry, sf, opt, want_trace=True)[-1]
