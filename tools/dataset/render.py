"""Render one image (or one band of rows of it) in process, from its nanobragg tokens.

The front end and the engines are the ones the ``nanobragg`` command uses:
``reference.cli.parse_args`` turns the tokens into a Config,
``reference.scene.build_scene`` derives the scene, ``reference.preflight``
refuses what the command would refuse, and ``reference.run.render_float_image``
calls the engine the tokens name.  Nothing is written: the structure-factor
cache (Fdump) that the command writes next to its images is dropped.

These functions run on the Dask workers; they take and return plain,
picklable values.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np

# A name no folder holds: when the tokens give neither -hkl nor -dump, nanobragg would read
# an earlier run's Fdump.bin from its working folder; rendered alone in an empty folder
# (what truth.json promises) it finds none, so neither may the worker.
_NO_CACHE = os.path.join(os.sep, "nonexistent-nanobragg-dataset", "Fdump.bin")


def scene_for(tokens, roi=None):
    """The reference scene of ``tokens``, optionally restricted to ``roi`` = (xmin, xmax, ymin, ymax).

    Raises reference.errors.InputError for anything ``nanobragg`` would refuse.
    """
    from reference.cli import parse_args
    from reference.config import Config
    from reference.preflight import announce
    from reference.scene import build_scene
    from reference.structure_factors import skip_cache_write

    cfg = parse_args(list(tokens))
    cfg.progress = False
    if cfg.hkl_file is None and cfg.dump_file == Config().dump_file:
        cfg.dump_file = _NO_CACHE
    if roi is not None:
        cfg.roi = [int(v) for v in roi]
    cached = _structure_factor_cache(tokens, cfg)
    if cached is None:
        sc = build_scene(cfg, echo=False, stage=skip_cache_write)
    elif os.path.exists(cached):
        cfg.hkl_file, cfg.dump_file = None, cached
        sc = build_scene(cfg, echo=False, stage=skip_cache_write)
    else:
        sc = build_scene(cfg, echo=False, stage=_Keep(cached))
    announce(sc, None)                  # the memory and size checks of the command line
    return sc


# ---------------------------------------------------------------------------
# the structure factors of a worker process, read once
# ---------------------------------------------------------------------------
# Reading a reflection file (or computing amplitudes from a model) can take longer than
# rendering a small image.  The first image a worker renders keeps the grid it read as an
# Fdump file (the cache nanobragg itself writes, exact float64 values) in a folder of the
# worker's own; the worker's later images with the same structure-factor input read that
# instead, as a second nanobragg run in the same folder reads the first one's Fdump.bin.
# Not under -c_parity, whose Fdump reader emulates C's quirks.

# flags a dataset varies from image to image that cannot change the structure-factor grid
_PER_IMAGE = frozenset({"-phi", "-osc", "-phistep", "-phisteps", "-misset", "-mosaic_seed", "-mosaic",
                        "-mosaic_dom", "-fluence", "-N", "-Na", "-Nb", "-Nc", "-roi", "-engine", "-device",
                        "-dtype", "-memory_gb"})
_cache_folder = None


def _structure_factor_cache(tokens, cfg):
    """Where this process keeps the grid of ``cfg``'s structure-factor input, or None (no caching)."""
    import hashlib
    import json
    import tempfile

    from reference.flags import BY_NAME

    global _cache_folder
    if cfg.hkl_file is None or cfg.c_parity:
        return None
    try:
        info = os.stat(cfg.hkl_file)
    except OSError:
        return None                     # the set-up will say what is wrong with it
    groups = []
    for token in tokens:
        if token in BY_NAME or not groups:
            groups.append([BY_NAME[token].names[0] if token in BY_NAME else token])
        else:
            groups[-1].append(token)
    kept = [group for group in groups if group[0] not in _PER_IMAGE]
    key = hashlib.sha256(json.dumps([kept, os.path.realpath(cfg.hkl_file), info.st_size,
                                     info.st_mtime_ns]).encode()).hexdigest()
    if _cache_folder is None:
        _cache_folder = tempfile.mkdtemp(prefix="nanobragg-dataset-sf-")
        import atexit
        import shutil
        atexit.register(shutil.rmtree, _cache_folder, True)
    return os.path.join(_cache_folder, key + ".fdump")


class _Keep:
    """build_scene's ``stage`` that keeps the Fdump cache write, at the cache's own path."""

    def __init__(self, path):
        self.path = path

    def __call__(self, writer, path, *args, **kwargs):
        from reference.errors import InputError
        try:
            writer(self.path, *args)    # written under a temporary name and renamed (reference.fileio)
        except InputError:
            pass                        # no cache: the next image reads the input again


def render_float(sc) -> np.ndarray:
    """The float image (slow, fast) of a scene, in photons per pixel, refused when not finite."""
    from reference.run import check_finite, render_float_image

    image = render_float_image(sc, progress=False).image
    check_finite(sc, image)
    return np.asarray(image, dtype=np.float32)


def use_threads(threads, engine: str) -> None:
    """Let this task's engine use ``threads`` threads (None: leave the engine's default)."""
    if not threads:
        return
    if engine == "torch":
        import torch
        torch.set_num_threads(int(threads))
    else:
        import numba
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


# ---------------------------------------------------------------------------
# the work of one task
# ---------------------------------------------------------------------------

@dataclass
class Job:
    """What a worker needs to render and encode one image."""

    index: int                       # 0-based over the dataset
    name: str                        # file it becomes, relative to the output folder
    tokens: list                     # the image's nanobragg tokens
    format: str                      # smv, cbf, nexus, float
    effects: dict | None = None      # [detector_effects], or None: store the noise-free image
    noise_seed: int | None = None    # seed of the image's detector-effects draws
    threads: int | None = None       # engine threads per task (None: the engine's default)
    bands: list | None = None        # row bands (first, last) to render as separate tasks
    roi: tuple | None = None         # the image's own ROI (xmin, xmax, ymin, ymax), resolved
    header: dict | None = None       # per-image values of the file header (start angle...)


@dataclass
class Rendered:
    """A finished image: the bytes of its file and their checksum."""

    index: int
    name: str
    payload: bytes
    sha256: str
    seconds: float                   # rendering time on the worker


def _engine(tokens) -> str:
    return tokens[tokens.index("-engine") + 1] if "-engine" in tokens[:-1] else "numba"


def render_band(job: Job, band) -> tuple:
    """Rows ``band`` = (first, last) of the image: returns (band, rows array, seconds)."""
    started = time.perf_counter()
    use_threads(job.threads, _engine(job.tokens))
    xmin, xmax, ymin, ymax = job.roi
    first, last = band
    sc = scene_for(job.tokens, (xmin, xmax, max(ymin, first), min(ymax, last)))
    image = render_float(sc)
    return band, image[first:last + 1].copy(), time.perf_counter() - started


def finish_image(job: Job, parts, calibration=None) -> Rendered:
    """Sum the bands back into one image (each band is zero outside its rows), then encode it."""
    sc = scene_for(job.tokens)
    image = np.zeros((sc.spixels, sc.fpixels), dtype=np.float32)
    seconds = 0.0
    for (first, last), rows, spent in parts:
        image[first:last + 1] += rows
        seconds += spent
    return _encode(job, sc, image, calibration, seconds)


def render_image(job: Job, calibration=None) -> Rendered:
    """Render the whole image in one task and encode it."""
    started = time.perf_counter()
    use_threads(job.threads, _engine(job.tokens))
    sc = scene_for(job.tokens)
    image = render_float(sc)
    return _encode(job, sc, image, calibration, time.perf_counter() - started)


def _encode(job: Job, sc, image, calibration, seconds) -> Rendered:
    from tools.dataset import formats

    noisy = None
    if job.effects is not None:
        from reference.noise import DetectorEffects, apply_detector_effects
        effects = DetectorEffects.from_mapping(dict(job.effects))
        noisy = apply_detector_effects(image, effects, job.noise_seed, calibration=calibration)
    payload = formats.encode(job.format, sc, image, noisy, job.name, job.header or {})
    return Rendered(job.index, job.name, payload, hashlib.sha256(payload).hexdigest(), seconds)


# ---------------------------------------------------------------------------
# splitting an image into bands
# ---------------------------------------------------------------------------

def row_bands(roi, fpixels: int, count: int) -> list:
    """``count`` bands of consecutive rows covering the ROI's rows, as (first, last) pairs."""
    xmin, xmax, ymin, ymax = roi
    rows = np.arange(ymin, ymax + 1)
    count = max(1, min(count, rows.size))
    return [(int(part[0]), int(part[-1])) for part in np.array_split(rows, count) if part.size]


def resolved_roi(sc) -> tuple:
    """The ROI the render covers, clipped to the detector: (xmin, xmax, ymin, ymax), inclusive."""
    xmin, xmax, ymin, ymax = sc.roi
    return (max(0, int(xmin)), min(int(xmax), sc.fpixels - 1), max(0, int(ymin)), min(int(ymax), sc.spixels - 1))
