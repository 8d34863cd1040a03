"""Running C-corpus cases through our command line, and the parity criteria."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "c_corpus"
SKIP_REASON = f"C corpus not found at {CORPUS} (it lives in the team's shared/ folder)"


def available() -> bool:
    return (CORPUS / "cases" / "cases.json").is_file()


def cases() -> dict:
    if not available():
        return {}
    return {c["name"]: c for c in json.loads((CORPUS / "cases" / "cases.json").read_text())}


@dataclass
class Outputs:
    float_image: np.ndarray
    int_header: bytes
    int_image: np.ndarray
    noise_image: np.ndarray
    stdout: str
    pgm: bytes | None


def read_outputs(folder: Path, shape, stdout: str) -> Outputs:
    img = np.fromfile(folder / "float.bin", np.float32).reshape(shape)
    raw_int = (folder / "int.img").read_bytes()
    raw_noise = (folder / "noise.img").read_bytes()
    pgm = (folder / "image.pgm").read_bytes() if (folder / "image.pgm").exists() else None
    return Outputs(img, raw_int[:512], np.frombuffer(raw_int[512:], np.uint16).reshape(shape),
                   np.frombuffer(raw_noise[512:], np.uint16).reshape(shape), stdout, pgm)


def c_outputs(name: str) -> Outputs:
    folder = CORPUS / "cases" / name
    header = (folder / "int.img").read_bytes()[:512].decode("latin-1")
    fast = int(header.split("SIZE1=")[1].split(";")[0])
    slow = int(header.split("SIZE2=")[1].split(";")[0])
    return read_outputs(folder, (slow, fast), (folder / "stdout.txt").read_text())


def run_ours(args, workdir: Path, shape) -> Outputs:
    """Run our command line in-process inside ``workdir``; returns its files."""
    from reference.cli import main
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "inputs"
    if not link.exists():
        link.symlink_to(CORPUS / "inputs")
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(out):
            status = main(list(args))
    finally:
        os.chdir(cwd)
    assert status == 0, out.getvalue()[-2000:]
    return read_outputs(workdir, shape, out.getvalue())


def float_agreement(ours: np.ndarray, ref: np.ndarray):
    """(fraction within 1e-5 relative + 1e-7 of max, correlation)."""
    a = ours.astype(np.float64).ravel()
    b = ref.astype(np.float64).ravel()
    close = np.abs(a - b) <= 1e-5 * np.abs(b) + 1e-7 * np.abs(b).max()
    if b.std() == 0 or a.std() == 0:
        corr = 1.0 if np.array_equal(a, b) else 0.0
    else:
        corr = float(np.corrcoef(a, b)[0, 1])
    return float(close.mean()), corr


def assert_parity(ours: Outputs, ref: Outputs, label: str):
    """The issue's criteria for 'matches the C program'."""
    frac, corr = float_agreement(ours.float_image, ref.float_image)
    assert frac >= 0.999, f"{label}: float image within tolerance on only {frac:.5f} of pixels"
    assert corr >= 0.99999, f"{label}: float image correlation {corr:.7f}"
    close_int = np.abs(ours.int_image.astype(int) - ref.int_image.astype(int)) <= 1
    assert close_int.mean() >= 0.999, f"{label}: int image within 1 count on {close_int.mean():.5f}"
    assert ours.int_header == ref.int_header, f"{label}: SMV headers differ"
    same_noise = (ours.noise_image == ref.noise_image).mean()
    assert same_noise >= 0.99, f"{label}: noise image identical on only {same_noise:.4f}"
    if ref.pgm is not None:
        assert ours.pgm is not None, f"{label}: no PGM written"
        a = np.frombuffer(ours.pgm[-ref.float_image.size:], np.uint8).astype(int)
        b = np.frombuffer(ref.pgm[-ref.float_image.size:], np.uint8).astype(int)
        assert (np.abs(a - b) <= 1).mean() >= 0.999, f"{label}: PGM differs"


def differs(ours: Outputs, ref: Outputs) -> bool:
    frac, corr = float_agreement(ours.float_image, ref.float_image)
    return frac < 0.999 or corr < 0.99999
