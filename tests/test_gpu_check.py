"""tools.gpu_check: its CPU dry run end to end, and each step's verdicts on made-up results.

The dry run is what this machine can run of the GPU check (no CUDA here): the
same four steps on -device cpu with tiny sizes.  The other tests feed the
steps wrong images, wrong gradients, failing pytest reports and a spent
budget, and check that the table says so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import corpus
from tools import gpu_check as G

STEPS = ("cuda tests", "corpus", "gradients", "benchmark")


def _plan(tmp_path, **changes) -> G.Plan:
    plan = G.Plan(device="cpu", dry_run=True, corpus=corpus.CORPUS, inputs=corpus.CORPUS / "inputs", c_bin=None,
                  repeat=1, budget_s=60.0, tmpdir=str(tmp_path))
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


# ---------------------------------------------------------------------------
# the dry run, end to end
# ---------------------------------------------------------------------------

def test_cpu_dry_run_table(tmp_path, capsys):
    status = G.main(["--cpu-dry-run", "--out", str(tmp_path / "out"), "--tmpdir", str(tmp_path)])
    table = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert (tmp_path / "out" / "gpu_check.md").read_text().strip() == table.strip()
    rows = data["rows"]
    failed = [r for r in rows if r["result"] == "FAIL"]
    assert status == 0 and not failed and not data["failed"], failed
    assert data["header"]["mode"].startswith("CPU DRY RUN")
    assert [s for s in STEPS if any(r["step"] == s for r in rows)] == list(STEPS)
    assert table.count("\n| ") == len(rows) + 1          # one Markdown line per row, plus the header

    cuda = [r for r in rows if r["step"] == "cuda tests"]
    assert len(cuda) == 1 and cuda[0]["result"] == "skip" and " skipped" in cuda[0]["detail"]

    if corpus.available():
        runs = {r["check"].split(",")[0]: r for r in rows if r["step"] == "corpus"}
        assert set(runs) == {"float64 spec mode (no quirk)", "float64 -c_parity", "float32 spec mode (no quirk)",
                             "float32 -c_parity"}
        assert all(r["result"] == "pass" for r in runs.values())
        # three cases; pix0_vector is a quirk case, so spec mode runs two
        assert runs["float64 -c_parity"]["detail"].startswith("3/3 runs agree")
        assert runs["float64 spec mode (no quirk)"]["detail"].startswith("2/2 runs agree")

    grads = [r for r in rows if r["step"] == "gradients"]
    assert [r["result"] for r in grads] == ["pass", "pass"]
    assert all("16 parameters finite" in r["detail"] for r in grads)

    bench = {r["check"]: r for r in rows if r["step"] == "benchmark"}
    for name in ("a", "light") + (("heavy", "b") if corpus.available() else ()):
        title = f"{name} (2 threads)"
        assert bench[f"{title}: reference (numba, CPU)"]["result"] == "info"
        timed = bench[f"{title}: torch cpu float32"]
        assert timed["result"] == "pass" and timed["seconds"] > 0 and timed["speedup"].endswith("x")
        assert "image vs baseline" in timed["detail"]
    if corpus.available():
        assert "EXTRAPOLATED from rows" in bench["heavy (2 threads): reference (numba, CPU)"]["detail"]
        assert bench["heavy (2 threads): torch cpu float64"]["result"] == "pass"
        render_only = [c for c in bench if "render only" in c]
        assert len(render_only) == 2 and all(bench[c]["seconds"] > 0 for c in render_only)
    # every benchmark scene is labelled as the scaled-down dry-run version
    described = [n for n in data["notes"] if n.startswith("workload ")]
    assert described and all("DRY RUN, scaled down" in n for n in described)
    assert any("no C binary" in n for n in data["notes"])


# ---------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------

def test_scaled_keeps_the_detector_size():
    small = G.scaled(G.HEAVY, 128, oversample=2, mosaic_dom=2, phisteps=2)
    args = list(small.args)
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert (value("-detpixels"), value("-pixel"), value("-oversample"), value("-mosaic_dom"),
            value("-phisteps")) == ("128", "0.8", "2", "2", "2")
    assert small.description.startswith("scaled down to 128^2") and small.inputs == G.HEAVY.inputs
    assert all(w.description.startswith("DRY RUN, scaled down") for w in G.workloads(True))
    light = list(G.scaled(G.LIGHT, 256).args)            # no -pixel: C's default 0.1 mm is scaled
    assert light[light.index("-pixel") + 1] == "0.4"


def test_heavy_scene_is_the_issues():
    args = list(G.HEAVY.args)
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    assert (value("-detpixels"), value("-oversample"), value("-mosaic_dom"), value("-phisteps")) == \
        ("2048", "4", "10", "5")
    assert [w.name for w in G.workloads(False)] == ["heavy", "a", "b", "light"]


def test_band_and_extrapolation():
    assert G.band(G.HEAVY, 64) == (992, 1055)
    assert G.roi_flags(G.HEAVY, 992, 1055) == ["-roi", "0", "2047", "992", "1055"]
    # 1 s of start-up, 1 s more for 1/32 of the rows: 1 + 32 s in all
    assert G.extrapolate(1.0, 2.0, 1 / 32) == pytest.approx(33.0)
    assert G.extrapolate(1.0, 0.9, 1 / 32) == 1.0      # noise cannot make the work negative


def test_image_check_bounds():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 100, 64 * 64).astype(np.float32)
    assert G.image_check(ref.copy(), ref, "float32", (64, 64))[0]
    off = ref.copy()
    off[5] += 2e-5 * ref.max()                      # twice the float32 bound of 1e-5 of the maximum
    assert not G.image_check(off, ref, "float32", (64, 64))[0]
    assert G.image_check(off, ref, "float32", (64, 64), rows=(1, 10))[0]    # pixel 5 is in row 0
    assert not G.image_check(None, ref, "float64", (64, 64))[0]


def test_deadline(tmp_path):
    now = [100.0]
    d = G.Deadline(10.0, clock=lambda: now[0])
    assert d.left() == 10.0 and d.within(3.0).left() == 3.0 and d.within(30.0).left() == 10.0
    now[0] = 111.0
    assert d.left() < 0


# ---------------------------------------------------------------------------
# verdicts on made-up results
# ---------------------------------------------------------------------------

def test_spent_budget_skips_every_step(tmp_path):
    ticks = iter([0.0] + [1000.0] * 50)                  # the budget is gone once the run starts
    report = G.run_all(_plan(tmp_path, budget_s=10.0), clock=lambda: next(ticks))
    assert [(r.step, r.result) for r in report.rows] == [(s, "skip") for s in STEPS]
    assert all("budget ran out" in r.detail for r in report.rows) and not report.failed


def test_benchmark_out_of_time_rows(tmp_path):
    if not corpus.available():
        pytest.skip(corpus.SKIP_REASON)
    report = G.Report()
    G.step_benchmark(_plan(tmp_path), G.Deadline(-1.0), report)
    assert len(report.rows) == 4
    assert all(r.result == "skip" and "out of time" in r.detail for r in report.rows)


def _fake_pytest(monkeypatch, counts: dict, stdout=""):
    """subprocess.run that writes a JUnit report with ``counts`` where pytest was told to."""
    def run(cmd, **kwargs):
        xml = next(a.split("=", 1)[1] for a in cmd if a.startswith("--junitxml="))
        attrs = " ".join(f'{k}="{v}"' for k, v in counts.items())
        Path(xml).write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" {attrs}/></testsuites>')
        code = 1 if counts.get("failures") or counts.get("errors") else 0
        return subprocess.CompletedProcess(cmd, code, stdout, "")
    monkeypatch.setattr(G.subprocess, "run", run)


@pytest.mark.parametrize("counts,dry_run,expected", [
    ({"tests": 5, "failures": 0, "errors": 0, "skipped": 0}, False, "pass"),
    ({"tests": 5, "failures": 1, "errors": 0, "skipped": 0}, False, "FAIL"),
    ({"tests": 5, "failures": 0, "errors": 0, "skipped": 5}, False, "FAIL"),  # a CUDA machine must run them
    ({"tests": 5, "failures": 0, "errors": 0, "skipped": 5}, True, "skip"),
    ({"tests": 5, "failures": 0, "errors": 1, "skipped": 4}, True, "FAIL"),
])
def test_cuda_test_verdicts(tmp_path, monkeypatch, counts, dry_run, expected):
    _fake_pytest(monkeypatch, counts, stdout="FAILED tests/test_cuda.py::test_x - boom\n")
    report = G.Report()
    G.step_cuda_tests(_plan(tmp_path, dry_run=dry_run), G.Deadline(60.0), report)
    assert [r.result for r in report.rows] == [expected]


def test_corpus_step_reports_a_wrong_image(tmp_path, monkeypatch):
    if not corpus.available():
        pytest.skip(corpus.SKIP_REASON)
    real = corpus.run_ours

    def off_by_a_little(args, workdir, shape):
        out = real(args, workdir, shape)
        if "float32" in args:                                   # float32 two bounds away from float64
            out.float_image = out.float_image + np.float32(2e-5) * out.float_image.max()
        else:                                                   # float64 off C's image by 1e-4
            out.float_image = out.float_image * np.float32(1 + 1e-4)
        return out
    monkeypatch.setattr(corpus, "run_ours", off_by_a_little)
    report = G.Report()
    G.step_corpus(_plan(tmp_path, cases=("cubic_basic",)), G.Deadline(60.0), report)
    assert [r.result for r in report.rows] == ["FAIL"] * 4
    assert "0/1 runs agree" in report.rows[0].detail and "float image within tolerance" in report.rows[0].detail
    assert "of the image maximum" in report.rows[2].detail


def test_corpus_step_without_a_corpus(tmp_path):
    report = G.Report()
    G.step_corpus(_plan(tmp_path, corpus=tmp_path / "nowhere"), G.Deadline(60.0), report)
    assert [r.result for r in report.rows] == ["skip"] and "--corpus" in report.rows[0].detail


def test_gradient_step_flags_a_wrong_gradient(tmp_path, monkeypatch):
    real = G.gradients
    calls = []

    def second_call_off(scene, device, dtype):
        grads = real(scene, device, dtype)
        calls.append(dtype)
        if len(calls) == 2:                  # the device's float64 run (after the CPU reference)
            grads["distance_mm"] = grads["distance_mm"] * (1 + 1e-7)
        if len(calls) == 3:                  # the device's float32 run
            grads["misset"] = grads["misset"] * float("nan")
            grads["cell_a"] = grads["cell_a"] * 1.01
        return grads
    monkeypatch.setattr(G, "gradients", second_call_off)
    report = G.Report()
    G.step_gradients(_plan(tmp_path), G.Deadline(60.0), report)
    assert [r.result for r in report.rows] == ["FAIL", "FAIL"]
    assert "distance_mm" in report.rows[0].detail
    assert "misset: not finite" in report.rows[1].detail and "cell_a: 0.01 of its max" in report.rows[1].detail


def test_usage_errors(tmp_path, capsys):
    assert G.main(["--cpu-dry-run", "--corpus", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gpu_check: error: --corpus") and "Traceback" not in "".join(err)
    for argv in (["--budget-s", "0"], ["--repeat", "0"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            G.parse_args(argv)
