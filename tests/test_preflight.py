"""The pre-flight stage: meaningless requests, ceilings, memory and the cost estimate.

Every request below is checked before anything is rendered or written:

* what the C program accepts silently (each verified with the C binary, see
  specs/cli.md "Pre-flight") is refused in spec mode with one error line, and
  run as C runs it under -c_parity after one warning line;
* counts and sizes past their ceilings are refused in both modes, before the
  set-up's loops (one printed line per phi step...) or allocations run: these
  cases run in a subprocess under a time and address-space limit, so that a
  broken check fails the test instead of hanging the suite or the machine;
* a run that cannot fit in memory is refused at once, naming what it needs.
"""

from __future__ import annotations

import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference import preflight
from reference.cli import main, parse_args
from reference.errors import reset_warnings
from reference.scene import build_scene

REPO = Path(__file__).resolve().parents[1]
CELL = ["-cell", "50", "60", "70", "90", "90", "90"]
TINY = ["-N", "2", "-detpixels", "8", "-noprogress", "-seed", "1"]
GOOD = CELL + ["-default_F", "10"] + TINY
OUTPUTS = ("floatimage.bin", "intimage.img", "image.pgm", "noiseimage.img", "Fdump.bin")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    reset_warnings()
    yield
    reset_warnings()


@pytest.fixture
def no_render(monkeypatch):
    """Rendering with either engine fails the test: every check must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the run reached the renderer")
    import reference.render
    monkeypatch.setattr(reference.render, "render", refuse)
    try:
        import torchsim.engine
        monkeypatch.setattr(torchsim.engine, "render", refuse)
    except ImportError:
        pass


def run_cli(capsys, argv):
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def expect_refusal(capsys, argv, *fragments):
    """One ``nanobragg: error:`` line holding ``fragments``, exit 2, no file written."""
    before = set(os.listdir("."))
    rc, out, err = run_cli(capsys, argv)
    lines = err.splitlines()
    assert rc == 2, f"{argv} gave {rc}: {err}"
    assert len(lines) == 1 and lines[0].startswith("nanobragg: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "solid angle subtended" not in out          # printed after the render
    assert not set(os.listdir(".")) - before
    return lines[0]


# ---------------------------------------------------------------------------
# what C accepts silently: spec mode refuses, -c_parity warns once
# ---------------------------------------------------------------------------

NONSENSE = {
    "parallel detector axes": (["-fdet_vector", "0", "0", "1", "-sdet_vector", "0", "0", "1"],
                               "-fdet_vector and -sdet_vector are parallel"),
    "zero polarization vector": (["-polar_vector", "0", "0", "0"], "-polar_vector has zero length"),
    "zero spindle axis": (["-spindle_axis", "0", "0", "0"], "-spindle_axis has zero length"),
    "zero two-theta axis": (["-twotheta", "10", "-twotheta_axis", "0", "0", "0"], "-twotheta_axis has zero length"),
    "normal in the detector plane": (["-fdet_vector", "0", "0", "1", "-sdet_vector", "0", "-1", "0",
                                      "-odet_vector", "0", "0", "1"], "-odet_vector lies in the detector plane"),
    "polarization along the beam": (["-polar", "1", "-polar_vector", "1", "0", "0"],
                                    "-polar_vector lies along the beam"),
    "ROI off the detector": (["-roi", "100", "200", "100", "200"], "-roi 100 200 100 200 lies entirely off the 8x8"),
    "negative distance": (["-distance", "-100"], "-distance -100 mm is negative"),
    "detector facing away": (["-close_distance", "-100"], "faces away from the sample"),
    "negative fluence": (["-fluence", "-1e24"], "fluence -1e+24 photons/m^2 is negative"),
    "negative flux": (["-flux", "-1e12", "-exposure", "1", "-beamsize", "0.1"], "is negative"),
    "negative water": (["-water", "-10"], "-water -10 um is negative"),
    "tiny cell": (["-cell", "1e-10", "1e-10", "1e-10", "90", "90", "90"], "unit cell edge 1e-10 A is below 1 A"),
}


@pytest.mark.parametrize("name", list(NONSENSE))
def test_spec_mode_refuses_what_c_accepts(capsys, no_render, name):
    extra, fragment = NONSENSE[name]
    line = expect_refusal(capsys, GOOD + extra, fragment)
    assert "the C program" in line and "spec mode refuses it" in line


@pytest.mark.parametrize("name", list(NONSENSE))
def test_c_parity_warns_once_and_runs_as_c(capsys, name):
    extra, fragment = NONSENSE[name]
    rc, out, err = run_cli(capsys, GOOD + extra + ["-c_parity"])
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("nanobragg: warning:")]
    about = [line for line in warnings if fragment in line]
    assert len(about) == 1, err
    assert "and so does -c_parity" in about[0]
    assert "error" not in err
    image = np.fromfile("floatimage.bin", dtype=np.float32)
    assert image.size == 64


def test_c_parity_keeps_c_results(capsys):
    """The C behaviours seen with the binary: |distance|, negative photons, an all-zero image."""
    def image(extra):
        rc, _, err = run_cli(capsys, GOOD + extra + ["-c_parity"])
        assert rc == 0, err
        return np.fromfile("floatimage.bin", dtype=np.float32)

    positive = image(["-distance", "100"])
    assert np.array_equal(image(["-distance", "-100"]), positive)
    assert np.allclose(image(["-fluence", "-1.25932015286227086e29"]), -positive, rtol=1e-6)
    assert not image(["-roi", "100", "200", "100", "200"]).any()


def test_zero_mask_inside_roi_is_refused(capsys, tmp_path):
    from reference import fileio
    fields = fileio.smv_header_fields(8, 8, 0.2, 60.0, 1.0, 0.8, 0.8, 0, 0, 0, 0, 0, 0, (0, 0, 0), 0, 0, 60.0, 0, 0, 0)
    fileio.write_smv(tmp_path / "zero.img", np.zeros((8, 8), np.uint16), fields)
    expect_refusal(capsys, CELL + ["-default_F", "10", "-N", "2", "-noprogress", "-mask", "zero.img"],
                   "the mask zero.img is zero on every pixel")


def test_sensible_runs_pass(capsys):
    """Nothing above fires on ordinary requests (tilted axes, a ROI reaching past the edge, -close_distance)."""
    for extra in (["-roi", "5", "8", "0", "8"], ["-close_distance", "80"], ["-polar", "1"],
                  ["-fdet_vector", "0", "0.1", "1", "-sdet_vector", "0", "-1", "0.1", "-odet_vector", "1", "0", "0"]):
        rc, out, err = run_cli(capsys, GOOD + extra)
        assert rc == 0 and err == "", (extra, err)
        assert "estimate: " in out


# ---------------------------------------------------------------------------
# ceilings: in a subprocess under limits, so that a missing check fails, not hangs
# ---------------------------------------------------------------------------

def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))


def run_limited(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "reference.cli", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=_limited)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} still running after {timeout} s: the ceiling did not stop it")
    return proc, time.perf_counter() - start


CEILINGS = {
    "-dispsteps": (["-dispsteps", "2000000000"], "-dispsteps 2000000000 is more than the ceiling"),
    "-dispsteps with a range": (["-dispersion", "1", "-dispsteps", "2000000"], "-dispsteps 2000000"),
    "-mosaic_dom": (["-mosaic", "1", "-mosaic_dom", "2000000000"], "-mosaic_dom 2000000000"),
    "-phisteps": (["-phisteps", "2000000000"], "-phisteps 2000000000"),
    "derived phi steps": (["-osc", "360", "-phistep", "0.0001"], "phi steps (from -osc / -phistep) is 3.6e+06"),
    "divergence grid": (["-hdivsteps", "100000", "-vdivsteps", "100000"],
                        "-hdivsteps 100000 x -vdivsteps 100000 x -dispsteps 1, is 1e+10"),
    "-N": (["-N", "2000000000"], "automatic oversampling chose"),
    "-xtalsize": (["-xtalsize", "1000"], "automatic oversampling chose"),
    "swapped -distance and -pixel": (["-distance", "0.1", "-pixel", "100"], "swapped -distance and -pixel"),
    "-oversample": (["-oversample", "5000"], "-oversample 5000 is more than the ceiling of 1000"),
    "evaluations": (["-detpixels", "4000", "-oversample", "1000", "-phisteps", "10", "-osc", "1"],
                    "1.6e+14 evaluations"),
}


@pytest.mark.parametrize("name", list(CEILINGS))
@pytest.mark.parametrize("parity", [False, True])
def test_ceilings_stop_the_run_before_the_set_up_loops(tmp_path, name, parity):
    extra, fragment = CEILINGS[name]
    args = CELL + ["-default_F", "10", "-N", "2", "-detpixels", "8", "-noprogress", "-seed", "1"] + extra
    proc, _ = run_limited(args + (["-c_parity"] if parity else []), tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("nanobragg: error: ") and fragment in lines[-1], lines
    assert "Traceback" not in proc.stderr
    assert len(proc.stdout.splitlines()) < 200          # no line per step
    assert not os.listdir(tmp_path)


def test_detpixels_46000_fails_within_a_second_naming_the_memory(capsys, monkeypatch, no_render):
    real = preflight.available_memory
    # on a machine with more than it needs, a test must still not try the run
    monkeypatch.setattr(preflight, "available_memory", lambda: (min(real()[0], 16e9), "available"))
    start = time.perf_counter()
    line = expect_refusal(capsys, CELL + ["-default_F", "10", "-N", "2", "-detpixels", "46000", "-noprogress"],
                          "GB of memory", "-detpixels")
    assert time.perf_counter() - start < 1.0
    needed = float(line.split("need about ")[1].split(" GB")[0])
    assert 46000 ** 2 * 25 / 1e9 <= needed <= 46000 ** 2 * 60 / 1e9, line


def test_tiny_roi_on_a_huge_detector_is_costed_by_the_detector(capsys, monkeypatch, no_render):
    """-detpixels 20000 -roi 0 1 0 1 renders 4 pixels but writes 20000^2-pixel images, as C
    does: the estimate counts the whole detector and names -detpixels, not the ROI."""
    monkeypatch.setattr(preflight, "available_memory", lambda: (4e9, "available"))
    start = time.perf_counter()
    line = expect_refusal(capsys, CELL + ["-default_F", "10", "-N", "2", "-detpixels", "20000", "-roi", "0", "1", "0",
                                          "1", "-noprogress"], "GB of memory", "-detpixels")
    assert time.perf_counter() - start < 1.0
    needed = float(line.split("need about ")[1].split(" GB")[0])
    assert 20000 ** 2 * 15 / 1e9 <= needed <= 20000 ** 2 * 60 / 1e9, line


def test_detpixels_46000_whole_program_under_a_memory_limit(tmp_path):
    proc, elapsed = run_limited(CELL + ["-default_F", "10", "-N", "2", "-detpixels", "46000"], tmp_path, timeout=60)
    assert proc.returncode == 2 and "GB of memory" in proc.stderr, proc.stderr[-2000:]
    assert "ulimit -v" in proc.stderr or "available" in proc.stderr
    assert elapsed < 30                                   # the interpreter's start-up included
    assert not os.listdir(tmp_path)


def test_torch_run_that_cannot_fit_memory_gb(capsys, no_render):
    pytest.importorskip("torch")
    expect_refusal(capsys, GOOD + ["-engine", "torch", "-memory_gb", "0.001", "-oversample", "50", "-phisteps", "100",
                                   "-osc", "1"], "-memory_gb 0.001", "one pixel's 250000 evaluations")


# ---------------------------------------------------------------------------
# input files: only regular files, of a sane size, and a FIFO cannot block
# ---------------------------------------------------------------------------

def test_device_as_hkl_is_refused(tmp_path):
    proc, _ = run_limited(GOOD + ["-hkl", "/dev/zero"], tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["nanobragg: error: cannot read /dev/zero: it is a character device, not a "
                                        "regular file (input files are read whole, so only regular files are accepted)"]
    assert not os.listdir(tmp_path)


def test_fifo_as_input_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.hkl")
    proc, _ = run_limited(GOOD + ["-hkl", "pipe.hkl"], tmp_path, timeout=60)
    assert proc.returncode == 2 and "pipe.hkl" in proc.stderr and "FIFO" in proc.stderr, proc.stderr


def test_input_file_size_is_capped(capsys, monkeypatch, tmp_path):
    (tmp_path / "big.hkl").write_text("1 2 3 4\n" * 200)
    monkeypatch.setattr(preflight, "MAX_INPUT_BYTES", 1000)
    expect_refusal(capsys, GOOD + ["-hkl", "big.hkl"], "big.hkl is 1.6 kB, larger than the 1.0 kB")


# ---------------------------------------------------------------------------
# the estimate
# ---------------------------------------------------------------------------

SMALL = CELL + ["-default_F", "10", "-N", "2", "-detpixels_f", "10", "-detpixels_s", "7", "-roi", "2", "5", "1", "3",
                "-oversample", "3", "-phi", "0", "-osc", "1", "-phisteps", "2", "-mosaic", "1", "-mosaic_dom", "3",
                "-divergence", "1", "-divsteps", "2", "-square_div", "-dispersion", "2", "-dispsteps", "2",
                "-detector_thick", "100", "-detector_thicksteps", "2", "-noprogress", "-nonoise", "-nopgm"]


def test_estimate_arithmetic_on_a_small_scene(capsys):
    cfg = parse_args(SMALL)
    sc = build_scene(cfg, echo=False)
    c = preflight.scene_counts(sc)
    assert (c.pixels, c.rendered, c.roi_pixels) == (70, 4 * 3, 12)
    assert (c.oversample, c.thicksteps, c.sources, c.phisteps, c.domains) == (3, 2, 2 * 2 * 2, 2, 3)
    assert c.evaluations == 12 * 9 * 2 * 8 * 2 * 3 == 10368
    assert c.subpixels == 12 * 9 * 2

    est = preflight.estimate(c, cfg, threads=2)
    k = preflight.COSTS["numba"]
    cpu = 12 * k["pixel_s"] + 216 * k["subpixel_s"] + 10368 * k["eval_s"]
    speedup = 1 + k["parallel"] * (min(2, preflight._cpus()) - 1)
    seconds = k["start_s"] + cpu / speedup + 70 * k["output_s"] + 2e-6 * (c.lines + 6 + 8)
    assert math.isclose(est.seconds, seconds, rel_tol=1e-12)
    peak = (k["base_mb"] * 1e6 + preflight.ORIENTATION_BYTES * 6 + preflight.SOURCE_BYTES * 8
            + preflight.LINE_BYTES * c.lines + k["out_bytes"] * 70 + k["roi_bytes"] * 12)
    assert math.isclose(est.peak_bytes, peak, rel_tol=1e-12)
    lines = est.lines()
    assert lines[0] == ("estimate: 10368 evaluations = 12 pixels x 9 sub-pixels x 2 layers x 8 sources x "
                        "2 phi steps x 3 mosaic domains")
    assert lines[1].startswith("estimate: peak memory ") and "with -engine numba (2 threads)" in lines[1]

    rc, out, _ = run_cli(capsys, SMALL)
    assert rc == 0 and lines[0] in out.splitlines()


def test_estimate_says_when_the_machine_is_busy(capsys, monkeypatch):
    """The time is an idle machine's; with more runnable processes than cores it says so."""
    cfg = parse_args(SMALL)
    c = preflight.scene_counts(build_scene(cfg, echo=False))
    idle = preflight.estimate(c, cfg, threads=2)
    busy = preflight.estimate(c, cfg, threads=2, busy=preflight._cpus() + 3)
    assert busy.seconds == idle.seconds
    assert "on an idle machine" not in idle.lines()[1]
    assert busy.lines()[1].endswith(f"on an idle machine; {preflight._cpus() + 3} other processes are running now: "
                                    "expect it to take longer")
    monkeypatch.setattr(preflight, "competing_processes", lambda: 0)
    rc, out, _ = run_cli(capsys, SMALL)
    assert rc == 0 and "idle machine" not in out
    monkeypatch.setattr(preflight, "competing_processes", lambda: 40)
    rc, out, _ = run_cli(capsys, SMALL)
    assert rc == 0 and "40 other processes are running now" in out


@pytest.mark.parametrize("busy, preset, expected", [(1, None, "PASSIVE"), (0, None, None), (3, "ACTIVE", "ACTIVE")])
def test_torch_threads_sleep_when_the_machine_is_busy(monkeypatch, busy, preset, expected):
    """OMP_WAIT_POLICY=PASSIVE before torch loads, only when another process wants a core."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(preflight, "competing_processes", lambda: busy)
    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    preflight.sleep_when_idle_if_busy()
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_own_threads_are_not_competition():
    assert preflight._own_runnable_threads() >= 1


def test_competing_processes_reads_a_snapshot():
    busy = preflight.competing_processes()
    assert isinstance(busy, int) and busy >= 0
    if os.path.exists("/proc/loadavg"):
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
        assert abs(busy - (runnable - 1)) <= 20       # others start and stop between the two reads


def test_estimate_counts_the_mask(tmp_path):
    from reference import fileio
    mask = np.ones((7, 10), np.uint16)
    mask[2, 3] = mask[0, 0] = 0                     # one inside the ROI, one outside
    fields = fileio.smv_header_fields(10, 7, 0.2, 60.0, 1.0, 1.0, 0.7, 0, 0, 0, 0, 0, 0, (0, 0, 0), 0, 0, 60.0, 0, 0, 0)
    fileio.write_smv(tmp_path / "m.img", mask, fields)
    cfg = parse_args(CELL + ["-default_F", "10", "-N", "2", "-mask", "m.img", "-roi", "2", "5", "1", "3"])
    c = preflight.scene_counts(build_scene(cfg, echo=False))
    assert (c.rendered, c.roi_pixels) == (11, 12)


def test_torch_estimate_counts_its_chunks():
    cfg = parse_args(SMALL + ["-engine", "torch", "-dtype", "float32", "-memory_gb", "1"])
    c = preflight.scene_counts(build_scene(cfg, echo=False))
    est = preflight.estimate(c, cfg, threads=1)
    k = preflight.COSTS["torch-float32"]
    one_pixel = c.per_pixel * preflight.BYTES_PER_EVAL * k["work_fraction"]
    assert math.isclose(est.engine_bytes, one_pixel + 12 * 70 + 8 * 12)
    assert "-engine torch -dtype float32 (1 thread)" in est.lines()[1]
    from torchsim.engine import BYTES_PER_EVAL, BYTES_PER_EVAL_INTERP, CPU_CHUNK_BYTES
    assert (BYTES_PER_EVAL, BYTES_PER_EVAL_INTERP, CPU_CHUNK_BYTES) == (
        preflight.BYTES_PER_EVAL, preflight.BYTES_PER_EVAL_INTERP, 256e6)


def test_long_run_says_how_long_before_it_starts(capsys, monkeypatch):
    cfg = parse_args(SMALL)
    sc = build_scene(cfg, echo=False)
    monkeypatch.setitem(preflight.COSTS, "numba", dict(preflight.COSTS["numba"], eval_s=1.0))
    printed = []
    preflight.announce(sc, printed.append)
    err = capsys.readouterr().err
    assert len(printed) == 2 and re.search(r"about [0-9.]+ h with -engine numba", printed[1])
    assert re.match(r"nanobragg: note: this run is expected to take about [0-9.]+ h \(10368 evaluations", err)
    monkeypatch.setitem(preflight.COSTS, "numba", dict(preflight.COSTS["numba"], eval_s=1e-9))
    preflight.announce(sc, printed.append)
    assert capsys.readouterr().err == ""          # a short run says nothing on stderr


def test_available_memory_is_sane():
    limit, where = preflight.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < limit <= total + 2**30 and where


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_progress_bar_counts_what_is_rendered(monkeypatch, engine):
    """tqdm's ETA is right when its total is the work: the ROI's rows (numba) or pixels (torch)."""
    if engine == "torch":
        pytest.importorskip("torch")
    import tqdm
    totals = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            totals.append(total)
            self.n = 0

        def update(self, n):
            self.n += n

        def close(self):
            totals.append(self.n)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    cfg = parse_args(CELL + ["-default_F", "10", "-N", "2", "-detpixels", "40", "-roi", "3", "9", "10", "14",
                             "-engine", engine])
    sc = build_scene(cfg, echo=False)
    if engine == "torch":
        from torchsim.engine import render
        assert totals == [] and render(sc, progress=True) is not None
        assert totals == [7 * 5, 7 * 5]
    else:
        from reference.render import render
        render(sc, progress=True)
        assert totals == [5, 5]
