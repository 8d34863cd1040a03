"""Float images that hold NaN or inf: which pixels, and which factor overflowed.

The float image is written as float32, as the C program writes it, so a pixel
above float32's largest number (3.4e38 photons) becomes inf; a factor that
overflows double precision on the way (F = 1e200 squares to inf) does too, and
inf - inf or 0 x inf make NaN.  :func:`explain` says which, from the scene's
factors: the largest pixel is at most

    r_e^2 x fluence x F^2 x F_latt^2 x omega   (Bragg term)
    r_e^2 x fluence x I_bg x omega               (water background)

with F the largest structure factor, F_latt^2 <= (Na Nb Nc)^2 and omega the
solid angle of a (sub-)pixel at the closest distance (polarization and capture
fraction are at most 1).  The torch engine in float32 also holds F, F^2 and the
sums of a pixel in float32, so it can overflow where the image itself would not.
"""

from __future__ import annotations

import math

import numpy as np

from reference.scene import R_E_SQR, Scene, rendered_mask

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _g(x: float) -> str:
    return "%.3g" % x


def _largest_F(sc: Scene) -> float:
    values = np.abs(np.asarray(sc.Fhkl, dtype=np.float64)) if sc.hkls else np.zeros(1)
    with np.errstate(invalid="ignore"):
        return float(max(abs(sc.cfg.default_F), values.max(initial=0.0)))


def _omega(sc: Scene) -> float:
    """Solid angle of one (sub-)pixel at the closest distance, an upper bound (sr)."""
    close = abs(sc.close_distance)
    if close == 0.0 or not math.isfinite(close):
        return math.inf
    if sc.cfg.point_pixel:
        return 1.0 / (close * close)
    sub = sc.pixel_size / sc.oversample
    return sub * sub / (close * close)


def _not_finite_input(sc: Scene) -> str | None:
    """A NaN or inf that came in with the inputs (accepted under -c_parity), named."""
    if sc.hkls and not np.isfinite(sc.Fhkl).all():
        return "the structure-factor table holds a number that is not finite"
    if not math.isfinite(sc.cfg.default_F):
        return "-default_F is not finite"
    geometry = np.concatenate([np.ravel(x) for x in (sc.a0, sc.b0, sc.c0, sc.pix0, sc.fdet, sc.sdet, sc.beam)]
                              + [np.ravel(sc.source_lambda), np.ravel(sc.sources)])
    if not np.isfinite(geometry).all():
        return "the crystal, detector or source geometry is not finite (a NaN or inf in an input file)"
    if sc.mosaic_umats is not None and not np.isfinite(sc.mosaic_umats).all():
        return (f"the mosaic domain orientations are not finite (-mosaic {_g(sc.mosaic_spread * (180 / math.pi))} "
                f"degrees is too large)")
    if sc.thick > 0.0 and not math.isfinite(sc.mu):
        return ("the sensor's attenuation 1/depth is infinite (-detector_abs is too small to divide by), "
                "so its capture fraction is NaN")
    return None


def explain(sc: Scene, image: np.ndarray, engine_float32: bool = False):
    """None when every rendered pixel of ``image`` is finite, else (one line saying what and why, kind).

    ``kind`` is "input" (a NaN or inf came in with an input file, which only
    -c_parity accepts), "quirk" (C's own running-sum overflow, quirk (b)),
    "float32" (the torch engine's float32 arithmetic overflowed where the
    pixels would fit: C would not), "overflow" (the pixels themselves exceed
    float32's range, as in C) or "unknown".
    """
    rendered = rendered_mask(sc)
    values = np.asarray(image)[rendered]
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    n_nan = int(np.isnan(values).sum())
    n_inf = int(bad.sum()) - n_nan
    kinds = " and ".join(k for k, n in (("NaN", n_nan), ("inf", n_inf)) if n)
    first = int(np.flatnonzero(rendered.ravel())[int(np.argmax(bad))])
    where = (f"the float image holds {kinds} at {int(bad.sum())} of {values.size} rendered pixels "
             f"(first at slow {first // sc.fpixels}, fast {first % sc.fpixels})")
    text, kind = cause(sc, engine_float32)
    return f"{where}: {text}", kind


def cause(sc: Scene, engine_float32: bool = False):
    """(which factor makes the image overflow and what to change, kind); see :func:`explain`."""
    known = _not_finite_input(sc)
    if known is not None:
        return known, "input"
    cfg = sc.cfg
    with np.errstate(all="ignore"):
        F = _largest_F(sc)
        F2 = float(np.float64(F) * np.float64(F))
        N = float(sc.Na) * float(sc.Nb) * float(sc.Nc)
        L2 = N * N
        fluence_re2 = float(np.float64(sc.fluence) * R_E_SQR)
        omega = _omega(sc)
        bragg = float(np.float64(fluence_re2) * F2 * L2 * omega)
        water = float(np.float64(fluence_re2) * sc.I_bg * omega)
    pixel = max(bragg, water)
    over_oversample = [f"-oversample_{n}" for n in ("thick", "polar", "omega") if getattr(cfg, f"oversample_{n}")]
    if pixel <= FLOAT32_MAX and cfg.c_parity and over_oversample:
        verb = "multiply" if len(over_oversample) > 1 else "multiplies"
        return (f"{' and '.join(over_oversample)} {verb} the running sum of each pixel at every step "
                f"(quirk (b), kept by -c_parity), which grows past the float range"), "quirk"
    if pixel <= FLOAT32_MAX and engine_float32:
        steps = float(sc.steps)
        for name, value in (("F", F), ("F^2", F2), ("F^2 x F_latt^2", F2 * L2),
                            (f"F^2 x F_latt^2 summed over {sc.steps} steps", F2 * L2 * steps),
                            ("the water background I_bg", sc.I_bg),
                            ("fluence x r_e^2", fluence_re2)):
            if not value <= FLOAT32_MAX:
                return (f"float32 overflow in the torch engine: {name} = {_g(value)} exceeds float32's "
                        f"largest number ({_g(FLOAT32_MAX)}); use -dtype float64"), "float32"
        return (f"float32 overflow in the torch engine (the pixels themselves stay below "
                f"{_g(FLOAT32_MAX)} photons); use -dtype float64"), "float32"
    if pixel <= FLOAT32_MAX:
        # our bound says the pixels fit: something else is not finite
        return ("an intermediate of the pixel computation is not finite; "
                "-trace_pixel on that pixel shows which"), "unknown"
    limit = f"beyond float32's largest number ({_g(FLOAT32_MAX)} photons), the type of the float image"
    if engine_float32:
        limit += " in every engine (-dtype float64 would not help)"
    if water >= bragg:
        return (f"the water background (-water {_g(cfg.water_size * 1e6)} um) reaches "
                f"fluence x r_e^2 x I_bg x omega = {_g(sc.fluence)} photons/m^2 x {_g(R_E_SQR)} m^2 x "
                f"{_g(sc.I_bg)} x {_g(omega)} sr = {_g(water)} photons per pixel, {limit}; "
                f"lower -water or -fluence"), "overflow"
    factors = [("fluence x r_e^2", fluence_re2, "-fluence (or -flux)"),
               ("F^2", F2, "-default_F or the structure factors"),
               ("F_latt^2", L2, "-N")]
    largest = max(factors, key=lambda f: math.log10(f[1]) if f[1] > 0 else -math.inf)
    detail = ""
    if not math.isfinite(F2):
        detail = f" (F = {_g(F)}: its square overflows even double precision)"
    elif not math.isfinite(fluence_re2):
        detail = f" (the fluence {_g(sc.fluence)} photons/m^2 overflows even double precision)"
    return (f"fluence x r_e^2 x F^2 x F_latt^2 x omega = {_g(sc.fluence)} photons/m^2 x {_g(R_E_SQR)} m^2 x "
            f"{_g(F2)} x {_g(L2)} x {_g(omega)} sr = {_g(bragg)} photons per pixel, {limit}; "
            f"the largest factor is {largest[0]}{detail}: lower {largest[2]}"), "overflow"
