"""nanobragg-dataset: descriptions, random draws, formats, Dask execution and resuming.

Every network connection is on 127.0.0.1.  A Dask scheduler and two workers
are started for this module with Dask's own commands (``python -m
distributed.cli.dask_scheduler`` / ``dask_worker``) and stopped at its end;
the ``--workers`` runs start local clusters of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reference.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_NAMES = ("rotation", "stills")


def _env():
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))


def run_dataset(*argv):
    """(exit status, stdout, stderr) of one in-process nanobragg-dataset run."""
    from tools.dataset.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:            # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def truth_of(folder):
    with open(Path(folder) / "truth.json") as handle:
        return json.load(handle)


def manifest_of(folder):
    with open(Path(folder) / "manifest.json") as handle:
        return json.load(handle)


# ---------------------------------------------------------------------------
# a Dask cluster started with Dask's own commands
# ---------------------------------------------------------------------------

def _stop(process, wait=30):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """Address of a scheduler with two single-threaded workers, all on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("dask")
    info = folder / "scheduler.json"
    log = open(folder / "cluster.log", "w")
    common = dict(stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=folder)
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", "0", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                                   "--scheduler-file", str(info)], **common)]
    try:
        deadline = time.monotonic() + 120
        while not info.exists() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (folder / "cluster.log").read_text()
            time.sleep(0.2)
        time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                 "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--death-timeout", "60",
                 "--local-directory", str(folder)], **common))
        from distributed import Client
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)
        log.close()


_RUNS = {}


@pytest.fixture(scope="module")
def render(tmp_path_factory, scheduler):
    """render(example, fmt, how) -> output folder; each distinct run happens once per module."""

    def go(example, fmt="float", how="scheduler"):
        key = (example, fmt, how)
        if key not in _RUNS:
            out = tmp_path_factory.mktemp(f"{example}-{fmt}-{how}")
            where = ["--scheduler", scheduler] if how == "scheduler" else ["--workers", how.removeprefix("workers")]
            rc, out_text, err = run_dataset(EXAMPLES / f"{example}.toml", "--out", out, "--format", fmt,
                                            "--no-progress", *where)
            assert rc == 0, err
            assert "Traceback" not in err
            _RUNS[key] = out
        return _RUNS[key]
    yield go
    _RUNS.clear()


def float_images(folder):
    truth = truth_of(folder)
    shape = (truth["sweeps"][0]["geometry"]["spixels"], truth["sweeps"][0]["geometry"]["fpixels"])
    return [np.fromfile(Path(folder) / image["file"], dtype="<f4").reshape(shape) for image in truth["images"]]


def render_alone(args, folder):
    """The float image ``nanobragg`` writes for ``args`` run by itself in an empty folder."""
    from reference.cli import main
    folder.mkdir()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            rc = main(list(args))
        assert rc == 0, err.getvalue()
        return np.fromfile("floatimage.bin", dtype="<f4")
    finally:
        os.chdir(cwd)


# ---------------------------------------------------------------------------
# the examples: every image equals its nanobragg_args rendered alone
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_every_image_equals_its_nanobragg_args_alone(example, render, tmp_path):
    folder = render(example)
    truth = truth_of(folder)
    assert truth["kind"] == example
    assert not truth["noisy"] and truth["stored"].startswith("noise-free")
    images = float_images(folder)
    assert 20 <= len(images) <= 50
    assert all(image.max() > 0 for image in images)
    for image, entry in zip(images, truth["images"]):
        alone = render_alone(entry["nanobragg_args"], tmp_path / f"alone{entry['index']}")
        assert np.array_equal(alone, image.ravel()), entry["file"]
    # the images differ from one another (each is its own orientation)
    assert len({image.tobytes() for image in images}) == len(images)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_two_local_workers_give_the_scheduler_images(example, render):
    reference = render(example)
    two = render(example, how="workers2")
    for a, b in zip(float_images(reference), float_images(two)):
        assert np.array_equal(a, b)
    # the same truth, but for the output folder itself (where the stills' spectra are)
    assert (json.dumps(truth_of(reference)["images"]).replace(str(reference), "DIR")
            == json.dumps(truth_of(two)["images"]).replace(str(two), "DIR"))


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_one_local_worker_gives_the_scheduler_images(example, render):
    reference = render(example)
    one = render(example, how="workers1")
    for a, b in zip(float_images(reference), float_images(one)):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------

def _counts(photons, scale=1.0, adc=40.0, top=2**31 - 1):
    return np.floor(np.clip(photons.astype(np.float64) * scale + adc, 0.0, top) + 0.5)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_fabio_reads_every_cbf(example, render):
    import fabio
    from tools.dataset.formats import read_minicbf_header

    folder = render(example, "cbf")
    truth = truth_of(folder)
    geometry = truth["sweeps"][0]["geometry"]
    photons = float_images(render(example))
    for entry, image in zip(truth["images"], photons):
        cbf = fabio.open(str(Path(folder) / entry["file"]))
        assert cbf.header["_array_data.header_convention"] == "GENERIC_MINI"
        header = read_minicbf_header(cbf.header["_array_data.header_contents"])
        assert math.isclose(float(header["Wavelength"].split()[0]), entry["wavelength_A"], rel_tol=1e-11)
        assert math.isclose(float(header["Detector_distance"].split()[0]), geometry["distance_m"], rel_tol=1e-11)
        sizes = header["Pixel_size"].replace("m", "").split("x")
        assert all(math.isclose(float(s), geometry["pixel_size_m"], rel_tol=1e-11) for s in sizes)
        beam = [float(v) for v in header["Beam_xy"].split(")")[0].strip("(").split(",")]
        assert np.allclose(beam, geometry["beam_center_px"], rtol=1e-11)
        assert math.isclose(float(header["Start_angle"].split()[0]), entry["phi_start_deg"], abs_tol=1e-10)
        assert math.isclose(float(header["Angle_increment"].split()[0]), entry["osc_deg"], abs_tol=1e-10)
        assert int(cbf.header["X-Binary-Size-Fastest-Dimension"]) == geometry["fpixels"]
        assert cbf.data.dtype == np.int32
        assert np.array_equal(cbf.data, _counts(image))
    if example == "rotation":
        assert truth["images"][1]["phi_start_deg"] == 0.5 and truth["images"][1]["osc_deg"] == 0.5
    else:                                               # a wavelength per shot
        assert len({entry["wavelength_A"] for entry in truth["images"]}) == len(truth["images"])


def test_smv_holds_nanobragg_integers_and_header(render):
    from reference.fileio import read_smv

    folder = render("rotation", "smv")
    truth = truth_of(folder)
    photons = float_images(render("rotation"))
    for entry, image in zip(truth["images"], photons):
        smv = read_smv(str(Path(folder) / entry["file"]))
        assert math.isclose(smv.value("PHI"), entry["phi_start_deg"], abs_tol=1e-9)
        assert math.isclose(smv.value("OSC_RANGE"), entry["osc_deg"], abs_tol=1e-9)
        assert math.isclose(smv.value("WAVELENGTH"), entry["wavelength_A"], rel_tol=1e-9)
        assert np.array_equal(smv.data.reshape(image.shape), np.minimum(_counts(image), 65535))


def _chain(f, path):
    """The transformations a depends_on path leads through, to '.'."""
    chain = []
    while path != ".":
        item = f[path]
        chain.append(item)
        path = item.attrs["depends_on"]
        path = path.decode() if isinstance(path, bytes) else path
    return chain


def _text(dataset):
    value = dataset[()]
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_h5py_reads_the_nxmx_master(example, render):
    import h5py
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)

    folder = render(example, "nexus")
    truth = truth_of(folder)
    sweep = truth["sweeps"][0]
    geometry = sweep["geometry"]
    assert not (Path(folder) / "frames").exists()              # the master holds the frames now
    assert {entry["file"] for entry in truth["images"]} == {sweep["master"]}
    with h5py.File(Path(folder) / sweep["master"], "r") as f:
        assert _text(f["/entry/definition"]) == "NXmx"
        det = f["/entry/instrument/detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        assert math.isclose(det["x_pixel_size"][()], geometry["pixel_size_m"])
        assert math.isclose(det["y_pixel_size"][()], geometry["pixel_size_m"])
        assert np.allclose([det["beam_center_x"][()], det["beam_center_y"][()]], geometry["beam_center_px"])
        assert math.isclose(det["distance"][()], geometry["distance_m"])
        # the depends_on chain: detector -> its position; pixels -> module offset -> position
        M = np.array(geometry["lab_to_mcstas"])
        position = _chain(f, _text(det["depends_on"]))
        assert [t.name for t in position] == ["/entry/instrument/detector/transformations/detector_position"]
        fast = f["/entry/instrument/detector/module/fast_pixel_direction"]
        slow = f["/entry/instrument/detector/module/slow_pixel_direction"]
        chain = _chain(f, fast.attrs["depends_on"])
        assert [t.name.rsplit("/", 1)[-1] for t in chain] == ["module_offset", "detector_position"]
        corner = sum(t[()] * t.attrs["vector"] + t.attrs["offset"] for t in chain)
        assert np.allclose(corner, M @ geometry["pix0_m"], atol=1e-12)
        assert np.allclose(fast.attrs["vector"], M @ geometry["fdet"])
        assert math.isclose(fast[()], geometry["pixel_size_m"])
        assert np.allclose(slow.attrs["vector"], M @ geometry["sdet"])
        # the beam: along McStas +z, with each frame's wavelength
        assert np.allclose(M @ geometry["beam"], [0, 0, 1])
        wavelength = np.atleast_1d(f["/entry/instrument/beam/incident_wavelength"][()])
        wanted = [entry["wavelength_A"] for entry in truth["images"]]
        assert np.allclose(np.broadcast_to(wavelength, (len(wanted),)), wanted, rtol=1e-12)
        # the sample hangs on the goniometer's omega axis, scanned frame by frame
        omega = f[_text(f["/entry/sample/depends_on"])]
        assert omega.attrs["transformation_type"] == "rotation" and omega.attrs["depends_on"] == "."
        assert np.allclose(omega.attrs["vector"], M @ geometry["spindle"])
        assert np.allclose(omega[()], [entry["phi_start_deg"] for entry in truth["images"]])
        # the image stack, bitshuffle/LZ4-compressed, equals the float images
        data = f["/entry/data/data"]
        assert data.id.get_create_plist().get_filter(0)[0] == 32008    # bitshuffle (with LZ4)
        assert data.dtype == np.float32
        for k, image in enumerate(float_images(render(example))):
            assert np.array_equal(data[k], image)


# ---------------------------------------------------------------------------
# resuming, failures, bands
# ---------------------------------------------------------------------------

SLOW_ROTATION = """
[dataset]
seed = 5
[scene]
hkl = "{hkl}"
cell = [40, 50, 60, 90, 90, 90]
misset = [5, 10, 15]
N = 6
distance = 60
detpixels = 128
pixel = 0.3
mosaic = 0.2
mosaic_dom = 8
oversample = 2
[rotation]
osc = 0.5
images = 8
phisteps = 8
"""


def test_a_killed_run_resumes_without_rendering_again(scheduler, tmp_path):
    toml = tmp_path / "slow.toml"
    toml.write_text(SLOW_ROTATION.format(hkl=EXAMPLES / "example.hkl"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tools.dataset.cli", str(toml), "--out", str(out), "--format", "cbf",
               "--scheduler", scheduler, "--no-progress"]
    process = subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        recorded = {}
        while time.monotonic() < deadline and process.poll() is None:
            try:
                recorded = manifest_of(out)["files"]
            except (OSError, ValueError):
                pass
            if len(recorded) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    recorded = manifest_of(out)["files"]
    assert 2 <= len(recorded) < 8
    before = {name: os.stat(out / name).st_mtime_ns for name in recorded}

    rc, text, err = run_dataset(toml, "--out", out, "--format", "cbf", "--scheduler", scheduler, "--no-progress")
    assert rc == 0, err
    assert f"{8 - len(recorded)} rendered, {len(recorded)} already there" in text
    for name, mtime in before.items():
        assert os.stat(out / name).st_mtime_ns == mtime, f"{name} was written again"
    # every file whole and as a clean run writes it
    clean = tmp_path / "clean"
    rc, _, err = run_dataset(toml, "--out", clean, "--format", "cbf", "--scheduler", scheduler, "--no-progress")
    assert rc == 0, err
    files = manifest_of(out)["files"]
    assert len(files) == 8 and not [p for p in os.listdir(out) if ".part-" in p]
    for name, entry in files.items():
        assert (out / name).read_bytes() == (clean / name).read_bytes()
        from tools.dataset.manifest import sha256_file
        assert sha256_file(out / name) == entry["sha256"]


def test_a_damaged_file_is_rendered_again(render, scheduler, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(render("rotation", "cbf"), out)
    victim = out / "image_00007.cbf"
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    untouched = os.stat(out / "image_00008.cbf").st_mtime_ns
    rc, text, err = run_dataset(EXAMPLES / "rotation.toml", "--out", out, "--format", "cbf", "--scheduler",
                                scheduler, "--no-progress")
    assert rc == 0, err
    assert "1 rendered, 23 already there" in text
    assert victim.read_bytes() == (render("rotation", "cbf") / "image_00007.cbf").read_bytes()
    assert os.stat(out / "image_00008.cbf").st_mtime_ns == untouched


def test_a_failed_image_is_reported_and_the_others_kept(scheduler, tmp_path):
    from tools.dataset import description, execution, plan

    desc = description.load(EXAMPLES / "rotation.toml")
    desc.retries = 1
    out = tmp_path / "out"
    out.mkdir()
    the_plan = plan.build(desc, "float", str(out))
    broken = the_plan.sweeps[0].images[4]
    good_tokens = list(broken.tokens)
    broken.tokens[broken.tokens.index("-hkl") + 1] = str(tmp_path / "missing.hkl")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        outcome = execution.run(the_plan, str(out), None, scheduler, progress=False)
    assert [name for name, _ in outcome.failed] == ["image_00005.bin"]
    assert "missing.hkl" in outcome.failed[0][1]
    assert "image_00005.bin" in err.getvalue() and "Traceback" not in err.getvalue()
    assert outcome.rendered == 23
    assert "image_00005.bin" not in manifest_of(out)["files"] and len(manifest_of(out)["files"]) == 23
    broken.tokens[:] = good_tokens
    outcome = execution.run(the_plan, str(out), None, scheduler, progress=False)
    assert (outcome.rendered, outcome.skipped, outcome.failed) == (1, 23, [])


def test_bands_summed_back_give_the_whole_image(render, scheduler, tmp_path):
    text = (EXAMPLES / "rotation.toml").read_text().replace('"example.hkl"', f'"{EXAMPLES / "example.hkl"}"')
    toml = tmp_path / "bands.toml"
    toml.write_text(text.replace("images = 24", "images = 3") + "\n[execution]\ntile_pixels = 2000\n")
    from tools.dataset import description, execution, plan
    from tools.dataset.render import render_float, resolved_roi, row_bands, scene_for
    the_plan = plan.build(description.load(toml), "float", str(tmp_path / "x"))
    sweep = the_plan.sweeps[0]
    assert execution.band_count(sweep, 2000, 0.0) == 4          # 96 x 80 pixels
    bands = row_bands(resolved_roi(sweep.scene), 96, 4)
    assert bands == [(0, 19), (20, 39), (40, 59), (60, 79)]
    # a band's task renders its own rows only
    first, last = bands[1]
    part = render_float(scene_for(sweep.images[0].tokens, (0, 95, first, last)))
    assert part[first:last + 1].any() and not part[:first].any() and not part[last + 1:].any()
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out", "--format", "float", "--scheduler", scheduler,
                             "--no-progress")
    assert rc == 0, err
    whole = float_images(render("rotation"))
    for k, image in enumerate(float_images(tmp_path / "out")):
        assert np.array_equal(image, whole[k])


def test_c_parity_images_are_never_split(tmp_path):
    from tools.dataset import description, execution, plan
    text = (EXAMPLES / "rotation.toml").read_text().replace('"example.hkl"', f'"{EXAMPLES / "example.hkl"}"')
    toml = tmp_path / "parity.toml"
    toml.write_text(text.replace("\n[scene]\n", "\n[scene]\nc_parity = true\n") + "\n[execution]\ntile_pixels = 2000\n")
    the_plan = plan.build(description.load(toml), "float", str(tmp_path))
    assert "-c_parity" in the_plan.sweeps[0].images[0].tokens
    assert execution.band_count(the_plan.sweeps[0], 2000, 0.0) == 1


def test_memory_limit_splits_an_image_by_the_preflight_estimate(tmp_path):
    from reference import preflight
    from tools.dataset import description, execution, plan
    the_plan = plan.build(description.load(EXAMPLES / "rotation.toml"), "float", str(tmp_path))
    sweep = the_plan.sweeps[0]
    whole = preflight.estimate(preflight.scene_counts(sweep.scene), sweep.scene.cfg, 1).peak_bytes
    assert execution.band_count(sweep, 0, 10 * whole) == 1
    with pytest.raises(InputError, match="even one row at a time"):
        execution.band_count(sweep, 0, whole / 10)


# ---------------------------------------------------------------------------
# the description: one error line per problem
# ---------------------------------------------------------------------------

GOOD = """
[scene]
cell = [50, 60, 70, 90, 90, 90]
default_F = 10
detpixels = 16
[rotation]
osc = 1
images = 2
"""

BAD = [
    ("[scene]\ncel = 5\n[rotation]\nosc = 1\nimages = 2\n", "unknown nanobragg flag 'cel' (did you mean cell?)"),
    (GOOD.replace("images = 2", "images = 2\nimagez = 3"), "unknown key 'imagez' (did you mean 'images'?)"),
    (GOOD.replace("images = 2", "images = 'two'"), "'images' must be a whole number, got 'two'"),
    (GOOD.replace("osc = 1", "osc = -1"), "'osc' must be positive"),
    (GOOD.replace("detpixels = 16", "detpixels = [16, 16]"), "'detpixels' takes 1 value, got 2"),
    (GOOD.replace("detpixels = 16", "detpixels = 16\nphi = 3"), "'phi': set by the [rotation] table"),
    (GOOD.replace("detpixels = 16", "detpixels = 16\nfloatfile = 'x.bin'"), "output files are the dataset tool's"),
    (GOOD.replace("detpixels = 16", "detpixels = 16\nnopolar = 3"), "'nopolar' takes no value"),
    (GOOD + "[rotaton]\nosc = 1\n", "unknown key 'rotaton' (did you mean 'rotation'?)"),
    (GOOD + "[stills]\nshots = 2\n", "give exactly one of [rotation]"),
    (GOOD.replace("osc = 1", "osc = 1 osc = 2"), "not valid TOML"),
    (GOOD.replace("[rotation]\nosc = 1\nimages = 2", "[stills]\nshots = 3\n[stills.vary.mosaic]\n"
                  "distribution = 'gauss'\nmean = 1"), "unknown distribution 'gauss'"),
    (GOOD.replace("[rotation]\nosc = 1\nimages = 2", "[stills]\nshots = 3\n[stills.vary.mosaic]\n"
                  "distribution = 'normal'\nmean = 1"), "the normal distribution needs 'sd'"),
    (GOOD.replace("cell = [50, 60, 70, 90, 90, 90]", "mat = 'x.mat'").replace(
        "[rotation]\nosc = 1\nimages = 2", "[stills]\nshots = 3\n[stills.vary.cell]\n"
        "distribution = 'normal'\nmean = 1\nsd = 0.01"), "so [scene] must give -cell"),
    (GOOD.replace("[rotation]", "[execution]\ntile_pixels = -4\n[rotation]"), "'tile_pixels' must be at least 0"),
]


@pytest.mark.parametrize("text,fragment", BAD, ids=[b[1][:30] for b in BAD])
def test_a_bad_description_gives_one_error_line(text, fragment, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    rc, out, err = run_dataset(toml, "--out", tmp_path / "out")
    lines = err.splitlines()
    assert rc == 2 and "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("nanobragg-dataset: error: ") and fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_each_problem_gets_its_line(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(GOOD.replace("images = 2", "images = 0\nstart = 'x'").replace("default_F", "defalt_F"))
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 3, lines
    assert all(line.startswith("nanobragg-dataset: error: ") for line in lines)


def test_a_scene_nanobragg_refuses_gives_one_line(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(GOOD.replace("default_F = 10", "default_F = 10\nhkl = 'nowhere.hkl'"))
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "nowhere.hkl" in lines[0], lines


def test_an_unreachable_scheduler_gives_one_line(tmp_path):
    toml = tmp_path / "good.toml"
    toml.write_text(GOOD)
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9",
                             "--no-progress")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], lines


def test_relative_input_files_are_read_beside_the_description(tmp_path):
    from tools.dataset import description, plan
    (tmp_path / "sub").mkdir()
    shutil.copy(EXAMPLES / "example.hkl", tmp_path / "sub" / "f.hkl")
    toml = tmp_path / "sub" / "d.toml"
    toml.write_text(GOOD.replace("default_F = 10", "hkl = 'f.hkl'"))
    the_plan = plan.build(description.load(toml), "float", str(tmp_path / "out"))
    tokens = the_plan.images[0].tokens
    assert tokens[tokens.index("-hkl") + 1] == str(tmp_path / "sub" / "f.hkl")


# ---------------------------------------------------------------------------
# draws: from the seed and the image index only
# ---------------------------------------------------------------------------

STILLS = """
[dataset]
seed = 11
[scene]
cell = [50, 60, 70, 90, 90, 90]
default_F = 10
detpixels = 16
[stills]
shots = {shots}
{vary}
"""
MOSAIC = "[stills.vary.mosaic]\ndistribution = 'uniform'\nlow = 0.1\nhigh = 0.3\n"
CELL = "[stills.vary.cell]\ndistribution = 'normal'\nmean = 1\nsd = 0.01\nindependent = true\n"


def _stills_plan(tmp_path, shots, vary):
    from tools.dataset import description, plan
    toml = tmp_path / f"s{shots}{len(vary)}.toml"
    toml.write_text(STILLS.format(shots=shots, vary=vary))
    return plan.build(description.load(toml), "float", str(tmp_path / "out"))


def test_draws_depend_on_the_seed_and_index_only(tmp_path):
    few = _stills_plan(tmp_path, 3, MOSAIC)
    many = _stills_plan(tmp_path, 8, MOSAIC + CELL)
    for a, b in zip(few.images, many.images):
        assert a.draws["misset_deg"] == b.draws["misset_deg"]            # more shots, another variation:
        assert a.draws["mosaic_deg"] == b.draws["mosaic_deg"]            # the same draws
        assert a.draws["mosaic_seed"] == b.draws["mosaic_seed"]
    assert len({tuple(i.draws["misset_deg"]) for i in many.images}) == 8
    factors = many.images[0].draws["cell_factors"]
    assert len(set(factors)) == 3                                         # independent = true
    assert all(0.1 <= i.draws["mosaic_deg"] < 0.3 for i in many.images)
    # the truth is what nanobragg builds from the tokens
    tokens = many.images[2].tokens
    cell = [float(x) for x in tokens[tokens.index("-cell") + 1:tokens.index("-cell") + 7]]
    assert np.allclose(many.images[2].crystal["cell"], cell, rtol=1e-12)


def test_random_orientations_are_uniform():
    from tools.dataset.orientations import uniform_rotation
    rng = np.random.Generator(np.random.PCG64(3))
    n = 20000
    R = np.array([uniform_rotation(rng) for _ in range(n)])
    assert np.allclose(np.einsum("nij,nkj->nik", R, R), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    # Haar measure: every entry has mean 0 and mean square 1/3; the rotation angle t has
    # E[cos t] = -1/2 (trace 1 + 2 cos t averages to 0).  Bounds: 5 standard errors.
    assert np.all(np.abs(R.mean(axis=0)) < 5 * math.sqrt(1 / 3 / n))
    assert np.all(np.abs((R ** 2).mean(axis=0) - 1 / 3) < 5 * math.sqrt(4 / 45 / n))
    cos_t = (np.trace(R, axis1=1, axis2=2) - 1) / 2
    assert abs(cos_t.mean() + 0.5) < 5 * math.sqrt(0.25 / n)


def test_misset_angles_rotate_as_nanobragg_rotates():
    from reference.vectors import rotate_xyz
    from tools.dataset.orientations import misset_angles, rotation_from_misset, uniform_rotation
    rng = np.random.Generator(np.random.PCG64(4))
    for _ in range(50):
        R = uniform_rotation(rng)
        angles = misset_angles(R)
        assert np.allclose(rotation_from_misset(*angles), R, atol=1e-12)
        rad = [a * math.pi / 180 for a in angles]
        for axis in np.eye(3):
            assert np.allclose(rotate_xyz(tuple(axis), *rad), R @ axis, atol=1e-12)


def test_lab_to_mcstas_for_the_mosflm_convention():
    from tools.dataset.orientations import lab_to_mcstas
    M = lab_to_mcstas((1, 0, 0), (0, 0, 1))
    assert np.allclose(M @ [1, 0, 0], [0, 0, 1])        # beam -> +z
    assert np.allclose(M @ [0, 1, 0], [0, 1, 0])        # up stays up
    assert np.allclose(M @ [0, 0, 1], [-1, 0, 0])       # the spindle: McStas -x, imgCIF +x
    assert math.isclose(np.linalg.det(M), 1.0)


def test_truth_records_every_image(render):
    truth = truth_of(render("stills"))
    assert truth["seed"] == 7 and truth["format"] == "float"
    for entry in truth["images"]:
        assert {"file", "nanobragg_args", "orientation", "cell", "draws", "wavelength_A"} <= set(entry)
        assert {"misset_deg", "mosaic_seed", "cell_factors", "N", "mosaic_deg", "wavelength_A", "fluence",
                "spectrum"} <= set(entry["draws"])
        A = np.array(entry["orientation"]["A"])
        a = np.array(entry["orientation"]["a"])
        assert np.allclose(A.T @ a, [1, 0, 0], atol=1e-9)   # a . a* = 1, a . b* = a . c* = 0
        spectrum = entry["draws"]["spectrum"]
        assert math.isclose(sum(spectrum["weights"]), 1.0)
        assert (Path(render("stills")) / spectrum["file"]).exists()


# ---------------------------------------------------------------------------
# detector effects (reference.noise)
# ---------------------------------------------------------------------------

def test_noisy_images_come_from_reference_noise_with_the_image_seed(render, scheduler, tmp_path):
    noise = pytest.importorskip("reference.noise")
    from tools.dataset import draws
    text = (EXAMPLES / "rotation.toml").read_text().replace('"example.hkl"', f'"{EXAMPLES / "example.hkl"}"')
    toml = tmp_path / "noisy.toml"
    toml.write_text(text.replace("images = 24", "images = 3") + "\n[detector_effects]\n")
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out", "--format", "float", "--scheduler", scheduler,
                             "--no-progress")
    assert rc == 0, err
    truth = truth_of(tmp_path / "out")
    assert truth["noisy"] and truth["stored"].startswith("noisy")
    # the table's settings, with the scene's pixel size (mm) for the PSF; the map's seed from the dataset's
    assert truth["sweeps"][0]["detector_effects"] == {"pixel": 0.4}
    assert truth["calibration_seed"] == draws.seed_from(draws.dataset_stream(2024))
    effects = noise.DetectorEffects.from_mapping({"pixel": 0.4})
    photons = float_images(render("rotation"))
    calibration = noise.calibration_map(photons[0].shape, effects, truth["calibration_seed"])
    expected = [noise.apply_detector_effects(photons[k], effects, entry["draws"]["noise_seed"], calibration=calibration)
                for k, entry in enumerate(truth["images"])]
    for k, image in enumerate(float_images(tmp_path / "out")):
        assert np.array_equal(image, np.asarray(expected[k], dtype=np.float32))
    # the NeXus stack holds them as 16-bit counts, with the detector's saturation value
    import h5py
    import hdf5plugin  # noqa: F401
    rc, _, err = run_dataset(toml, "--out", tmp_path / "nx", "--format", "nexus", "--scheduler", scheduler,
                             "--no-progress")
    assert rc == 0, err
    with h5py.File(tmp_path / "nx" / "image_master.h5", "r") as f:
        assert f["/entry/instrument/detector/saturation_value"][()] == 65535
        data = f["/entry/data/data"]
        assert data.dtype == np.uint16
        for k in range(len(expected)):
            assert np.array_equal(data[k], noise.to_uint16(expected[k]))


def test_a_calibration_seed_in_the_table_is_the_maps_seed(tmp_path):
    pytest.importorskip("reference.noise")
    from tools.dataset import description, plan
    toml = tmp_path / "d.toml"
    toml.write_text(GOOD + "[detector_effects]\ncalib_seed = 99\npixel = 0.2\n")
    the_plan = plan.build(description.load(toml), "float", str(tmp_path / "out"))
    assert the_plan.calibration_seed == 99
    assert the_plan.sweeps[0].effects == {"calib_seed": 99, "pixel": 0.2}


def test_a_bad_detector_effects_key_gives_one_line(tmp_path):
    pytest.importorskip("reference.noise")
    toml = tmp_path / "bad.toml"
    toml.write_text(GOOD + "[detector_effects]\nno_such_effect = 1\n")
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "[detector_effects]" in lines[0], lines


# ---------------------------------------------------------------------------
# the console script, stopped by SIGTERM with its own local cluster
# ---------------------------------------------------------------------------

def _living_in_group(pgid):
    """Processes of group ``pgid`` that still run (zombies waiting for their reaper do not count)."""
    living = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            living.append(int(entry))
    return living


@pytest.mark.slow
def test_sigterm_stops_a_local_run_cleanly_and_it_resumes(tmp_path):
    toml = tmp_path / "slow.toml"
    toml.write_text(SLOW_ROTATION.format(hkl=EXAMPLES / "example.hkl"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tools.dataset.cli", str(toml), "--out", str(out), "--format", "smv",
               "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(manifest_of(out)["files"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    deadline = time.monotonic() + 60                  # the local workers went with it
    while _living_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _living_in_group(process.pid)
    recorded = manifest_of(out)["files"]
    before = {name: os.stat(out / name).st_mtime_ns for name in recorded}
    rc, text, err = run_dataset(toml, "--out", out, "--format", "smv", "--workers", "2", "--no-progress")
    assert rc == 0, err
    assert f"{len(recorded)} already there" in text
    assert all(os.stat(out / name).st_mtime_ns == mtime for name, mtime in before.items())


def test_a_worker_ignores_an_fdump_in_its_folder(tmp_path):
    """nanobragg_args rendered alone in an empty folder find no Fdump.bin: neither may a worker."""
    from reference.cli import main
    from tools.dataset.render import scene_for
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["-hkl", str(EXAMPLES / "example.hkl"), "-cell", "40", "50", "60", "90", "90", "90",
                     "-detpixels", "8", "-noprogress"]) == 0
    assert Path("Fdump.bin").exists()                      # in this test's own folder
    sc = scene_for(["-cell", "40", "50", "60", "90", "90", "90", "-default_F", "3", "-detpixels", "8"])
    assert sc.hkls == 0


def test_a_local_cuda_run_without_a_device_gives_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    toml = tmp_path / "good.toml"
    toml.write_text(GOOD)
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out", "--engine", "torch", "--device", "cuda",
                             "--no-progress")
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and "no CUDA device" in lines[0], lines


def test_a_worker_reads_its_structure_factors_once(tmp_path):
    """The second image with the same reflection file reads the worker's Fdump copy: the same image."""
    from tools.dataset.render import render_float, scene_for
    hkl = tmp_path / "f.hkl"
    shutil.copy(EXAMPLES / "example.hkl", hkl)
    tokens = ["-hkl", str(hkl), "-cell", "40", "50", "60", "90", "90", "90", "-N", "2", "-detpixels", "24",
              "-pixel", "0.4", "-distance", "60", "-misset", "10", "20", "30"]
    first = scene_for(tokens + ["-phi", "0", "-osc", "0.5"])
    assert first.cfg.hkl_file == str(hkl)                             # read from the file
    second = scene_for(tokens + ["-phi", "0.5", "-osc", "0.5"])
    assert second.cfg.hkl_file is None and second.cfg.dump_file.endswith(".fdump")
    again = scene_for(tokens + ["-phi", "0", "-osc", "0.5"])
    assert np.array_equal(render_float(again), render_float(first))
    assert np.array_equal(second.Fhkl, first.Fhkl) and second.interpolate == first.interpolate == 1
    # another reflection file (or the same one changed) is read afresh
    text = hkl.read_text()
    hkl.write_text(text.replace("\n", "\n", 1) + "0 0 1 5\n")
    os.utime(hkl, ns=(1, 1))
    assert scene_for(tokens + ["-phi", "0", "-osc", "0.5"]).cfg.hkl_file == str(hkl)


SWEEPS = """
[scene]
cell = [50, 60, 70, 90, 90, 90]
default_F = 10
N = 3
distance = 60
detpixels = 24
pixel = 0.5
[[rotation]]
osc = 1
images = 3
[[rotation]]
start = 90
osc = 2
images = 2
name = "kappa"
scene = { distance = 80, misset = [0, 0, 30] }
"""


def test_several_sweeps_each_with_its_own_flags_and_master(scheduler, tmp_path):
    import h5py
    import hdf5plugin  # noqa: F401
    toml = tmp_path / "sweeps.toml"
    toml.write_text(SWEEPS)
    rc, _, err = run_dataset(toml, "--out", tmp_path / "out", "--format", "nexus", "--scheduler", scheduler,
                             "--no-progress")
    assert rc == 0, err
    truth = truth_of(tmp_path / "out")
    assert [s["name"] for s in truth["sweeps"]] == ["sweep1", "kappa"]
    assert [s["master"] for s in truth["sweeps"]] == ["sweep1_master.h5", "kappa_master.h5"]
    assert [e["index"] for e in truth["images"]] == [0, 1, 2, 3, 4]
    assert [e["phi_start_deg"] for e in truth["images"]] == [0.0, 1.0, 2.0, 90.0, 92.0]
    kappa = truth["images"][3]["nanobragg_args"]
    assert kappa.count("-distance") == 1 and kappa[kappa.index("-distance") + 1] == "80"
    assert truth["sweeps"][1]["geometry"]["distance_m"] == 0.08
    for sweep, frames in (("sweep1", 3), ("kappa", 2)):
        with h5py.File(tmp_path / "out" / f"{sweep}_master.h5", "r") as f:
            assert f["/entry/data/data"].shape == (frames, 24, 24)
            assert math.isclose(f["/entry/instrument/detector/distance"][()], 0.06 if sweep == "sweep1" else 0.08)
