"""The dataset plan: every image's file name, nanobragg tokens, random draws and truth.

A plan is built in the client before anything is rendered and depends only
on the description, the format and the engine: it fixes each image's tokens
(``nanobragg_args`` in truth.json, which render that image alone with the
``nanobragg`` command) and every random draw (see :mod:`tools.dataset.draws`).

Rotation: image k of a sweep is the sweep's scene with ``-phi start + k osc
-osc osc`` (and ``-phisteps`` when given).  Stills: shot k is the scene with a
uniformly random ``-misset``, its own ``-mosaic_seed`` (unless the scene fixes
one), and each per-shot variation's flag (``-cell``, ``-N``/``-Na -Nb -Nc``,
``-mosaic``, ``-lambda``, ``-fluence``, ``-sourcefile`` for a spectrum).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from reference.errors import InputError
from tools.dataset import draws as D
from tools.dataset.description import VARIATIONS, Description, Flag
from tools.dataset.formats import EXTENSIONS
from tools.dataset.orientations import crystal_truth, lab_to_mcstas, misset_angles, uniform_rotation

SOURCE_DISTANCE_M = 10.0        # where a spectrum's source sits, as nanobragg places generated sources
EPOCH = np.datetime64("2000-01-01T00:00:00.000")


@dataclass
class Image:
    index: int                   # 0-based over the dataset
    sweep: int                   # 0-based
    frame: int                   # 1-based within its sweep
    name: str                    # the file written (for NeXus: frames/NAME.frame, kept until the master exists)
    tokens: list
    phi_deg: float
    osc_deg: float
    wavelength_A: float
    exposure_s: float
    draws: dict = field(default_factory=dict)
    crystal: dict = field(default_factory=dict)
    noise_seed: int | None = None
    spectrum: tuple | None = None   # (file, text) of the shot's source file


@dataclass
class Sweep:
    name: str                    # file prefix
    kind: str                    # rotation or stills
    images: list                 # Image
    geometry: dict
    start_deg: float = 0.0
    osc_deg: float = 0.0
    phisteps: int = 1
    master: str | None = None    # NeXus: the master file of this sweep
    integer_scale: float = 1.0
    adc_offset: float = 40.0
    scene: object = None         # the reference scene of the first image (client side only)
    effects: dict | None = None  # [detector_effects] as applied to this sweep (see sweep_effects)


@dataclass
class Plan:
    description: Description
    format: str
    engine_tokens: list
    sweeps: list
    noisy: bool
    calibration_seed: int | None = None   # seed of the detector's calibration map (noisy datasets)

    @property
    def images(self) -> list:
        return [image for sweep in self.sweeps for image in sweep.images]


# ---------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------

def _canonical(name: str) -> str:
    from reference.flags import BY_NAME
    return BY_NAME[name].names[0]


def merged(flags: list, overrides: list, replaces=None) -> list:
    """``flags`` with each override in place of the flags it replaces (its own first), else appended.

    ``replaces`` maps an override's canonical name to the canonical names it
    takes the place of (default: itself).  Keeping the scene's order matters:
    nanobragg applies flags in order (a convention flag resets the pivot that
    an earlier beam-centre flag set).
    """
    result = list(flags)
    for flag in overrides:
        gone = set((replaces or {}).get(flag.canonical, ())) | {flag.canonical}
        where = [k for k, f in enumerate(result) if f.canonical in gone]
        if where:
            result[where[0]] = flag
            result = [f for k, f in enumerate(result) if k == where[0] or k not in where[1:]]
        else:
            result.append(flag)
    return result


def tokens_of(flags: list) -> list:
    out = []
    for flag in flags:
        out.append(flag.name)
        out.extend(flag.values)
    return out


def _number(value: float) -> str:
    """A number as a token that reads back to the same double."""
    return repr(float(value))


def _flag(name: str, *values) -> Flag:
    return Flag(name, _canonical(name), [v if isinstance(v, str) else str(v) if isinstance(v, int) else _number(v)
                                         for v in values])


def engine_overrides(engine: str | None, device: str | None) -> list:
    overrides = []
    if engine is not None:
        overrides.append(_flag("-engine", engine))
    if device is not None:
        overrides.append(_flag("-device", device))
    return overrides


# ---------------------------------------------------------------------------
# the whole plan
# ---------------------------------------------------------------------------

def _parse(tokens, where: str):
    from reference.cli import parse_args
    try:
        return parse_args(tokens)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def _noise_seed(streams, noisy: bool):
    return D.seed_from(streams["noise"]) if noisy else None


def _file_name(prefix: str, frame: int, count: int, fmt: str) -> str:
    digits = max(5, len(str(count)))
    name = f"{prefix}_{frame:0{digits}d}{EXTENSIONS[fmt]}"
    return os.path.join("frames", name) if fmt == "nexus" else name


def timestamp(index: int, exposure: float) -> str:
    """A made-up, reproducible acquisition time for a file header: 2000-01-01 plus index x exposure."""
    when = EPOCH + np.timedelta64(int(round(index * exposure * 1000)), "ms")
    return str(when)


def build(desc: Description, fmt: str, out: str, engine: str | None = None, device: str | None = None) -> Plan:
    """Every image of the dataset; raises InputError (one line) for an image nanobragg would refuse."""
    noisy = desc.detector_effects is not None
    extra = engine_overrides(engine, device)
    plan = Plan(desc, fmt, tokens_of(extra), [], noisy)
    if desc.kind == "rotation":
        index = 0
        for number, spec in enumerate(desc.sweeps):
            sweep = _rotation_sweep(desc, spec, number, index, fmt, extra, noisy, out)
            plan.sweeps.append(sweep)
            index += len(sweep.images)
    else:
        plan.sweeps.append(_stills_sweep(desc, fmt, extra, noisy, out))
    if noisy:
        for sweep in plan.sweeps:
            sweep.effects = sweep_effects(desc.detector_effects, sweep.geometry)
        plan.calibration_seed = calibration_seed(desc)
    return plan


def sweep_effects(table: dict, geometry: dict) -> dict:
    """The [detector_effects] settings for a sweep: the table, with the scene's pixel size
    (``pixel``, mm: it turns the PSF width into pixels) unless the table gives one."""
    effects = dict(table)
    effects.setdefault("pixel", geometry["pixel_size_m"] * 1e3)
    return effects


def calibration_seed(desc: Description) -> int:
    """The calibration map's seed: [detector_effects] calib_seed when given, else a draw of the dataset stream."""
    if "calib_seed" in desc.detector_effects:
        return int(desc.detector_effects["calib_seed"])
    return D.seed_from(D.dataset_stream(desc.seed))


def _sweep_geometry(tokens, where: str) -> tuple:
    """(geometry dict, scene) of a sweep, from the full reference set-up of its first image."""
    from tools.dataset.render import scene_for
    try:
        sc = scene_for(tokens)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return geometry(sc), sc


def geometry(sc) -> dict:
    """The lab-frame geometry of a scene, as truth.json and the NeXus writer record it."""
    from tools.dataset.render import resolved_roi
    deg = 180.0 / math.pi
    return {
        "fpixels": int(sc.fpixels), "spixels": int(sc.spixels),
        "pixel_size_m": float(sc.pixel_size),
        "distance_m": float(sc.distance), "close_distance_m": float(sc.close_distance),
        "beam_center_px": [float(sc.Fbeam / sc.pixel_size), float(sc.Sbeam / sc.pixel_size)],
        "beam_center_m": [float(sc.Fbeam), float(sc.Sbeam)],
        "fdet": list(sc.fdet), "sdet": list(sc.sdet), "odet": list(sc.odet),
        "pix0_m": list(sc.pix0), "beam": list(sc.beam), "spindle": list(sc.spindle),
        "polar_vector": list(sc.polar_vector), "twotheta_deg": float(sc.twotheta * deg),
        "thickness_m": float(sc.thick), "roi": list(resolved_roi(sc)),
        "convention": sc.convention,
        "lab_to_mcstas": lab_to_mcstas(sc.beam, sc.polar_vector).tolist(),
        "phisteps": int(sc.phisteps), "oversample": int(sc.oversample),
        "mosaic_domains": int(len(sc.mosaic_umats)), "sources": int(len(sc.sources)),
    }


def _image(index, sweep, frame, name, tokens, phi, osc, where, draws=None, noise_seed=None, spectrum=None):
    cfg = _parse(tokens, where)
    try:
        crystal = crystal_truth(cfg)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    exposure = cfg.exposure if cfg.exposure > 0 else 1.0
    return Image(index, sweep, frame, name, tokens, phi, osc, cfg.lambda0 * 1e10, exposure,
                 draws or {}, crystal, noise_seed, spectrum)


def _rotation_sweep(desc, spec, number, first_index, fmt, extra, noisy, out) -> Sweep:
    flags = merged(merged(desc.scene, spec.scene), extra)
    images = []
    for k in range(spec.images):
        phi = spec.start + k * spec.osc
        sweep_flags = [_flag("-phi", phi), _flag("-osc", spec.osc)]
        if spec.phisteps is not None:
            sweep_flags.append(_flag("-phisteps", spec.phisteps))
        tokens = tokens_of(flags + sweep_flags)
        index = first_index + k
        name = _file_name(spec.name, k + 1, spec.images, fmt)
        seed = _noise_seed(D.image_streams(desc.seed, index), noisy)
        draws = {"noise_seed": seed} if noisy else {}
        images.append(_image(index, number, k + 1, name, tokens, phi, spec.osc, f"image {name}", draws, seed))
    geo, sc = _sweep_geometry(images[0].tokens, f"sweep '{spec.name}'")
    from tools.dataset.formats import integer_scale
    return Sweep(spec.name, "rotation", images, geo, spec.start, spec.osc, geo["phisteps"],
                 f"{spec.name}_master.h5" if fmt == "nexus" else None, integer_scale(sc), sc.cfg.adc_offset, sc)


# ---------------------------------------------------------------------------
# stills: per-shot draws
# ---------------------------------------------------------------------------

def _scene_cell(flags) -> list:
    """The scene's -cell as six numbers (b, c default to a, angles to 90, as nanobragg reads it)."""
    values = next(f.values for f in flags if f.canonical == "-cell")
    numbers = [float(v) for v in values]
    a = numbers[0]
    full = numbers + [math.nan] * (6 - len(numbers))
    b = full[1] if len(numbers) > 1 and full[1] > 0 else a
    c = full[2] if len(numbers) > 2 and full[2] > 0 else a
    angles = [x if len(numbers) > 3 + j and x > 0 else 90.0 for j, x in enumerate(full[3:])]
    return [a, b, c] + angles


def _shot_flags(desc, base_flags, base_cfg, beam, streams, where, out, name) -> tuple:
    """The flags one shot adds (or replaces) and the draws behind them."""
    stills = desc.stills
    vary = stills.vary
    draws, overrides, replaces = {}, [], {}

    angles = misset_angles(uniform_rotation(streams["orientation"]))
    draws["misset_deg"] = list(angles)
    overrides.append(_flag("-misset", *angles))
    if not any(f.canonical == "-mosaic_seed" for f in base_flags):
        draws["mosaic_seed"] = D.seed_from(streams["mosaic_seed"])
        overrides.append(_flag("-mosaic_seed", str(draws["mosaic_seed"])))

    if "cell" in vary:
        v = vary["cell"]
        valid = lambda x: x > 0  # noqa: E731
        factors = [v.distribution.draw(streams["cell"], valid, f"{where} [stills.vary.cell]")
                   for _ in range(3 if v.independent else 1)]
        factors = factors * (1 if v.independent else 3)
        cell = _scene_cell(base_flags)
        draws["cell_factors"] = factors
        overrides.append(_flag("-cell", *[cell[j] * factors[j] for j in range(3)], *cell[3:]))
    if "crystal_size" in vary:
        v = vary["crystal_size"]
        valid = lambda x: x >= 0.5  # noqa: E731      (rounds to at least one cell)
        sizes = [int(round(v.distribution.draw(streams["crystal_size"], valid, f"{where} [stills.vary.crystal_size]")))
                 for _ in range(3 if v.independent else 1)]
        draws["N"] = sizes if v.independent else sizes[0]
        if v.independent:
            overrides += [_flag("-Na", str(sizes[0])), _flag("-Nb", str(sizes[1])), _flag("-Nc", str(sizes[2]))]
            replaces["-Na"] = ("-N", "-Na", "-Nb", "-Nc")
        else:
            overrides.append(_flag("-N", str(sizes[0])))
            replaces["-N"] = ("-N", "-Na", "-Nb", "-Nc")
    if "mosaic" in vary:
        value = vary["mosaic"].distribution.draw(streams["mosaic"], lambda x: x >= 0, f"{where} [stills.vary.mosaic]")
        draws["mosaic_deg"] = value
        overrides.append(_flag("-mosaic", value))
    wavelength = base_cfg.lambda0 * 1e10
    if "wavelength" in vary:
        wavelength = vary["wavelength"].distribution.draw(streams["wavelength"], lambda x: x > 0,
                                                          f"{where} [stills.vary.wavelength]")
        draws["wavelength_A"] = wavelength
        overrides.append(_flag("-lambda", wavelength))
        replaces["-lambda"] = VARIATIONS["wavelength"]["replaces"]
    if "fluence" in vary:
        value = vary["fluence"].distribution.draw(streams["fluence"], lambda x: x > 0, f"{where} [stills.vary.fluence]")
        draws["fluence"] = value
        overrides.append(_flag("-fluence", value))
    spectrum = None
    if stills.spectrum is not None:
        lambdas, weights = _spectrum(stills.spectrum, wavelength, streams["spectrum"])
        path = os.path.join(os.path.abspath(out), "spectra", os.path.splitext(os.path.basename(name))[0] + ".txt")
        text = "".join(f"{_number(-SOURCE_DISTANCE_M * beam[0])} {_number(-SOURCE_DISTANCE_M * beam[1])} "
                       f"{_number(-SOURCE_DISTANCE_M * beam[2])} {_number(w)} {_number(lam * 1e-10)}\n"
                       for lam, w in zip(lambdas, weights))
        draws["spectrum"] = {"file": os.path.relpath(path, os.path.abspath(out)),
                             "wavelengths_A": lambdas, "weights": weights}
        overrides.append(_flag("-sourcefile", path))
        spectrum = (path, text)
    return draws, overrides, replaces, spectrum


def _spectrum(spec, centre_A: float, rng) -> tuple:
    """Wavelengths (Angstrom) and weights of one shot's spectrum.

    ``lines`` wavelengths evenly spaced over +-2.5 rms widths of a Gaussian
    envelope of relative rms width ``bandwidth`` around the shot's central
    wavelength, weighted by the envelope; with ``sase`` each weight is also
    multiplied by an exponential draw (the intensity statistics of a SASE
    spike).  Weights sum to 1.
    """
    if spec.lines == 1:
        return [centre_A], [1.0]
    t = np.linspace(-2.5, 2.5, spec.lines)
    lambdas = centre_A * (1.0 + spec.bandwidth * t)
    weights = np.exp(-0.5 * t * t)
    if spec.sase:
        weights = weights * rng.exponential(1.0, spec.lines)
    weights = weights / weights.sum()
    return [float(x) for x in lambdas], [float(w) for w in weights]


def _stills_sweep(desc, fmt, extra, noisy, out) -> Sweep:
    stills = desc.stills
    base_flags = merged(desc.scene, extra)
    base_tokens = tokens_of(base_flags)
    base_cfg = _parse(base_tokens, "[scene]")
    beam = None
    if stills.spectrum is not None:
        # the direction sources sit in, from the scene's own set-up (its convention's beam vector)
        geo, _ = _sweep_geometry(base_tokens, "[scene]")
        beam = geo["beam"]
    images = []
    for index in range(stills.shots):
        name = _file_name(stills.name, index + 1, stills.shots, fmt)
        where = f"shot {name}"
        streams = D.image_streams(desc.seed, index)
        draws, overrides, replaces, spectrum = _shot_flags(desc, base_flags, base_cfg, beam, streams, where, out, name)
        tokens = tokens_of(merged(base_flags, overrides, replaces))
        seed = _noise_seed(streams, noisy)
        if noisy:
            draws["noise_seed"] = seed
        if spectrum is not None:
            write_spectrum(*spectrum)           # the tokens name it: it must exist before they are parsed
        images.append(_image(index, 0, index + 1, name, tokens, 0.0, 0.0, where, draws, seed, spectrum))
    geo, sc = _sweep_geometry(images[0].tokens, f"shot {images[0].name}")
    from tools.dataset.formats import integer_scale
    return Sweep(stills.name, "stills", images, geo, 0.0, 0.0, geo["phisteps"],
                 f"{stills.name}_master.h5" if fmt == "nexus" else None, integer_scale(sc), sc.cfg.adc_offset, sc)


def write_spectrum(path: str, text: str) -> None:
    """Write a shot's source file unless it already holds exactly this text (a rerun keeps its mtime)."""
    from tools.dataset.manifest import atomic_write
    try:
        with open(path, encoding="ascii") as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, text.encode("ascii"))


# ---------------------------------------------------------------------------
# truth.json and fingerprints
# ---------------------------------------------------------------------------

def stored_values(plan: Plan) -> str:
    fmt = plan.format
    if plan.noisy:
        return ("noisy: the ADU image of reference.noise.apply_detector_effects"
                + (" as float32" if fmt == "float" else ", as reference.noise.to_uint16 gives it"))
    return {"float": "noise-free: float32 photons per pixel, as nanobragg -floatfile writes them",
            "nexus": "noise-free: float32 photons per pixel",
            "smv": "noise-free: nanobragg -intfile integers, floor(photons x integer_scale + adc_offset + 0.5) "
                   "clipped to 0..65535",
            "cbf": "noise-free: floor(photons x integer_scale + adc_offset + 0.5), clipped to 0..2^31-1"}[fmt]


def image_fingerprint(plan: Plan, image: Image) -> str:
    from tools.dataset.manifest import fingerprint
    sweep = plan.sweeps[image.sweep]
    return fingerprint({"tokens": image.tokens, "format": plan.format, "effects": sweep.effects,
                        "calibration_seed": plan.calibration_seed, "noise_seed": image.noise_seed,
                        "seed": plan.description.seed, "spectrum": image.spectrum[1] if image.spectrum else None})


def master_fingerprint(plan: Plan, sweep: Sweep) -> str:
    from tools.dataset.manifest import fingerprint
    return fingerprint({"frames": [image_fingerprint(plan, image) for image in sweep.images], "master": 1})


def truth(plan: Plan, version: str) -> dict:
    from tools.dataset.manifest import fingerprint
    from tools.dataset.orientations import MCSTAS_TO_IMGCIF
    desc = plan.description
    sweeps, images = [], []
    for number, sweep in enumerate(plan.sweeps):
        M = np.asarray(sweep.geometry["lab_to_mcstas"])
        sweeps.append({
            "name": sweep.name, "kind": sweep.kind, "images": len(sweep.images),
            "first_index": sweep.images[0].index, "start_deg": sweep.start_deg, "osc_deg": sweep.osc_deg,
            "phisteps": sweep.phisteps, "master": sweep.master,
            "integer_scale": sweep.integer_scale, "adc_offset": sweep.adc_offset,
            "geometry": sweep.geometry, "lab_to_imgcif": (MCSTAS_TO_IMGCIF @ M).tolist(),
            "detector_effects": sweep.effects,
        })
        for k, image in enumerate(sweep.images):
            entry = {
                "index": image.index,
                "file": sweep.master if sweep.master else image.name,
                "sweep": number, "frame": image.frame,
                "nanobragg_args": image.tokens,
                "phi_start_deg": image.phi_deg, "osc_deg": image.osc_deg,
                "wavelength_A": image.wavelength_A,
                "cell": image.crystal["cell"],
                "orientation": {key: image.crystal[key] for key in ("a", "b", "c", "a_star", "b_star", "c_star", "A")},
                "misset_deg": image.crystal["misset_deg"],
                "draws": image.draws,
            }
            if sweep.master:
                entry["frame_in_file"] = k
            images.append(entry)
    return {
        "tool": "nanobragg-dataset", "version": version,
        "description": {"path": os.path.abspath(desc.path), "name": desc.name,
                        "sha256": __import__("hashlib").sha256(desc.text).hexdigest()},
        "seed": desc.seed, "kind": desc.kind, "format": plan.format,
        "engine_tokens": plan.engine_tokens,
        "noisy": plan.noisy, "stored": stored_values(plan),
        "detector_effects": desc.detector_effects,
        "calibration_seed": plan.calibration_seed,
        "frames": ("vectors are in nanoBragg's lab frame (metres, or Angstrom and 1/Angstrom for the crystal; "
                   "orientation at spindle angle 0); each sweep's lab_to_mcstas and lab_to_imgcif rotate them "
                   "into the NeXus and DIALS frames"),
        "sweeps": sweeps,
        "images": images,
        "plan_fingerprint": fingerprint([image_fingerprint(plan, image) for image in plan.images]),
    }
