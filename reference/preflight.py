"""Pre-flight: check a run's request and say what it will cost, before any work is done.

The set-up (:func:`reference.scene.build_scene`) calls this module twice and the
command line once more, always before anything is rendered or written:

1. :func:`check_frame`, as soon as the detector's axes are known and before the
   placement arithmetic uses them: a zero or flat detector frame;
2. :func:`check_plan`, once every count of the run is known and before anything
   that grows with a count (the structure-factor file, one printed line per phi
   step, per sensor layer, per divergence point and per wavelength, the mosaic
   domains, the orientation tables): physically meaningless requests, the
   ceilings on counts and sizes, and the memory the run will need;
3. :func:`announce`, from :func:`reference.run.run` once the scene is built:
   the cost estimate, printed with the run's summary, and the final memory check.

**Modes.**  Where the C program silently accepts nonsense (a zero spindle axis, a
negative distance or fluence, a region of interest off the detector...), spec
mode refuses the run with one ``nanobragg: error:`` line saying why, and
``-c_parity`` does what C does after one ``nanobragg: warning:`` line.  The
ceilings and the memory check apply in both modes: no C behaviour is lost by
refusing a run that would take years or more memory than the machine has.

**Estimate.**  ``evaluations = rendered pixels x sub-pixels^2 x sensor layers x
sources x phi steps x mosaic domains``; peak memory and wall time follow from
per-engine constants in :data:`COSTS`, measured on this project's 2-core
machine by ``python -m tools.calibrate_estimate`` (which prints a new table to
paste here).  ``python -m tools.estimate_check`` compares the estimate with the
measured time and peak memory of the README's benchmark workloads.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from dataclasses import dataclass, field

import numpy as np

from reference.errors import InputError

# ---------------------------------------------------------------------------
# ceilings (both modes)
# ---------------------------------------------------------------------------

MAX_STEPS = 100_000            # phi steps, mosaic domains, sensor layers, sources (and each of
                               # -dispsteps, -hdivsteps, -vdivsteps): each costs set-up work and a
                               # printed line; real experiments use tens to thousands
MAX_ORIENTATIONS = 1_000_000   # phi steps x mosaic domains: the crystal-orientation tables
MAX_OVERSAMPLE = 1000          # sub-pixels per pixel edge: a 0.1 mm pixel cut into 0.1 um pieces
MAX_EVALUATIONS = 1e14         # about 4 months on 2 cores; weeks on a large GPU
MAX_INPUT_BYTES = 4 * 2**30    # an input file (HKL, Fdump, matrix, sources, SMV); real ones are MBs
MIN_CELL_EDGE_A = 1.0          # no crystal has a unit-cell edge below 1 Angstrom
LONG_RUN_S = 60.0              # a run expected to take longer says so on stderr too

# ---------------------------------------------------------------------------
# per-engine costs
# ---------------------------------------------------------------------------
# Measured on this project's 2-core machine (x86-64, Python 3.11) by
#
#     python -m tools.calibrate_estimate
#
# which times in-process renders of scenes that vary one count at a time (CPU
# seconds of one thread, so that a busy machine disturbs them little), whole
# runs for the fixed start-up cost and the output stage (CPU seconds of one
# thread), the speed-up of a second thread (wall time: on an idle machine only),
# and the peak resident set (wait4, as /usr/bin/time -v reports it) of large
# cheap detectors for the bytes per pixel; it prints this table.  Last measured
# at load average 0.4-1.1 (idle); `parallel` from a 16.8e6-evaluation scene.
#
#   start_s         seconds of a tiny whole run (interpreter, imports, caches)
#   base_mb         its peak resident set (MB)
#   pixel_s         CPU seconds per rendered pixel (set-up of a pixel)
#   subpixel_s      CPU seconds per sub-pixel and sensor layer (position, solid angle...)
#   eval_s          CPU seconds per evaluation (one source, phi step and domain)
#   interp_x        evaluation cost multiplier with tricubic interpolation of F
#   parallel        speed-up per extra thread (1 = perfect)
#   output_s        seconds per detector pixel after the render (statistics, int image,
#                   writing the float and int images)
#   extras_s        more of them when the PGM or the noise image is written
#   out_bytes       peak bytes per detector pixel after the render (image, masks, temporaries)
#   roi_bytes       further peak bytes per pixel inside the ROI (statistics over it)
#   work_fraction   torch: resident bytes of a chunk / the chunk's budget (400 or 2400 B
#                   per evaluation, torchsim.engine)
COSTS = {
    # numba: re-measured after the spec-mode Chebyshev lattice factor and the inlined pixel
    # function (load average 1.2); `parallel` kept from the idle measurement before, since
    # another process held one core this time.  -c_parity runs keep C's sines: on workloads
    # (a) and (b) they took 1.3x and 1.7x the spec-mode time this predicts (tools.benchmark,
    # tools.estimate_check)
    "numba": dict(start_s=0.38, base_mb=154, pixel_s=1.2e-08, subpixel_s=2.2e-08, eval_s=3.6e-08,
                  interp_x=3.6, parallel=0.94, output_s=3.1e-08, extras_s=7e-08, out_bytes=21.1,
                  roi_bytes=27.0, work_fraction=0.0),
    # torch: re-measured after the faster forward pass and without Numba at start-up (load 1.3)
    "torch-float32": dict(start_s=0.77, base_mb=250, pixel_s=1.9e-08, subpixel_s=3.4e-08, eval_s=1.6e-08,
                          interp_x=4.8, parallel=0.54, output_s=4.6e-08, extras_s=8.8e-08, out_bytes=27.0,
                          roi_bytes=22.2, work_fraction=0.36),
    "torch-float64": dict(start_s=0.85, base_mb=249, pixel_s=1.3e-08, subpixel_s=3.2e-08, eval_s=5.8e-08,
                          interp_x=2.6, parallel=0.73, output_s=5.1e-08, extras_s=9.8e-08, out_bytes=27.0,
                          roi_bytes=10.4, work_fraction=0.6),
}
# A torch run that draws random numbers (mosaic domains, random misset, noise) loads Numba
# for the C generators: the light workload of tools.benchmark with -engine torch took
# 1.25 s when every run loaded it and 1.01 s without (medians of 5 whole runs).
TORCH_DRAWS_S = 0.24

# bytes per table entry, from the code: the structure-factor grid (float64 values and a
# bool "given" mask, another mask and the Fdump bytes while it is read), an
# HKL text file while it is parsed (bytes, text, tokens, arrays), a (phi, domain)
# orientation (two 3x3 float64 tables and a rotation matrix, with Python
# temporaries), a source, a printed summary line
HKL_GRID_BYTES = 8.0
HKL_GRID_LOAD_BYTES = 18.0
HKL_TEXT_BYTES = 30.0
HKL_TEXT_S = 5e-8
ORIENTATION_BYTES = 250.0
SOURCE_BYTES = 300.0
LINE_BYTES = 100.0


# ---------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------

def read_input(path) -> bytes:
    """The whole content of an input file, or an InputError naming it.

    Only regular files are read, at most :data:`MAX_INPUT_BYTES`: a FIFO, a
    device (``/dev/zero``), a socket or a folder is refused before a byte is
    read.  The file is opened without blocking and checked on the open
    descriptor, so a FIFO cannot hold the run (nor be swapped in between).
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    _check_input_kind(name, info)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        _check_input_kind(name, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{name} grew past {_size(MAX_INPUT_BYTES)} while it was read; input files "
                         f"are read whole, up to {_size(MAX_INPUT_BYTES)}")
    return data


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _check_input_kind(name, info) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((what for test, what in _KINDS if test(info.st_mode)), "not a regular file")
        raise InputError(f"cannot read {name}: it is {kind}, not a regular file (input files are "
                         f"read whole, so only regular files are accepted)")
    if info.st_size > MAX_INPUT_BYTES:
        raise InputError(f"{name} is {_size(info.st_size)}, larger than the {_size(MAX_INPUT_BYTES)} an "
                         f"input file may be (HKL, Fdump, matrix, source and SMV files are read whole)")


# ---------------------------------------------------------------------------
# spec mode refuses, -c_parity warns
# ---------------------------------------------------------------------------

def _nonsense(cfg, problem: str, c_does: str, fix: str = "") -> None:
    """Refuse ``problem`` (spec mode), or warn once and go on as C does (-c_parity)."""
    if cfg.c_parity:
        from reference.errors import warn
        warn(f"{problem}; the C program {c_does} and so does -c_parity", topic="preflight: " + problem)
        return
    raise InputError(f"{problem}; the C program {c_does}, spec mode refuses it" + (f": {fix}" if fix else ""))


def _norm(v) -> float:
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def _cross(x, y):
    return (x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0])


def _dot(x, y) -> float:
    return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]


PARALLEL_SIN = 1e-6            # two unit vectors closer than this (sine of their angle) are parallel


def check_frame(cfg, fdet, sdet, odet) -> None:
    """The detector's unit axes (after the convention) span a frame.

    C accepts ``-fdet_vector 0 0 1 -sdet_vector 0 0 1`` (every pixel of a row on
    one line) or an ``-odet_vector`` lying in the detector plane (its distance
    and solid angles become nonsense: the image is 0 or negative).
    """
    for name, v in (("-fdet_vector", fdet), ("-sdet_vector", sdet)):
        if not all(math.isfinite(x) for x in v):
            raise InputError(f"{name} is not finite")
    normal = _cross(fdet, sdet)
    if _norm(fdet) > 0 and _norm(sdet) > 0 and _norm(normal) < PARALLEL_SIN:
        _nonsense(cfg, "-fdet_vector and -sdet_vector are parallel: the detector has no area",
                  "renders a detector whose rows are lines", "give two perpendicular axes")
    elif _norm(odet) > 0 and abs(_dot(odet, normal)) < PARALLEL_SIN * _norm(normal):
        _nonsense(cfg, "-odet_vector lies in the detector plane spanned by -fdet_vector and -sdet_vector",
                  "measures the detector distance along it (a zero or negative image)",
                  "give the detector normal, pointing away from the sample")


# ---------------------------------------------------------------------------
# counts, ceilings and the estimate
# ---------------------------------------------------------------------------

@dataclass
class Counts:
    """What a run's cost grows with."""

    fpixels: int
    spixels: int
    rendered: int              # pixels the loop renders: in the ROI, mask non-zero
    roi_pixels: int            # pixels in the ROI (statistics, noise)
    oversample: int
    thicksteps: int
    sources: int
    phisteps: int
    domains: int
    interpolate: bool = False
    hkl_entries: int = 0       # structure-factor grid entries (0: none, or not read yet)
    hkl_bytes: int = 0         # size of the -hkl file (0: none)
    lines: int = 0             # summary lines printed (and kept)

    @property
    def pixels(self) -> int:
        return self.fpixels * self.spixels

    @property
    def per_pixel(self) -> int:
        return self.oversample ** 2 * self.thicksteps * self.sources * self.phisteps * self.domains

    @property
    def evaluations(self) -> int:
        return self.rendered * self.per_pixel

    @property
    def subpixels(self) -> int:
        return self.rendered * self.oversample ** 2 * self.thicksteps


@dataclass
class Estimate:
    counts: Counts
    engine_label: str          # "-engine numba", "-engine torch -dtype float32", ...
    threads: int
    seconds: float | None      # None: not calibrated (CUDA)
    peak_bytes: float          # host resident set
    engine_bytes: float        # torch: the least working memory it can run in (one-pixel chunks
                               # and its per-pixel arrays), for -memory_gb; 0 for numba
    parts: list = field(default_factory=list)     # (bytes, what, flags) of the peak, largest first
    busy: int = 0              # other processes ready to run when the run started (the time is an idle machine's)

    def lines(self) -> list[str]:
        c = self.counts
        first = ("estimate: %s evaluations = %d pixel%s x %d sub-pixel%s x %d layer%s x %d source%s x "
                 "%d phi step%s x %d mosaic domain%s"
                 % (_count(c.evaluations), c.rendered, _s(c.rendered), c.oversample ** 2, _s(c.oversample),
                    c.thicksteps, _s(c.thicksteps),
                    c.sources, _s(c.sources), c.phisteps, _s(c.phisteps), c.domains, _s(c.domains)))
        when = ("time not estimated (no calibration for this device)" if self.seconds is None
                else f"about {_duration(self.seconds)}")
        second = (f"estimate: peak memory {_size(self.peak_bytes)}, {when} with {self.engine_label} "
                  f"({self.threads} thread{_s(self.threads)})")
        if self.seconds is not None and self.busy >= _cpus():
            # how much slower depends on the scheduler's groups and the others' threads: measured on
            # this machine, 10 runnable others made a run 2.1x slower, where fair sharing says 6x
            second += (f" on an idle machine; {self.busy} other processes are running now: expect it to "
                       f"take longer")
        return [first, second]


def _s(n) -> str:
    return "" if n == 1 else "s"


def _count(n) -> str:
    return "%d" % n if n < 1e6 else "%.3g" % n


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return ("%.1f %s" if value < 10 else "%.0f %s") % (value, unit)
    return "%d bytes" % nbytes


def _duration(seconds: float) -> str:
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            value = seconds / scale
            return ("%.1f %s" if value < 10 else "%.0f %s") % (value, unit)
    return "%.1f s" % seconds if seconds < 10 else "%.0f s" % seconds


def engine_key(cfg) -> str:
    return "numba" if cfg.engine != "torch" else f"torch-{cfg.dtype}"


def engine_label(cfg) -> str:
    if cfg.engine != "torch":
        return "-engine numba"
    label = f"-engine torch -dtype {cfg.dtype}"
    return label + " -device cuda" if cfg.device == "cuda" else label


def threads_for(cfg, import_torch: bool = False) -> int:
    """Threads the engine will use: Numba's pool, or torch's intra-op threads."""
    if cfg.engine == "torch":
        if import_torch or "torch" in sys.modules:
            sleep_when_idle_if_busy()
            try:
                import torch
                return max(1, torch.get_num_threads())
            except ImportError:
                pass
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            return int(env)
        return _cpus()
    if "numba" in sys.modules:
        import numba
        return max(1, int(numba.config.NUMBA_NUM_THREADS))
    env = os.environ.get("NUMBA_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def sleep_when_idle_if_busy() -> None:
    """Before torch is first imported: when another process is ready to run, let torch's OpenMP
    threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning on a core
    the other process needs.

    Measured on this 2-core machine with ``python -m tools.benchmark --engines c,torch
    --workload b [--busy 1]`` (torch float32, two threads): one core busy, 5.1 s spinning and
    3.7 s sleeping; idle, spinning is the faster (2.8 s against 3.2 s), so the policy changes
    only when the machine is busy.  OpenMP reads the variable when torch loads it; a user's own setting is kept.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    if competing_processes() >= 1:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


BYTES_PER_EVAL = 400           # torchsim.engine's chunk budget per evaluation (kept equal there)
BYTES_PER_EVAL_INTERP = 2400


def competing_processes() -> int:
    """Other processes ready to run on this machine now (Linux: runnable count of /proc/loadavg,
    less this one); 0 where unknown.  A snapshot, not the load average: the average still
    counts the previous run of a script that runs one simulation after another."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, runnable - _own_runnable_threads())


def _own_runnable_threads() -> int:
    """This process's threads ready to run now (at least 1: the one asking)."""
    count = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            count += state == "R"
    except OSError:
        pass
    return max(1, count)


def estimate(counts: Counts, cfg, threads: int | None = None, busy: int = 0) -> Estimate:
    """Time and peak memory of a run with these counts, on the engine ``cfg`` names.

    The time is an idle machine's.  ``busy`` (other processes ready to run,
    :func:`competing_processes`) only adds a warning to the printout: how
    much a busy machine slows a run depends on the scheduler's groups and the
    other programs' threads, which a snapshot cannot tell.
    """
    key = engine_key(cfg)
    k = COSTS[key]
    if threads is None:
        threads = threads_for(cfg)
    c = counts
    N, R, Q = c.pixels, c.rendered, c.roi_pixels
    parts = []

    # --- host memory ---
    base = k["base_mb"] * 1e6
    parts.append((base, "the interpreter and its libraries", ""))
    output = k["out_bytes"] * N + k["roi_bytes"] * Q
    tables = (HKL_GRID_BYTES * c.hkl_entries + ORIENTATION_BYTES * c.phisteps * c.domains
              + SOURCE_BYTES * c.sources + LINE_BYTES * c.lines)
    loading = max(HKL_GRID_LOAD_BYTES * c.hkl_entries, HKL_TEXT_BYTES * c.hkl_bytes)
    engine_bytes = 0.0
    if cfg.engine == "torch":
        itemsize = 4 if cfg.dtype == "float32" else 8
        tables += itemsize * c.hkl_entries                       # the grid as a tensor
        per_eval = BYTES_PER_EVAL_INTERP if c.interpolate else BYTES_PER_EVAL
        budget = cfg.memory_gb * 1e9
        if cfg.device != "cuda":
            budget = min(budget, 256e6)                          # torchsim.engine.CPU_CHUNK_BYTES
        chunk = max(1, int(budget // max(1, c.per_pixel * per_eval)))
        chunk = min(chunk, max(R, 1))
        work = chunk * c.per_pixel * per_eval * k["work_fraction"]
        one_pixel = c.per_pixel * per_eval * k["work_fraction"]
        arrays = 12.0 * N + 8.0 * R + (24.0 * N if c.interpolate else 0.0)   # image, first-failure table, pixel list
        render = arrays + (0.0 if cfg.device == "cuda" else work)
        retained = 0.0 if cfg.device == "cuda" else work          # freed chunks stay with the allocator
        stage = max(render, output + retained, loading)
        engine_bytes = one_pixel + (0.0 if cfg.device == "cuda" else arrays)   # on CUDA: device memory
    else:
        render = 4.0 * N + (8.0 * N if c.interpolate else 0.0)
        stage = max(render, output, loading)
    peak = base + tables + stage
    if stage == loading and loading > 0:
        parts.append((loading, "reading the structure factors", "-hkl"))
    else:
        parts.append((k["out_bytes"] * N, "%d detector pixels x %.0f bytes (images, masks, temporaries)"
                      % (N, k["out_bytes"]), "-detpixels/-detsize/-pixel, or the -img/-mask header"))
        if Q:
            parts.append((k["roi_bytes"] * Q, "%d pixels in the ROI x %.0f bytes (statistics)" % (Q, k["roi_bytes"]),
                          "-detpixels/-detsize/-pixel and -roi"))
        if cfg.engine == "torch" and cfg.device != "cuda":
            parts.append((work, "torch working memory (chunks)",
                          "-memory_gb, and per pixel -oversample, sources, -phisteps, -mosaic_dom, layers"))
    if c.hkl_entries:
        parts.append((HKL_GRID_BYTES * c.hkl_entries, "%d structure-factor grid entries" % c.hkl_entries,
                      "the h, k, l range of -hkl"))
    if c.phisteps * c.domains > 1000:
        parts.append((ORIENTATION_BYTES * c.phisteps * c.domains, "%d crystal orientations" % (c.phisteps * c.domains),
                      "-phisteps x -mosaic_dom"))
    parts.sort(key=lambda p: -p[0])

    # --- time ---
    seconds = None
    if cfg.device != "cuda":
        interp = k["interp_x"] if c.interpolate else 1.0
        cpu = R * k["pixel_s"] + c.subpixels * k["subpixel_s"] + c.evaluations * k["eval_s"] * interp
        speedup = 1.0 + k["parallel"] * (min(threads, _cpus()) - 1)
        extras = k["extras_s"] if (cfg.write_pgm or cfg.calculate_noise) else 0.0
        seconds = (k["start_s"] + cpu / speedup + N * (k["output_s"] + extras) + HKL_TEXT_S * c.hkl_bytes
                   + 2e-6 * (c.lines + c.phisteps * c.domains + c.sources))
        if cfg.engine == "torch" and (c.domains > 1 or cfg.misset_random or cfg.calculate_noise):
            seconds += TORCH_DRAWS_S      # the C generators load Numba (reference.rng)
    return Estimate(counts, engine_label(cfg), threads, seconds, peak, engine_bytes, parts, busy)


# ---------------------------------------------------------------------------
# memory available
# ---------------------------------------------------------------------------

def _meminfo(key: str) -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_number(path) -> float | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return float(text) if text.isdigit() else None


def _own_memory() -> tuple[float, float]:
    """(resident, virtual) bytes of this process now."""
    try:
        with open("/proc/self/statm") as handle:
            size, resident = (int(x) for x in handle.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        return resident * page, size * page
    except (OSError, ValueError, AttributeError):
        return 0.0, 0.0


def available_memory() -> tuple[float, str]:
    """(bytes this process may still grow to, where the figure comes from).

    The resident set may reach what it holds now plus MemAvailable
    (/proc/meminfo; without it, the physical pages of os.sysconf), and no more
    than a cgroup limit (memory.max) or an address-space limit (ulimit -v)
    allows.
    """
    resident, virtual = _own_memory()
    free = _meminfo("MemAvailable")
    where = "available (MemAvailable)"
    if free is None:
        try:
            free = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            where = "free (physical pages)"
        except (ValueError, OSError, AttributeError):
            free, where = math.inf, "unknown"
    limit = resident + free
    cg_max = _read_number("/sys/fs/cgroup/memory.max")
    cg_now = _read_number("/sys/fs/cgroup/memory.current")
    if cg_max is not None and cg_now is not None and resident + cg_max - cg_now < limit:
        limit, where = resident + cg_max - cg_now, "left under the cgroup limit (memory.max)"
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and resident + soft - virtual < limit:
            limit, where = resident + max(soft - virtual, 0.0), "left under the address-space limit (ulimit -v)"
    except (ImportError, ValueError, OSError):
        pass
    return limit, where


def _check_memory(est: Estimate, cfg) -> None:
    limit, where = available_memory()
    drivers = "; ".join(f"{_size(b)} for {what}" + (f" ({flags})" if flags else "")
                        for b, what, flags in est.parts[:3] if b >= 0.05 * est.peak_bytes)
    if est.peak_bytes > limit:
        raise InputError(f"this run would need about {_size(est.peak_bytes)} of memory, but only "
                         f"{_size(limit)} is {where}: {drivers}")
    if cfg.engine == "torch" and est.engine_bytes > cfg.memory_gb * 1e9:
        c = est.counts
        arrays = 0.0 if cfg.device == "cuda" else 12.0 * c.pixels + 8.0 * c.rendered
        raise InputError(f"the torch engine would need at least {_size(est.engine_bytes)}, more than "
                         f"-memory_gb {cfg.memory_gb:g} allows: "
                         + (f"{_size(arrays)} for {c.pixels} detector pixels (-detpixels/-detsize/-pixel) and "
                            if arrays else "")
                         + f"{_size(est.engine_bytes - arrays)} for one pixel's {c.per_pixel} evaluations "
                         f"(-oversample, sources, -phisteps, -mosaic_dom, layers); raise -memory_gb or reduce them")


def _check_evaluations(est: Estimate, drivers: str) -> None:
    if est.counts.evaluations > MAX_EVALUATIONS:
        when = "" if est.seconds is None else f", about {_duration(est.seconds)} with {est.engine_label}"
        raise InputError(f"this run would need {_count(est.counts.evaluations)} evaluations{when}: more than "
                         f"the ceiling of {MAX_EVALUATIONS:.0e}; {drivers}")


# ---------------------------------------------------------------------------
# the plan: every count known, nothing big done yet
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    """What :func:`reference.scene.build_scene` knows before its costly steps."""

    fpixels: int
    spixels: int
    roi: tuple                 # xmin xmax ymin ymax, defaults applied
    oversample: int
    oversample_auto: bool
    oversample_needed: float   # C's recommendation (3 x crystal size / reciprocal pixel size)
    crystal_m: tuple           # crystal size along a, b, c (m)
    N: tuple                   # Na, Nb, Nc
    cell_A: tuple              # |a|, |b|, |c| (Angstrom)
    thicksteps: int
    phisteps: int
    hdivsteps: int
    vdivsteps: int
    dispsteps: int
    domains: int
    beam: tuple
    polar: tuple
    spindle: tuple
    twotheta_axis: tuple
    twotheta: float
    close_distance: float      # m, after placement
    fluence: float
    interpolate: bool          # tricubic interpolation of a structure-factor table


def pixel_counts(fpixels, spixels, roi, mask) -> tuple[int, int]:
    """(pixels rendered, pixels in the ROI) without building a detector-sized array."""
    xmin, xmax, ymin, ymax = roi
    x0, x1 = max(xmin, 0), min(xmax, fpixels - 1)
    y0, y1 = max(ymin, 0), min(ymax, spixels - 1)
    if x1 < x0 or y1 < y0:
        return 0, 0
    in_roi = (x1 - x0 + 1) * (y1 - y0 + 1)
    if mask is None:
        return in_roi, in_roi
    return int(np.count_nonzero(mask[y0:y1 + 1, x0:x1 + 1])), in_roi


def source_bound(cfg, plan: Plan) -> int:
    """Sources the run will have (a grid's ellipse trim can only lower the generated count)."""
    if cfg.source_file is not None:
        from reference.fileio import read_source_file
        return max(1, len(read_source_file(cfg.source_file, c_parity=cfg.c_parity)))
    return plan.hdivsteps * plan.vdivsteps * plan.dispsteps


def _ceiling(value, what: str, flags: str, limit=MAX_STEPS) -> None:
    if value > limit:
        raise InputError(f"{what} is {_count(value)}: more than the ceiling of {_count(limit)}; {flags}")


def check_requested_counts(cfg) -> None:
    """Step counts as typed: a ceiling whether or not the auto-selection keeps them."""
    for flag, value in (("-phisteps", cfg.phisteps), ("-mosaic_dom", cfg.mosaic_domains),
                        ("-dispsteps", cfg.dispsteps), ("-hdivsteps", cfg.hdivsteps),
                        ("-vdivsteps", cfg.vdivsteps), ("-detector_thicksteps", cfg.detector_thicksteps)):
        if value > MAX_STEPS:
            raise InputError(f"{flag} {value} is more than the ceiling of {_count(MAX_STEPS)} steps")
    if cfg.oversample > MAX_OVERSAMPLE:
        raise InputError(f"-oversample {cfg.oversample} is more than the ceiling of {MAX_OVERSAMPLE} "
                         f"sub-pixels per pixel edge")


def check_plan(cfg, plan: Plan, echo: bool = True) -> Estimate:
    """Meaningless requests, ceilings and memory, before the set-up's costly steps.

    Returns the early estimate (structure-factor grid not read yet; sources at
    most the full divergence grid).
    """
    # ---- what C accepts silently ----
    for name, v in (("-polar_vector", plan.polar), ("-spindle_axis", plan.spindle),
                    ("-twotheta_axis", plan.twotheta_axis)):
        if _norm(v) == 0.0:
            c_does = {"-polar_vector": "computes polarization against it as if it lay along the beam",
                      "-spindle_axis": "rotates about it by shrinking the cell (by cos phi)",
                      "-twotheta_axis": "swings the detector about it, which does nothing"}[name]
            _nonsense(cfg, f"{name} has zero length", c_does, "give a direction")
    polarized = not cfg.nopolar and cfg.polarization != 0.0
    divergent = cfg.source_file is None and (plan.hdivsteps > 1 or plan.vdivsteps > 1)
    if (_norm(plan.polar) > 0.0 and (polarized or divergent)
            and _norm(_cross(plan.polar, plan.beam)) < PARALLEL_SIN * _norm(plan.polar)):
        _nonsense(cfg, "-polar_vector lies along the beam: the polarization plane is undefined",
                  "gives the polarization factor of a zero E-vector" + (" and loses the horizontal divergence"
                                                                         if divergent else ""),
                  "give the E-vector direction, perpendicular to the beam")
    if cfg.distance < 0.0 and math.isnan(cfg.close_distance):
        _nonsense(cfg, "-distance %g mm is negative" % (cfg.distance * 1000.0),
                  "uses its absolute value", "give the distance as a positive number (the detector "
                  "is placed along the beam; -twotheta or the detector vectors turn it)")
    elif plan.close_distance < 0.0:
        _nonsense(cfg, "the detector faces away from the sample (its near-point distance is %g mm)"
                  % (plan.close_distance * 1000.0),
                  "renders negative solid angles, so negative photons",
                  "check -close_distance, -odet_vector, -pix0_vector and the detector rotations")
    if plan.fluence < 0.0:
        _nonsense(cfg, "the fluence %g photons/m^2 is negative" % plan.fluence, "renders negative photons",
                  "check -fluence, or -flux and -exposure")
    if cfg.water_size < 0.0:
        _nonsense(cfg, "-water %g um is negative" % (cfg.water_size * 1e6),
                  "adds a negative background (its size is cubed)", "give a positive thickness or leave it out")
    if min(plan.cell_A) < MIN_CELL_EDGE_A:
        _nonsense(cfg, "the unit cell edge %g A is below %g A, shorter than any crystal's"
                  % (min(plan.cell_A), MIN_CELL_EDGE_A),
                  "renders it (no Bragg reflection fits: a flat image)", "check -cell (in Angstrom) or -mat")
    rendered, in_roi = pixel_counts(plan.fpixels, plan.spixels, plan.roi, cfg.mask_image)
    if in_roi == 0:
        _nonsense(cfg, "-roi %d %d %d %d lies entirely off the %dx%d detector"
                  % (tuple(cfg.roi) + (plan.fpixels, plan.spixels)),
                  "renders an all-zero image", "pixels count from 0 (fast: xmin xmax, slow: ymin ymax)")
    elif rendered == 0:
        _nonsense(cfg, "the mask %s is zero on every pixel of the region of interest" % cfg.mask_file,
                  "renders an all-zero image", "check -mask and -roi")

    # ---- ceilings ----
    check_requested_counts(cfg)
    _ceiling(plan.phisteps, "the number of phi steps (from -osc / -phistep)", "check -osc, -phistep and -phisteps")
    _ceiling(plan.thicksteps, "the number of sensor layers", "check -detector_thick and -detector_thicksteps")
    _ceiling(plan.domains, "the number of mosaic domains", "check -mosaic_dom")
    for flag, steps in (("-hdivsteps", plan.hdivsteps), ("-vdivsteps", plan.vdivsteps),
                        ("-dispsteps", plan.dispsteps)):
        _ceiling(steps, f"the number of {flag[1:]} (from its range and step)",
                 f"check {flag} and the matching range and step flags")
    sources = source_bound(cfg, plan)
    if cfg.source_file is None:
        _ceiling(sources, "the number of sources, -hdivsteps %d x -vdivsteps %d x -dispsteps %d,"
                 % (plan.hdivsteps, plan.vdivsteps, plan.dispsteps),
                 "check -hdivsteps/-vdivsteps/-divsteps, -dispsteps and the divergence and dispersion ranges")
    else:
        _ceiling(sources, f"the number of sources in {cfg.source_file}", "give fewer sources")
    _ceiling(plan.phisteps * plan.domains, "phi steps x mosaic domains", "check -phisteps and -mosaic_dom",
             MAX_ORIENTATIONS)
    if plan.oversample > MAX_OVERSAMPLE:
        if plan.oversample_auto:
            size = " x ".join("%.3g" % (x * 1e6) for x in plan.crystal_m)
            raise InputError(
                "automatic oversampling chose %d sub-pixels per pixel edge (%.3g sub-pixels per pixel), more "
                "than the ceiling of %d: the crystal (%s um, %s cells) is large for the reciprocal pixel size "
                "(lambda x distance / pixel); check -N/-Na/-Nb/-Nc or -xtalsize and the -sample_* sizes, "
                "-distance, -lambda and -pixel (mm: a swapped -distance and -pixel gives this), or give "
                "-oversample" % (plan.oversample, float(plan.oversample) ** 2, MAX_OVERSAMPLE, size,
                                 " x ".join("%.0f" % n for n in plan.N)))
        raise InputError(f"-oversample {plan.oversample} is more than the ceiling of {MAX_OVERSAMPLE}")

    # ---- cost so far ----
    hkl_bytes = 0
    if cfg.hkl_file is not None:
        try:
            hkl_bytes = os.stat(cfg.hkl_file).st_size
        except OSError:
            hkl_bytes = 0
    counts = Counts(plan.fpixels, plan.spixels, rendered, in_roi, plan.oversample, plan.thicksteps, sources,
                    plan.phisteps, plan.domains, plan.interpolate, 0, hkl_bytes,
                    plan.thicksteps + plan.phisteps + 2 * sources + plan.hdivsteps * plan.vdivsteps
                    + plan.dispsteps)
    est = estimate(counts, cfg)
    _check_evaluations(est, _eval_drivers(counts, plan))
    _check_memory(est, cfg)
    return est


def _eval_drivers(c: Counts, plan: Plan | None = None) -> str:
    parts = [f"{c.rendered} pixels (-detpixels, -roi, -mask)",
             f"{c.oversample}^2 sub-pixels ({'auto-selected: ' if plan and plan.oversample_auto else ''}-oversample)",
             f"{c.thicksteps} layers (-detector_thicksteps)", f"{c.sources} sources (-divsteps, -dispsteps)",
             f"{c.phisteps} phi steps (-phisteps)", f"{c.domains} mosaic domains (-mosaic_dom)"]
    return "it is " + " x ".join(parts)


# ---------------------------------------------------------------------------
# after the set-up: the estimate in the printout
# ---------------------------------------------------------------------------

def scene_counts(sc) -> Counts:
    cfg = sc.cfg
    rendered, in_roi = pixel_counts(sc.fpixels, sc.spixels, sc.roi, cfg.mask_image)
    hkl_bytes = 0
    if cfg.hkl_file is not None:
        try:
            hkl_bytes = os.stat(cfg.hkl_file).st_size
        except OSError:
            pass
    return Counts(sc.fpixels, sc.spixels, rendered, in_roi, int(sc.oversample), int(sc.thicksteps),
                  len(sc.sources), int(sc.phisteps), len(sc.mosaic_umats), bool(sc.interpolate),
                  int(sc.Fhkl.size) if sc.hkls else 0, hkl_bytes, len(sc.lines))


def announce(sc, log=None) -> Estimate:
    """The cost estimate of a built scene: printed through ``log`` (two lines), then checked.

    A run expected to take longer than :data:`LONG_RUN_S` also says so on
    stderr.  Raises InputError when the run would not fit in memory.
    """
    cfg = sc.cfg
    counts = scene_counts(sc)
    est = estimate(counts, cfg, threads_for(cfg, import_torch=cfg.engine == "torch"), competing_processes())
    if log is not None:
        for line in est.lines():
            log(line)
    _check_evaluations(est, _eval_drivers(counts))
    _check_memory(est, cfg)
    if log is not None and est.seconds is not None and est.seconds > LONG_RUN_S:
        print(f"nanobragg: note: this run is expected to take about {_duration(est.seconds)} "
              f"({_count(counts.evaluations)} evaluations with {est.engine_label})", file=sys.stderr)
    return est
