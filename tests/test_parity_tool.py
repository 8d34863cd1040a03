"""The parity tool finds an injected bug, shrinks it to its feature, and passes a clean program.

The programs under test are small wrappers around our own command line (the
C program is never needed): one clean, one that ignores ``-dispersion``.
Each run of a wrapper pays Python's start-up, so these tests use few scenes.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from reference.flags import is_number
from tools import parity
from tools.scenes import FLOAT_FILE, INT_FILE, NOISE_FILE, PGM_FILE

OUTPUT_FLAGS = {"-floatfile", "-intfile", "-noisefile", "-pgmfile", "-nonoise", "-nopgm"}


def _serve(address: str, body: str) -> None:
    """Answer program runs with our CLI in this process (no start-up cost per run).

    Each request is (argv, working folder); ``body`` may edit ``argv`` first:
    that is where a test injects its bug.  Runs one request at a time.
    """
    import contextlib
    import io
    import os
    from multiprocessing.connection import Listener

    from reference.cli import main
    with Listener(address, family="AF_UNIX") as listener:
        while True:
            with listener.accept() as conn:
                request = conn.recv()
                if request is None:
                    return
                argv, folder = request
                namespace = {"argv": list(argv)}
                exec(textwrap.dedent(body), namespace)
                out, err = io.StringIO(), io.StringIO()
                os.chdir(folder)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    status = main(["-c_parity", "-noprogress"] + namespace["argv"])
                conn.send((status, out.getvalue(), err.getvalue()))


CLIENT = """\
import os, sys
from multiprocessing.connection import Client
with Client({address!r}, family="AF_UNIX") as conn:
    conn.send((sys.argv[1:], os.getcwd()))
    status, out, err = conn.recv()
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(status)
"""


@pytest.fixture
def program(tmp_path):
    """Make a nanoBragg-compatible program: our CLI with -c_parity, after a ``body`` that edits ``argv``.

    The program is a small client of a server process that keeps our CLI
    loaded, so that a run costs a Python start, not a Numba start.
    """
    import multiprocessing
    from multiprocessing.connection import Client
    servers = []

    def make(body: str = "") -> str:
        address = str(tmp_path / f"server-{len(servers)}.sock")
        server = multiprocessing.get_context("spawn").Process(target=_serve, args=(address, body), daemon=True)
        server.start()
        servers.append((server, address))
        client = tmp_path / f"program-{len(servers)}.py"
        client.write_text(CLIENT.format(address=address))
        for _ in range(600):                       # the server needs a moment to import and listen
            if os.path.exists(address):
                break
            time.sleep(0.05)
        return f"{sys.executable} {client}"

    yield make
    for server, address in servers:
        try:
            with Client(address, family="AF_UNIX") as conn:
                conn.send(None)
        except OSError:
            pass
        server.join(timeout=10)
        if server.is_alive():
            server.kill()


def _flags(command: str) -> list:
    return [t for t in command.split() if t.startswith("-") and not is_number(t)]


def test_clean_program_agrees(tmp_path, program):
    status = parity.main(["--program", program(), "--count", "30", "--seed", "5", "--out", str(tmp_path / "out"),
                          "--noprogress"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert status == 0
    assert report["scenes"] == 30 and report["agree"] == 30 and report["failures"] == []
    assert (tmp_path / "out" / "report.md").read_text().startswith("# nanobragg-parity report")


def test_injected_bug_is_found_and_shrunk_to_its_feature(tmp_path, program):
    # the bug: this program reads -distance 1% long
    buggy = program("""
        if "-distance" in argv:
            i = argv.index("-distance")
            argv[i + 1] = str(float(argv[i + 1]) * 1.01)
    """)
    status = parity.main(["--program", buggy, "--count", "20", "--seed", "3", "--shrink-time", "120",
                          "--out", str(tmp_path / "out"), "--noprogress"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert status == 1
    assert report["disagree"] >= 1 and len(report["failures"]) >= 1
    failure = report["failures"][0]
    flags = _flags(failure["command"])
    assert "-distance" in flags
    others = [f for f in flags if f not in OUTPUT_FLAGS | {"-distance"}]
    assert len(others) <= 4, failure["command"]
    # the failure is saved as a replayable case, and replaying it fails again
    assert parity.main(["--program", buggy, "--replay", failure["replay"]]) == 1


def test_crashing_programs_are_reported_not_fatal(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    status = parity.main(["--program", f"{sys.executable} {crash}", "--count", "2", "--shrink-time", "5", "--out",
                          str(tmp_path / "out"), "--noprogress"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert status == 1
    assert report["failures"][0]["kind"] == "crash"


def test_usage_errors_exit_2(tmp_path, capsys):
    assert parity.main(["--count", "3"]) == 2
    assert parity.main(["--program", "no-such-program-anywhere"]) == 2
    assert parity.main(["--program", "true", "--count", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("nanobragg-parity: error:") == 3


def test_output_file_names_are_the_generators():
    tokens = ["-floatfile", FLOAT_FILE, "-intfile", INT_FILE, "-noisefile", NOISE_FILE, "-pgmfile", PGM_FILE]
    assert parity.output_files(tokens) == {"float": FLOAT_FILE, "int": INT_FILE, "noise": NOISE_FILE,
                                           "pgm": PGM_FILE}


def test_printed_statistics_compare_overflowed_runs_as_equal():
    from tools.compare_outputs import _same_statistic
    assert _same_statistic(float("inf"), float("inf"), 0.0)
    assert _same_statistic(float("nan"), float("nan"), 0.0)
    assert _same_statistic(1.0, 1.0 + 1e-6, 0.0)
    assert not _same_statistic(1.0, 1.001, 0.0)
    assert not _same_statistic(float("inf"), 1.0, 0.0)


def _c_style_smv(path, declared: int, pad_to: int, pixels):
    """An SMV file as C writes it: the text, spaces only up to ``pad_to``, then the pixels."""
    import numpy as np
    text = "{\nHEADER_BYTES=%d;\nSIZE1=%d;\nSIZE2=%d;\nCOMMENT=%s;\n}\f" % (
        declared, pixels.shape[1], pixels.shape[0], "x" * 560)
    path.write_bytes(text.encode().ljust(pad_to, b" ") + pixels.astype("<u2").tobytes())


def test_header_overflow_is_a_deliberate_difference_not_a_failure(tmp_path):
    """quirk (o): C's long header declares 512 bytes and its pixels follow the text directly."""
    import numpy as np
    from tools.compare_outputs import _headers_agree, read_smv
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    _c_style_smv(tmp_path / "c.img", 512, 0, pixels)
    _c_style_smv(tmp_path / "ours.img", 1024, 1024, pixels)
    c, ours = read_smv(str(tmp_path / "c.img")), read_smv(str(tmp_path / "ours.img"))
    assert not c.consistent and ours.consistent
    np.testing.assert_array_equal(c.pixels, pixels)          # read from the end of C's file
    deliberate = []
    assert _headers_agree(c, ours, deliberate, "int image") == []
    assert len(deliberate) == 1
    # two files that both declare 1024 but differ elsewhere are still a difference
    _c_style_smv(tmp_path / "other.img", 1536, 1536, pixels)
    other = read_smv(str(tmp_path / "other.img"))
    assert _headers_agree(other, ours, [], "int image") == ["HEADER_BYTES: '1536' vs '1024'"]
