"""Package boundaries: the reference never pulls in torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_reference_does_not_import_torch():
    code = ("import sys; import reference, reference.cli, reference.scene, reference.render, reference.run, "
            "reference.fileio, reference.rng; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_numba_run_does_not_import_torch(tmp_path):
    code = ("import sys; from reference.cli import main; "
            "main(['-cell', '50', '50', '50', '90', '90', '90', '-default_F', '1', '-detpixels', '4', "
            "'-noprogress', '-nonoise', '-nopgm']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().splitlines()[-1] == "False"
