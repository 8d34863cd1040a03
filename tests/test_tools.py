"""Tests for the developer tools: tools.benchmark, tools.compare_c and tools.trace_pixel.

None of the default tests needs the C program.  The few that run it are skipped
unless NB_C_BIN names the user's own build of nanoBragg.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tools import benchmark as B
from tools import compare_c as C
from tools import trace_pixel as T

C_BIN = os.environ.get("NB_C_BIN")
needs_c = pytest.mark.skipif(not C_BIN, reason="needs the C nanoBragg binary: set NB_C_BIN=/path/to/nanoBragg")

TINY = ["-cell", "50", "60", "70", "90", "90", "90", "-default_F", "10", "-N", "3", "-detpixels", "16",
        "-distance", "50"]
TINY_WORKLOAD = B.Workload("t", "tiny", tuple(TINY), threads=1)


# ---------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------

def test_benchmark_defaults():
    opts = B.parse_args([])
    assert opts.repeat == 3 and opts.workload == "all" and opts.threads is None
    assert opts.engines == ["c", "numba"] and not opts.markdown


def test_benchmark_options():
    opts = B.parse_args(["--engines", "numba,torch,numba", "--threads", "4", "--repeat", "2", "--workload", "b",
                         "--markdown", "--c-bin", "/x/nanoBragg"])
    assert opts.engines == ["numba", "torch"]
    assert (opts.threads, opts.repeat, opts.workload, opts.markdown, opts.c_bin) == (4, 2, "b", True, "/x/nanoBragg")


@pytest.mark.parametrize("argv", [["--engines", "fortran"], ["--repeat", "0"], ["--workload", "c"],
                                  ["--threads", "0"]])
def test_benchmark_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        B.parse_args(argv)


def test_workloads_match_the_brief():
    a, b = B.WORKLOADS["a"], B.WORKLOADS["b"]
    assert a.threads == 1 and b.threads == 2
    assert "1024" in a.args and "-phisteps" in a.args and not a.inputs
    assert b.inputs == ("A.mat", "P1.hkl") and "-mosaic_dom" in b.args
    cmd, env = B.command_for("c", a, "/x/nanoBragg", 1)
    assert cmd[0] == "/x/nanoBragg" and env["OMP_NUM_THREADS"] == "1"
    assert cmd[-len(B.OUTPUT_ARGS):] == B.OUTPUT_ARGS
    cmd, env = B.command_for("torch", b, None, 2)
    assert cmd[1:3] == ["-m", "reference.cli"] and cmd[-4:] == ["-engine", "torch", "-dtype", "float32"]
    assert env["NUMBA_NUM_THREADS"] == "2" and str(C.REPO_ROOT) in env["PYTHONPATH"].split(os.pathsep)


def test_light_workload_is_a_with_one_step():
    a, light = B.WORKLOADS["a"], B.WORKLOADS["light"]
    assert light.threads == 2 and not light.inputs
    assert "-oversample" not in light.args and "-phisteps" not in light.args
    assert light.args == a.args[:light.args.index("-detpixels") + 2]
    assert B.parse_args(["--workload", "light", "--busy", "1"]).busy == 1


def test_busy_processes_spin_and_stop():
    with B.busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        time.sleep(0.3)
        with open(f"/proc/{procs[0].pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[11]) + int(fields[12]) > 0            # utime + stime: it spins
    assert all(p.poll() is not None for p in procs)


def _fake_runner(seconds, image, calls):
    """A runner that writes ``image`` as float.bin and reports a fixed time per engine."""
    def run(cmd, folder, env):
        calls.append((list(cmd), env.get("OMP_NUM_THREADS"), env.get("NUMBA_NUM_THREADS")))
        image.astype("<f4").tofile(Path(folder) / "float.bin")
        engine = "c" if cmd[0] == "/fake/nanoBragg" else cmd[cmd.index("-engine") + 1]
        return B.Timing(seconds[engine], seconds[engine] / 2)
    return run


def test_benchmark_with_fake_runner():
    opts = B.parse_args(["--engines", "c,numba,torch", "--repeat", "2"])
    opts.c_bin = "/fake/nanoBragg"
    calls = []
    image = np.linspace(0.0, 5.0, 64, dtype=np.float32)
    rows, notes = B.benchmark(opts, runner=_fake_runner({"c": 2.0, "numba": 2.5}, image, calls),
                              workloads={"t": TINY_WORKLOAD}, availability=lambda e: "not importable (test)",
                              targets={"numba": {"t": 1.25}, "torch": {"t": 0.5}})
    assert [r.engine for r in rows] == ["c", "numba"]
    c_row, ours = rows
    assert c_row.times == [2.0, 2.0] and c_row.ratio == pytest.approx(1.0)
    assert ours.ratio == pytest.approx(1.25) and ours.max_rel == 0.0 and ours.checked == "-c_parity run"
    # one warm-up + two timed runs each, plus the -c_parity check run of ours
    assert len(calls) == 2 * 3 + 1 and "-c_parity" in calls[-1][0]
    assert all(omp == "1" for _, omp, _ in calls)
    assert any("torch rows skipped" in n for n in notes)
    assert any("workload t: target numba <= 1.25x C met (1.25x)" in n for n in notes)
    assert not any("target torch" in n for n in notes)          # no torch row, no verdict

    plain = B.format_table(rows, notes)
    lines = plain.splitlines()
    assert lines[0].startswith("workload") and "ratio vs C" in lines[0]
    assert len({len(line) for line in lines[:4]}) == 1          # aligned columns
    assert "1.25x" in plain and "0 (ok)" in plain and "(reference)" in plain
    md = B.format_table(rows, notes, markdown=True)
    assert md.splitlines()[0].startswith("| workload |") and md.splitlines()[1].startswith("|---|")
    assert all(line.count("|") == len(B.COLUMNS) + 1 for line in md.splitlines()[:4])


def test_benchmark_flags_a_parity_failure():
    opts = B.parse_args(["--repeat", "1"])
    opts.c_bin = "/fake/nanoBragg"
    images = iter([np.ones(8, np.float32)] * 4 + [np.full(8, 1.001, np.float32)])

    def run(cmd, folder, env):
        next(images).tofile(Path(folder) / "float.bin")
        return B.Timing(1.0, 1.0)

    rows, notes = B.benchmark(opts, runner=run, workloads={"t": TINY_WORKLOAD})
    assert rows[1].max_rel == pytest.approx(1e-3, rel=1e-3)
    assert "FAIL" in B.format_table(rows, notes)
    assert any("differs from C's" in n for n in notes)


def test_benchmark_without_c_times_ours_only():
    opts = B.parse_args(["--repeat", "1"])
    opts.c_bin = None
    rows, notes = B.benchmark(opts, runner=_fake_runner({"numba": 1.0}, np.zeros(4, np.float32), []),
                              workloads={"t": TINY_WORKLOAD})
    assert [r.engine for r in rows] == ["numba"] and rows[0].ratio is None and rows[0].max_rel is None
    assert any("no C binary" in n for n in notes)
    assert "-" in B.format_table(rows, notes).splitlines()[2]


def test_benchmark_skips_workload_without_inputs(tmp_path):
    opts = B.parse_args(["--repeat", "1", "--workload", "b", "--inputs", str(tmp_path)])
    opts.c_bin = None
    rows, notes = B.benchmark(opts, runner=_fake_runner({"numba": 1.0}, np.zeros(4, np.float32), []))
    assert rows == [] and any("workload b skipped" in n for n in notes)


def test_benchmark_times_a_tiny_real_run(capsys):
    opts = B.parse_args(["--repeat", "1", "--engines", "numba"])
    opts.c_bin = None
    rows, _ = B.benchmark(opts, workloads={"t": TINY_WORKLOAD})
    assert len(rows) == 1 and len(rows[0].times) == 1 and 0.0 < rows[0].median < 120.0


@needs_c
def test_benchmark_tiny_against_c():
    opts = B.parse_args(["--repeat", "1", "--c-bin", C_BIN])
    rows, notes = B.benchmark(opts, workloads={"t": TINY_WORKLOAD})
    assert [r.engine for r in rows] == ["c", "numba"]
    assert rows[1].max_rel is not None and rows[1].max_rel <= B.PARITY_RTOL, notes


# ---------------------------------------------------------------------------
# compare_c
# ---------------------------------------------------------------------------

def test_compare_float_identical_and_perturbed():
    rng = np.random.default_rng(1)
    ref = rng.random((20, 30)).astype(np.float32) * 100
    same = C.compare_float(ref.copy(), ref)
    assert same["max_abs"] == 0 and same["max_rel"] == 0 and same["close_fraction"] == 1.0
    assert same["correlation"] == pytest.approx(1.0)

    ours = ref.astype(np.float64).copy()
    ours[3, 4] *= 1.001                               # one pixel off by 1e-3
    ours[5, 6] *= 1 + 5e-6                            # one within tolerance
    s = C.compare_float(ours, ref)
    assert s["max_rel"] == pytest.approx(1e-3, rel=1e-6)
    assert s["close_fraction"] == pytest.approx(1 - 1 / ref.size)
    assert 0.99999 < s["correlation"] < 1.0


def test_compare_float_empty_pixels_and_shapes():
    ref = np.zeros(10)
    ref[0] = 1000.0
    ours = ref.copy()
    ours[5] = 5e-5                                    # 5e-8 of the max: inside the absolute floor
    s = C.compare_float(ours, ref)
    assert s["close_fraction"] == 1.0 and s["max_rel"] == pytest.approx(0.5)
    assert "shape_mismatch" in C.compare_float(np.zeros(3), np.zeros(4))
    assert C.compare_float(np.zeros(4), np.zeros(4))["correlation"] == 1.0


def test_int_noise_and_header_comparisons():
    a = np.array([[0, 10, 65535]], np.uint16)
    assert C.within_counts(a, np.array([[1, 11, 65534]], np.uint16)) == 1.0
    assert C.within_counts(a, np.array([[2, 10, 65535]], np.uint16)) == pytest.approx(2 / 3)
    assert C.identical_fraction(a, np.array([[0, 10, 0]], np.uint16)) == pytest.approx(2 / 3)
    diffs = C.header_differences({"SIZE1": "4", "DISTANCE": "100", "X": "1"}, {"SIZE1": "4", "DISTANCE": "100.1"})
    assert diffs == [("DISTANCE", "100", "100.1"), ("X", "1", None)]


def test_stdout_diff_ignores_progress():
    c_text = "a\n0% done\n5% done\nmax_I = 1\nlast\n"
    ours = "a\nmax_I = 2\nlast\n\n"
    diff = C.stdout_diff(ours, c_text)
    assert "-max_I = 1" in diff and "+max_I = 2" in diff
    assert not any("done" in line for line in diff)
    assert C.stdout_diff("a\nb\n", "a\n 10% done\nb") == []


def _write_smv(path, data, extra=""):
    slow, fast = data.shape
    text = (f"{{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
            f"SIZE1={fast};\nSIZE2={slow};\n{extra}}}\f").encode()
    path.write_bytes(text.ljust(512, b" ") + data.astype("<u2").tobytes())


def _fake_run(folder, label, image, ints, stdout="", extra=""):
    folder.mkdir()
    image.astype("<f4").tofile(folder / "float.bin")
    _write_smv(folder / "int.img", ints, extra)
    _write_smv(folder / "noise.img", ints, extra)
    return C.RunResult(label, folder, 0, stdout, "", C.output_files(["-floatfile", "float.bin", "-intfile", "int.img",
                                                                     "-noisefile", "noise.img"]))


def test_compare_runs_on_synthetic_outputs(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    ints = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ref = _fake_run(tmp_path / "c", "C", image, ints, "x\nmax_I = 110\n", "DISTANCE=100;\n")
    ours = _fake_run(tmp_path / "ours", "ours", image, ints, "x\nmax_I = 110\n", "DISTANCE=100;\n")
    cmp = C.compare_runs(ours, ref)
    assert cmp.failures() == [] and cmp.int_within_1 == 1.0 and cmp.noise_identical == 1.0
    assert cmp.float_stats["max_rel"] == 0 and cmp.header_bytes_equal
    assert "PARITY: yes" in C.format_comparison(cmp)

    bad = _fake_run(tmp_path / "bad", "ours", image * 1.01, ints + 3, "x\nmax_I = 111\n", "DISTANCE=101;\n")
    cmp = C.compare_runs(bad, ref)
    fails = "\n".join(cmp.failures())
    for what in ("float image within tolerance", "int image", "SMV headers differ", "noise image"):
        assert what in fails
    report = C.format_comparison(cmp)
    assert "PARITY: NO" in report and "DISTANCE: '101' | '100'" in report and "+max_I = 111" in report

    unseeded = C.compare_runs(bad, ref, seeded=False)
    assert not any("noise" in f for f in unseeded.failures())


def test_output_files_and_prepare_folder(tmp_path):
    assert C.output_files([]) == C.DEFAULT_OUTPUTS
    assert C.output_files(["-floatimage", "a.bin", "-intfile", "b.img"])["float"] == "a.bin"
    cwd = tmp_path / "cwd"
    (cwd / "inputs").mkdir(parents=True)
    (cwd / "inputs" / "A.mat").write_text("1")
    (cwd / "float.bin").write_text("old output, must not be linked")
    (tmp_path / "up.hkl").write_text("1 2 3 4")
    run = tmp_path / "run"
    run.mkdir()
    tokens = ["-mat", "inputs/A.mat", "-hkl", "../up.hkl", "-floatfile", "float.bin", "-intfile", "out/int.img",
              "-distance", "100", "-misset", "-5", "0", "0"]
    args = C.prepare_folder(tokens, run, cwd)
    assert (run / "inputs").is_symlink() and (run / "inputs" / "A.mat").read_text() == "1"
    assert args[3] == str((tmp_path / "up.hkl").resolve())
    assert not (run / "float.bin").exists() and (run / "out").is_dir()
    assert args[:3] == tokens[:3] and args[4:] == tokens[4:]


def test_compare_c_needs_a_binary(monkeypatch, capsys):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    assert C.main(["--", *TINY]) == 2
    assert "no C binary" in capsys.readouterr().err
    assert C.main(["--c-bin", "/nonexistent/nanoBragg", "--", *TINY]) == 2


@needs_c
def test_compare_c_tiny_case_has_parity(capsys):
    status = C.main(["--c-bin", C_BIN, "--parity", "--", *TINY, "-seed", "5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PARITY: yes" in out


# ---------------------------------------------------------------------------
# trace_pixel
# ---------------------------------------------------------------------------

def test_trace_pixel_matches_the_image():
    trace = T.trace_ours(3, 5, TINY)
    assert trace.header.startswith("TRACE pixel slow=3 fast=5")
    names = {line.split()[1] for line in trace.lines}
    for name in ("pixel_value", "F_latt", "F_cell", "omega", "polar"):
        assert name in names
    assert trace.image.shape == (16, 16)
    assert trace.values["pixel_value"] == pytest.approx(float(trace.image[3, 5]), rel=1e-6)
    assert trace.values["pixel_value"] > 0 and trace.values["F_cell"] == 10.0


def test_trace_pixel_main_without_c(monkeypatch, capsys):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    assert T.main(["2", "7", "--", *TINY]) == 0
    out = capsys.readouterr().out
    assert "TRACE pixel_value" in out and "float image at slow=2 fast=7" in out
    assert not any(line and not line.startswith(("TRACE", "float image")) for line in out.splitlines())


C_PRINTOUT = """\
  2x2 pixel oversample steps
   5    3 : stol = 6.17419e+07 or 0.00617419
at 0.05 0.000525 -0.000325
hkl= -0.003812 0.629952 -0.454965  hkl0= 0 1 0
 F_cell=10  F_latt=1.02024   I = 332.934
I/steps     83.23362209
polar      0.9999057678
omega   3.998869266e-06
capfrac               1
pixel   0.0003328089952
real-space cell vectors (Angstrom):
"""


def test_parse_c_printout_and_side_by_side():
    c = T.parse_c_printout(C_PRINTOUT, slow=3, fast=5)
    assert c["stol"] == 6.17419e7 and c["k0"] == 1 and c["F_latt"] == 1.02024 and c["I_sum"] == 332.934
    assert c["pixel_value"] == 0.0003328089952 and c["pixel_pos_z"] == -0.000325
    assert T.parse_c_printout(C_PRINTOUT, slow=5, fast=3) == {}
    ours = {"stol": 61741914.456, "F_latt": 1.0202354, "pixel_value": 0.000332809009}
    rows = T.side_by_side(ours, c)
    assert [r[0] for r in rows][:1] == ["stol [1/m]"] and len(rows) == len(T.SHARED)
    by_label = {r[0]: r for r in rows}
    assert by_label["stol [1/m]"][3] < 1e-6 and by_label["h"][1] is None and by_label["h"][3] is None
    text = T.format_side_by_side(rows)
    assert "pixel value" in text and "C (printout)" in text


def test_parse_trace_lines():
    header, values = T.parse_trace(["TRACE pixel slow=1 fast=2 engine=numba", "TRACE omega 1.5e-06 sr",
                                    "TRACE h -0.25 ", "other line"])
    assert header.endswith("engine=numba") and values == {"omega": 1.5e-06, "h": -0.25}


@needs_c
def test_trace_pixel_against_c(capsys):
    assert T.main(["3", "5", "--c-bin", C_BIN, "--", *TINY]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("F_cell", "pixel value", "omega"))]
    assert len(rows) == 3
    for line in rows:
        assert float(line.split()[-1]) < 1e-5, line


def test_benchmark_reports_a_missed_target_and_times_floors():
    """A ratio above its goal is NOT met; the floor rows run their own code and have no image check."""
    opts = B.parse_args(["--engines", "c,numba,numba-parity,numba-floor", "--repeat", "1"])
    opts.c_bin = "/fake/nanoBragg"
    calls = []

    def run(cmd, folder, env):
        calls.append(list(cmd))
        if cmd[1] == "-c":
            assert cmd[2] == B.FLOOR_CODE["numba-floor"]
            return B.Timing(0.5, 0.5)
        np.ones(8, np.float32).tofile(Path(folder) / "float.bin")
        return B.Timing(3.0 if "-engine" in cmd and "-c_parity" not in cmd else 2.0, 1.0)

    rows, notes = B.benchmark(opts, runner=run, workloads={"t": TINY_WORKLOAD},
                              targets={"numba": {"t": 1.25}, "numba-parity": {"t": 1.25}})
    by_engine = {r.engine: r for r in rows}
    assert by_engine["numba-floor"].ratio == pytest.approx(0.25) and by_engine["numba-floor"].max_rel is None
    assert by_engine["numba-parity"].max_rel == 0.0
    assert any("target numba <= 1.25x C NOT met (1.50x)" in n for n in notes)
    assert any("target numba-parity <= 1.25x C met (1.00x)" in n for n in notes)


def test_numba_floor_code_runs():
    """The floor's code is a real, quick process."""
    proc = subprocess.run([sys.executable, "-c", B.FLOOR_CODE["numba-floor"]], env=C.python_env(1),
                          capture_output=True, text=True, cwd=C.REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
