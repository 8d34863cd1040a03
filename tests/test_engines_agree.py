"""Property: the torch engine renders what the reference renders, for any scene.

The scenes come from the same generator as ``nanobragg-parity``
(:mod:`tools.scenes`): every flag family, with the input files each scene
names written into an empty folder of its own, so that no example reads a
file (an ``Fdump.bin`` above all) that an earlier example wrote.  Half the
scenes add ``-c_parity``.  Both dtypes must agree to the measured bound of
the per-dtype table ``tests/tolerances.py`` (of the image maximum).  The quick profile runs
by default; HYPOTHESIS_PROFILE=thorough runs thousands of scenes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import assume, given, note, reject
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from reference.cli import parse_args  # noqa: E402
from reference.errors import InputError  # noqa: E402
from reference.render import render as render_reference  # noqa: E402
from reference.scene import build_scene  # noqa: E402
from tests.tolerances import OF_IMAGE_MAX  # noqa: E402
from tools.scenes import scenes  # noqa: E402
from torchsim.engine import render as render_torch  # noqa: E402


def _assert_close(ref, ours, tol):
    """Agreement to ``tol`` of the image maximum."""
    scale = max(np.abs(ref).max(), 1e-300)
    assert np.abs(ours - ref).max() <= tol * scale


def _render_both(scene, parity, dtype, folder):
    """Both engines' float images of ``scene``, rendered inside ``folder`` (fresh and empty)."""
    scene.materialize(folder)
    here = os.getcwd()
    os.chdir(folder)
    try:
        try:
            cfg = parse_args(scene.tokens + (["-c_parity"] if parity else []) + ["-engine", "torch", "-dtype", dtype])
            sc = build_scene(cfg, echo=False)
        except InputError:
            reject()          # a scene the shared front end refuses renders in neither engine
        ref = render_reference(sc, progress=False, image_dtype=np.float64).image
        ours = render_torch(sc, progress=False, keep_precision=True).image
    finally:
        os.chdir(here)
    return ref, np.asarray(ours, dtype=np.float64)


@given(scene=scenes(outputs=False), parity=st.booleans())
def test_torch_float64_matches_reference(scene, parity, tmp_path_factory):
    note(scene.command() + (" -c_parity" if parity else ""))
    ref, ours = _render_both(scene, parity, "float64", tmp_path_factory.mktemp("scene"))
    # C's running products under -oversample_* can overflow: nothing to compare then
    assume(np.isfinite(ref).all())
    _assert_close(ref, ours, OF_IMAGE_MAX["float64"])


@given(scene=scenes(outputs=False), parity=st.booleans())
def test_torch_float32_matches_reference(scene, parity, tmp_path_factory):
    note(scene.command() + (" -c_parity" if parity else ""))
    ref, ours = _render_both(scene, parity, "float32", tmp_path_factory.mktemp("scene"))
    # float32 cannot hold what C's running products reach in some parity scenes
    assume(np.isfinite(ref).all() and 1e-30 < np.abs(ref).max() < 1e30)
    _assert_close(ref, ours, OF_IMAGE_MAX["float32"])
