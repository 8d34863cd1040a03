"""Fuzz: careless and hostile command lines never give a traceback, a silent NaN or a leftover.

Hypothesis starts from a valid generated scene (the parity tool's generator)
and mutates it: values dropped or repeated, numbers replaced by hostile ones,
input files replaced by garbage, empty or odd content.  Whatever happens, the
command line answers with an exit status and at most clean message lines:
no exception escapes, no temporary file is left, a failed run writes no
output, and a successful spec-mode run writes only finite float images.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
from hypothesis import event, given, note
from hypothesis import strategies as st

from reference.cli import main
from tools.scenes import FLOAT_FILE, scenes

HOSTILE_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "1e308", "-1e308", "1e-320", "", "abc", "-", "1_000",
                   "0x10", "2147483648", "-2147483649", "1e30", "3.5", "--"]
GARBAGE_FILES = [b"", b"\0" * 64, b"nan nan nan nan\n", b"1 2 3\n", b"{\nHEADER_BYTES=512;\n}", b"\xff" * 600,
                 b"inf 0 0 1e400\n", b"0 0 0 1e308\n1 1 1 1e308\n"]


@st.composite
def hostile_scenes(draw):
    scene = draw(scenes(outputs=True))
    tokens = list(scene.tokens)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "repeat", "number", "file"]))
        i = draw(st.integers(0, len(tokens) - 1))
        if kind == "drop":
            del tokens[i]
        elif kind == "repeat":
            tokens.insert(i, tokens[i])
        elif kind == "number":
            tokens[i] = draw(st.sampled_from(HOSTILE_NUMBERS))
        elif scene.files:
            name = draw(st.sampled_from(sorted(scene.files)))
            scene.files[name] = draw(st.sampled_from(GARBAGE_FILES))
        if not tokens:
            tokens = ["-cell"]
    scene.tokens = tokens
    return scene


@given(scene=hostile_scenes(), parity=st.booleans())
def test_hostile_command_lines_fail_cleanly(scene, parity, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    scene.materialize(folder)
    inputs = set(os.listdir(folder))
    argv = scene.tokens + (["-c_parity"] if parity else []) + ["-noprogress"]
    note(" ".join(argv))
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    finally:
        os.chdir(here)
    text = err.getvalue()
    event("ran" if status == 0 else "refused")
    assert isinstance(status, int)
    assert "Traceback" not in text and "RuntimeWarning" not in text
    for line in text.splitlines():
        assert line.startswith(("nanobragg: ", "WARNING", " ")) or not line.strip(), line
    files = set(os.listdir(folder))
    assert not [f for f in files if ".part-" in f]
    if status != 0:
        assert files <= inputs, f"a failed run wrote {sorted(files - inputs)}"
    elif not parity and FLOAT_FILE in files:
        image = np.fromfile(folder / FLOAT_FILE, np.float32)
        assert np.isfinite(image).all(), "spec mode wrote a non-finite float image"
