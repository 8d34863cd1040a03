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


def _torch_run_imports_numba(folder, extra):
    code = ("import sys; from reference.cli import main; "
            "main(['-cell', '50', '50', '50', '90', '90', '90', '-default_F', '1', '-detpixels', '4', "
            f"'-noprogress', '-nopgm', '-engine', 'torch'] + {extra!r}); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return out.stdout.strip().splitlines()[-1] == "True"


def test_torch_run_loads_numba_only_to_draw(tmp_path):
    """The C random generators (reference.rng) are compiled with Numba on their first call: a
    torch run that draws nothing does not import Numba; mosaic domains and noise do."""
    (tmp_path / "quiet").mkdir()
    (tmp_path / "draws").mkdir()
    assert not _torch_run_imports_numba(tmp_path / "quiet", ["-nonoise"])
    assert _torch_run_imports_numba(tmp_path / "draws", ["-mosaic", "1", "-mosaic_dom", "3"])
