"""Image files of a dataset: SMV, CBF (miniCBF header), raw float, and NeXus frames.

What is stored (see also specs/formats.md, 'Datasets: CBF and NXmx'):

* noise-free (no ``[detector_effects]``): the float image in photons.  SMV
  holds nanobragg's ``-intfile`` integers with a fixed scale (``-scale``, 1
  when not given) and ``-adc`` offset; CBF the same integers in 32 bits
  (not clipped at 65535); raw float and NeXus the float32 photons themselves.
* noisy (``[detector_effects]``): the ADU image of ``reference.noise``.  SMV,
  CBF and NeXus hold ``to_uint16`` of it; raw float holds it as float32.

Every encoder returns the file's bytes: the caller writes them atomically.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

EXTENSIONS = {"smv": ".img", "cbf": ".cbf", "float": ".bin", "nexus": ".frame"}
INT32_MAX = 2**31 - 1
UINT16_MAX = 65535


def integer_scale(sc) -> float:
    """ADU per photon of the noise-free integer images: -scale, or 1 (not nanobragg's per-image auto scale)."""
    return sc.cfg.intfile_scale if sc.cfg.intfile_scale > 0.0 else 1.0


def frame_dtype(noisy: bool) -> np.dtype:
    """The element type of a NeXus frame."""
    return np.dtype("<u2") if noisy else np.dtype("<f4")


def encode(fmt: str, sc, image: np.ndarray, noisy, name: str, header: dict) -> bytes:
    """The file of one image: ``image`` is the float image (photons), ``noisy`` the ADU image or None."""
    if fmt == "float":
        values = image if noisy is None else noisy
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    if fmt == "nexus":
        if noisy is None:
            return np.ascontiguousarray(image, dtype="<f4").tobytes()
        return np.ascontiguousarray(_uint16(noisy), dtype="<u2").tobytes()
    if fmt == "smv":
        return smv_bytes(sc, _smv_counts(sc, image) if noisy is None else _uint16(noisy))
    if fmt == "cbf":
        if noisy is None:
            counts, cutoff = _cbf_counts(sc, image), INT32_MAX
        else:
            counts, cutoff = _uint16(noisy).astype(np.int32), UINT16_MAX
        return cbf_bytes(sc, counts, cutoff, name, header)
    raise ValueError(f"unknown format {fmt!r}")


def _uint16(adu) -> np.ndarray:
    from reference.noise import to_uint16
    return to_uint16(adu)


# ---------------------------------------------------------------------------
# SMV
# ---------------------------------------------------------------------------

def _smv_counts(sc, image) -> np.ndarray:
    """nanobragg's -intfile pixels with a fixed scale (the reference's own conversion)."""
    from reference.run import int_image
    from reference.scene import roi_mask
    return int_image(sc, image, integer_scale(sc), roi_mask(sc))


def smv_bytes(sc, counts_uint16: np.ndarray) -> bytes:
    """An SMV file with nanobragg's header for this scene (reference.fileio's header writer)."""
    from reference import fileio
    from reference.run import header_fields
    header = fileio.format_smv_header(header_fields(sc))
    return header + np.ascontiguousarray(counts_uint16, dtype="<u2").tobytes()


# ---------------------------------------------------------------------------
# CBF with a miniCBF header
# ---------------------------------------------------------------------------

def _cbf_counts(sc, image) -> np.ndarray:
    """floor(photons x scale + adc + 0.5) in double precision, clipped to [0, 2^31 - 1]; 0 outside the ROI."""
    from reference.scene import roi_mask
    values = np.floor(np.clip(image.astype(np.float64) * integer_scale(sc) + sc.cfg.adc_offset, 0.0, INT32_MAX) + 0.5)
    values = np.minimum(values, INT32_MAX)
    return np.where(roi_mask(sc), values, 0).astype(np.int32)


def _g(value: float) -> str:
    """A number with enough digits to read back within 1e-10 relative."""
    return "%.12g" % value


def minicbf_header(sc, cutoff: int, header: dict) -> list:
    """The ``_array_data.header_contents`` lines, as DIALS (dxtbx FormatCBFMini) and XDS read them.

    The miniCBF convention describes a detector perpendicular to the beam, its
    fast axis along the single rotation axis: ``Beam_xy`` is where the direct
    beam meets the detector, in pixels along fast and slow from the outer
    corner of the first pixel; ``Detector_distance`` nanobragg's distance.
    Scenes outside that convention are described exactly by the NeXus output
    and truth.json (see specs/formats.md).
    """
    px = sc.pixel_size
    deg = 180.0 / math.pi
    exposure = sc.cfg.exposure if sc.cfg.exposure > 0 else 1.0
    lines = [
        "# Detector: nanoBragg simulation (nanobragg-dataset), S/N 0",
        "# " + header.get("timestamp", "2000-01-01T00:00:00.000"),
        f"# Pixel_size {_g(px)} m x {_g(px)} m",
    ]
    if sc.thick > 0.0:
        lines.append(f"# Silicon sensor, thickness {_g(sc.thick)} m")
    lines += [
        f"# Exposure_time {_g(exposure)} s",
        f"# Exposure_period {_g(exposure)} s",
        "# Tau = 0 s",
        f"# Count_cutoff {cutoff} counts",
        f"# Wavelength {_g(sc.lambda0 * 1e10)} A",
        f"# Detector_distance {_g(sc.distance)} m",
        f"# Beam_xy ({_g(sc.Fbeam / px)}, {_g(sc.Sbeam / px)}) pixels",
    ]
    if sc.cfg.beamsize > 0.0:
        # nanobragg's fluence is flux x exposure / beamsize^2
        lines.append(f"# Flux {_g(sc.fluence * sc.cfg.beamsize ** 2 / exposure)}")
    lines += [
        f"# Start_angle {_g(sc.phi0 * deg)} deg.",
        f"# Angle_increment {_g(sc.osc * deg)} deg.",
        f"# Phi {_g(sc.phi0 * deg)} deg.",
        "# N_oscillations 1",
        f"# Detector_2theta {_g(sc.twotheta * deg)} deg.",
        f"# Polarization {_g(sc.cfg.polarization)}",
    ]
    return lines


def cbf_bytes(sc, counts_int32: np.ndarray, cutoff: int, name: str, header: dict) -> bytes:
    """A CBF file (byte-offset compressed, through fabio) with the miniCBF header.

    fabio names the CIF data block after the file, so the file is written
    under its final name in a scratch folder and read back.
    """
    from fabio.cbfimage import CbfImage

    contents = "\n".join(minicbf_header(sc, cutoff, header))
    image = CbfImage(data=np.ascontiguousarray(counts_int32, dtype=np.int32),
                     header={"_array_data.header_convention": "GENERIC_MINI",
                             "_array_data.header_contents": contents})
    with tempfile.TemporaryDirectory(prefix="nanobragg-cbf-") as scratch:
        path = os.path.join(scratch, os.path.basename(name))
        image.write(path)
        with open(path, "rb") as handle:
            return handle.read()


def read_minicbf_header(text: str) -> dict:
    """The ``# Key value`` lines of a miniCBF header as a dictionary of value strings (for readers and tests)."""
    values = {}
    for line in text.replace("\r", "").split("\n"):
        parts = line.lstrip("# ").split(None, 1)
        if len(parts) == 2:
            values[parts[0].rstrip(":")] = parts[1].strip()
    return values
