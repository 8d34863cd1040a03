"""Render a plan on Dask: a local cluster of worker processes, or an existing cluster.

Each task renders one image (or one band of rows of a large image, summed
back by a last task) on a worker and returns the bytes of its file; this
process writes every file atomically, checks its checksum and records it in
the manifest.  Workers need the input files (HKL, matrix...) at the same
paths; the output folder is only written here, so it need not be shared.

Images already written and verified are skipped (see
:mod:`tools.dataset.manifest`).  A task that fails is retried
(``[execution] retries``, default 2); an image that still fails is reported
on one line and the others go on; the run then exits with status 1 and a
rerun renders only what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from reference.errors import InputError
from tools.dataset.manifest import PART, Manifest, atomic_write, remove_leftovers
from tools.dataset.plan import Plan, image_fingerprint, master_fingerprint
from tools.dataset.render import Job, finish_image, render_band, render_image, resolved_roi, row_bands

MEMORY_FRACTION = 0.8           # of a worker's memory limit that one task may plan to use


@dataclass
class Outcome:
    total: int = 0
    skipped: int = 0
    rendered: int = 0
    failed: list = field(default_factory=list)      # (name, message)
    seconds: float = 0.0


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------

def _probe(address: str) -> None:
    """Refuse at once a TCP scheduler address that nothing listens on (Dask would retry for its whole timeout)."""
    import socket
    from urllib.parse import urlsplit

    if not address.startswith("tcp://"):
        return
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise InputError(f"bad Dask scheduler address {address}: {exc}") from None
    if host is None or port is None:
        raise InputError(f"bad Dask scheduler address {address}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}") from None


class Cluster:
    """A Dask client: on a LocalCluster of ``workers`` processes bound to 127.0.0.1, or on ``scheduler``."""

    def __init__(self, workers: int | None, scheduler: str | None):
        self.workers = workers
        self.scheduler = scheduler
        self.cluster = None
        self.client = None

    def __enter__(self):
        from distributed import Client, LocalCluster

        for name in ("distributed", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if self.scheduler:
            _probe(self.scheduler)
            try:
                self.client = Client(self.scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
            return self
        # every socket on 127.0.0.1: the workers, the scheduler, and the scheduler's HTTP routes
        # (which would otherwise take port 8787 even without a dashboard)
        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None,
                                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                    silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False

    def threads_per_task(self) -> int | None:
        """Engine threads per task: the local machine's cores shared among the workers (None: their default)."""
        if self.cluster is None:
            return None
        return max(1, cpus() // max(1, self.workers))

    def smallest_memory(self) -> float:
        """The smallest memory limit among the workers (bytes; 0 when none is set)."""
        limits = [w.get("memory_limit") or 0 for w in self.client.scheduler_info().get("workers", {}).values()]
        limits = [x for x in limits if x > 0]
        return float(min(limits)) if limits else 0.0


# ---------------------------------------------------------------------------
# bands: one image over several tasks
# ---------------------------------------------------------------------------

def band_count(sweep, tile_pixels: int, memory_limit: float) -> int:
    """How many row bands each image of ``sweep`` is split into.

    ``tile_pixels`` (``[execution]``) caps the pixels of a band; otherwise an
    image is split only when the pre-flight estimate of its peak memory
    (reference.preflight.estimate, with the band as the region of interest)
    exceeds MEMORY_FRACTION of the smallest worker's memory limit.  Images
    rendered with -c_parity are never split: C's raster-order effects (quirks
    (a) and (l) of specs/quirks.md) depend on the whole image.
    """
    from reference import preflight

    sc = sweep.scene
    xmin, xmax, ymin, ymax = resolved_roi(sc)
    rows, width = ymax - ymin + 1, xmax - xmin + 1
    if sc.cfg.c_parity:
        return 1
    count = math.ceil(rows * width / tile_pixels) if tile_pixels else 1
    if memory_limit > 0:
        base = preflight.scene_counts(sc)

        def peak(n):
            pixels = math.ceil(rows / n) * width
            counts = replace(base, rendered=min(base.rendered, pixels), roi_pixels=pixels)
            return preflight.estimate(counts, sc.cfg, 1).peak_bytes

        budget = MEMORY_FRACTION * memory_limit
        while count < rows and peak(count) > budget:
            count = min(rows, count * 2)
        if peak(count) > budget:
            raise InputError(f"sweep '{sweep.name}': even one row at a time an image needs about "
                             f"{peak(count) / 1e9:.2f} GB, more than {budget / 1e9:.2f} GB "
                             f"({MEMORY_FRACTION:.0%} of a worker's memory limit)")
    return max(1, min(count, rows))


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def _pending(plan: Plan, manifest: Manifest) -> tuple:
    """(images to render, how many are done) after checking the files on disk against the manifest."""
    todo, done = [], 0
    for sweep in plan.sweeps:
        if sweep.master and manifest.master_done(sweep.master, master_fingerprint(plan, sweep)):
            done += len(sweep.images)
            continue
        for image in sweep.images:
            if manifest.done(image.name, image_fingerprint(plan, image)):
                done += 1
            else:
                todo.append((sweep, image))
    return todo, done


def _check_local_device(todo) -> None:
    """Refuse at once a local run on CUDA without a CUDA device (every image would fail alike)."""
    if any("-device" in image.tokens and image.tokens[image.tokens.index("-device") + 1:][:1] == ["cuda"]
           for _, image in todo):
        import torch
        if not torch.cuda.is_available():
            raise InputError("-device cuda: no CUDA device is available on this machine "
                             "(with --scheduler, the cluster's workers need one)")


def _calibrations(plan: Plan, client) -> dict:
    """Per sweep, the detector's per-pixel calibration map (fixed over the dataset), sent to every worker."""
    if not plan.noisy:
        return {}
    from reference.noise import DetectorEffects, calibration_map
    maps, sent = {}, {}
    for sweep in plan.sweeps:
        shape = (sweep.geometry["spixels"], sweep.geometry["fpixels"])
        effects = DetectorEffects.from_mapping(dict(sweep.effects))
        key = (shape, repr(sorted(sweep.effects.items())))
        if key not in sent:
            sent[key] = client.scatter(np.asarray(calibration_map(shape, effects, plan.calibration_seed)),
                                       broadcast=True)
        maps[id(sweep)] = sent[key]
    return maps


def _job(plan: Plan, sweep, image, threads, bands) -> Job:
    from tools.dataset.plan import timestamp
    return Job(image.index, image.name, list(image.tokens), plan.format, sweep.effects,
               image.noise_seed, threads, bands, resolved_roi(sweep.scene),
               {"timestamp": timestamp(image.index, image.exposure_s)})


def _message(exc) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    name = type(exc).__name__
    if name == "KilledWorker":
        return "its worker died every time it tried (out of memory?)"
    return f"{name}: {exc}"


def run(plan: Plan, out: str, workers: int | None, scheduler: str | None, progress: bool, log=print) -> Outcome:
    """Render what the output folder lacks; returns what was done."""
    started = time.perf_counter()
    manifest = Manifest.load(out)
    remove_leftovers(out)
    todo, done = _pending(plan, manifest)
    outcome = Outcome(total=len(plan.images), skipped=done)
    if plan.format == "nexus":
        os.makedirs(os.path.join(out, "frames"), exist_ok=True)
    if todo and scheduler is None:
        _check_local_device(todo)
    try:
        if todo:
            with Cluster(workers, scheduler) as cluster:
                _render(plan, out, todo, cluster, manifest, outcome, progress, log)
        if plan.format == "nexus":
            _assemble_masters(plan, out, manifest, log)
    finally:
        manifest.save()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _render(plan, out, todo, cluster, manifest, outcome, progress, log) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    client = cluster.client
    threads = cluster.threads_per_task()
    memory = cluster.smallest_memory()
    counts = {id(sweep): band_count(sweep, plan.description.tile_pixels, memory) for sweep in plan.sweeps}
    calibrations = _calibrations(plan, client)
    retries = plan.description.retries
    futures = {}
    for sweep, image in todo:
        n = counts[id(sweep)]
        bands = row_bands(resolved_roi(sweep.scene), sweep.geometry["fpixels"], n) if n > 1 else None
        job = _job(plan, sweep, image, threads, bands)
        calibration = calibrations.get(id(sweep))
        if bands:
            parts = [client.submit(render_band, job, band, retries=retries, pure=False) for band in bands]
            future = client.submit(finish_image, job, parts, calibration, retries=retries, pure=False)
        else:
            future = client.submit(render_image, job, calibration, retries=retries, pure=False)
        futures[future] = (sweep, image)

    bar = tqdm(total=outcome.total, initial=outcome.skipped, unit="image", desc="nanobragg-dataset",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for future in as_completed(futures):
            sweep, image = futures.pop(future)
            if future.status != "finished":
                message = _message(future.exception())
                outcome.failed.append((image.name, message))
                bar.write(f"nanobragg-dataset: error: {image.name}: {message}", file=sys.stderr)
            else:
                _store(plan, out, future.result(), image, manifest)
                outcome.rendered += 1
            future.release()
            bar.update(1)
    finally:
        bar.close()
        for future in futures:
            future.cancel()


def _store(plan, out, rendered, image, manifest) -> None:
    """Write one finished image atomically and record it, after checking the bytes that arrived."""
    import hashlib
    if hashlib.sha256(rendered.payload).hexdigest() != rendered.sha256:
        raise InputError(f"{image.name}: the image arrived corrupted from its worker (checksum mismatch)")
    atomic_write(os.path.join(out, image.name), rendered.payload)
    manifest.record(image.name, image_fingerprint(plan, image), rendered.sha256, len(rendered.payload))


def _assemble_masters(plan: Plan, out: str, manifest: Manifest, log) -> None:
    """Write the NeXus master of every sweep whose frames are all done, then drop the frames."""
    from tools.dataset import nexus
    from tools.dataset.formats import frame_dtype

    for sweep in plan.sweeps:
        fp = master_fingerprint(plan, sweep)
        if manifest.master_done(sweep.master, fp):
            continue
        prints = [image_fingerprint(plan, image) for image in sweep.images]
        if not all(manifest.done(image.name, p) for image, p in zip(sweep.images, prints)):
            continue                                   # some frames failed: a rerun finishes the sweep
        dtype = frame_dtype(plan.noisy)
        shape = (sweep.geometry["spixels"], sweep.geometry["fpixels"])
        frames = (np.fromfile(os.path.join(out, image.name), dtype=dtype).reshape(shape) for image in sweep.images)
        path = os.path.join(out, sweep.master)
        temporary = f"{path}{PART}{os.getpid()}"
        try:
            nexus.write_master(temporary, sweep.geometry, frames, dtype,
                               [image.phi_deg for image in sweep.images], sweep.osc_deg,
                               [image.wavelength_A for image in sweep.images],
                               sweep.images[0].exposure_s, plan.description.name)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        manifest.record_master(sweep.master, fp, prints)
        for image in sweep.images:                     # the master holds them now
            try:
                os.remove(os.path.join(out, image.name))
            except OSError:
                pass
            manifest.forget(image.name)
        manifest.save()
    frames = os.path.join(out, "frames")
    if os.path.isdir(frames) and not os.listdir(frames):
        os.rmdir(frames)

