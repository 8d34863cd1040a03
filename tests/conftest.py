"""Shared pytest set-up: hypothesis profiles and the corpus location."""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# quick (the default, CI): a fixed set of examples, so a CI run cannot fail by luck of the draw
settings.register_profile("quick", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("medium", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_working_folder(tmp_path, monkeypatch):
    """Run every test in its own folder: runs write Fdump.bin and read it back when -hkl is absent."""
    monkeypatch.chdir(tmp_path)
