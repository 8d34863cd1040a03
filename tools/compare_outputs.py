"""Compare the output files of two nanoBragg-compatible runs of one scene.

The criteria are those of specs/tolerances.md: the float image to a relative
and absolute bound on 99.9 % of the pixels plus a correlation, the int image
to one count, the noise image pixel for pixel on 99 %, SMV headers entry by
entry, the PGM to one grey level, and the statistics the programs print.
A ``float32`` precision replaces the float bound by one relative to the image
maximum (measured, see specs/tolerances.md) and compares noise headers only,
since one rounding difference re-orders the noise generator's draws.

Files are read defensively: a missing, short or malformed file becomes a
difference ("wrote nothing", "garbage"), never an exception.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from tools.compare_c import CRITERIA, compare_float, within_counts

# float32 engines: |x - c| <= FLOAT32_OF_MAX * max|c| on every pixel: the bound the tests
# apply (tests/tolerances.py: 3 x the largest error measured, 2.6e-6; specs/tolerances.md)
FLOAT32_OF_MAX = 1e-5

# the order in which kinds of difference are reported; the first one found names the failure
KINDS = ("crash", "hang", "exit status", "wrote nothing", "garbage", "shape", "float image",
         "int header", "int image", "noise header", "noise image", "pgm", "statistics")


@dataclass
class RunOutput:
    """What one program did with one scene."""

    returncode: int | None          # None: it hung and was killed
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    folder: str = ""


@dataclass
class SMV:
    header: dict                    # KEY -> value text, in file order
    header_text: str
    declared_bytes: int | None      # HEADER_BYTES
    pixels: np.ndarray | None       # (slow, fast) uint16, read from the end of the file
    consistent: bool                # file size == HEADER_BYTES + pixel bytes


@dataclass
class Verdict:
    agree: bool
    kinds: list = field(default_factory=list)        # kinds of difference, in KINDS order
    details: list = field(default_factory=list)      # one sentence each
    figures: dict = field(default_factory=dict)
    deliberate: list = field(default_factory=list)   # documented differences seen (not failures)
    bit_identical: bool = False
    all_zero: bool = False

    @property
    def signature(self) -> str:
        return self.kinds[0] if self.kinds else ""


def read_smv(path: str) -> SMV | None:
    """Parse an SMV file; pixels are the last SIZE1*SIZE2*2 bytes (C's data follows its header text)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    end = raw.find(b"}")
    if not raw.startswith(b"{") or end < 0:
        return SMV({}, "", None, None, False)
    # the header text runs to "}" and the form feed C writes after it
    text = raw[:end + 2 if raw[end + 1:end + 2] == b"\f" else end + 1].decode("latin-1")
    header = {}
    for line in text.strip("{}\f\n").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip().rstrip(";")
    try:
        width, height = int(header["SIZE1"]), int(header["SIZE2"])
        declared = int(header["HEADER_BYTES"])
    except (KeyError, ValueError):
        return SMV(header, text, None, None, False)
    nbytes = 2 * width * height
    pixels = None
    if len(raw) >= nbytes + end + 1:
        pixels = np.frombuffer(raw[len(raw) - nbytes:], "<u2").reshape(height, width)
    return SMV(header, text, declared, pixels, len(raw) == declared + nbytes)


def read_float(path: str, shape) -> tuple[np.ndarray | None, str]:
    try:
        raw = np.fromfile(path, "<f4")
    except (OSError, ValueError):
        return None, "missing"
    if shape is None or raw.size != shape[0] * shape[1]:
        return None, f"{raw.size * 4} bytes"
    return raw.reshape(shape), ""


STAT_PATTERNS = {
    "max_I": re.compile(r"max_I = (\S+)"),
    "mean": re.compile(r"mean= (\S+)"),
    "rms": re.compile(r"rms= (\S+)"),
    "rmsd": re.compile(r"rmsd= (\S+)"),
    "photons": re.compile(r"(\S+) photons on noise image"),
}


def statistics(stdout: str) -> dict:
    """The summary numbers a nanoBragg run prints (those it printed)."""
    found = {}
    for name, pattern in STAT_PATTERNS.items():
        m = pattern.search(stdout)
        if m:
            try:
                found[name] = float(m.group(1))
            except ValueError:
                pass
    return found


def _float_agree(x: np.ndarray, c: np.ndarray, precision: str) -> tuple[bool, dict]:
    """The float-image criterion of specs/tolerances.md (float64) or the float32 bound."""
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # inf - inf in overflowed parity images
        stats = compare_float(x, c)
    figures = {"max_c": stats["ref_max"], "max_abs_diff": stats["max_abs"],
               "close_fraction": stats["close_fraction"], "correlation": stats["correlation"]}
    scale = stats["ref_max"]
    figures["max_diff_of_max"] = stats["max_abs"] / scale if scale > 0 else (0.0 if stats["max_abs"] == 0 else math.inf)
    if precision == "float32":
        with np.errstate(invalid="ignore"):
            diff = np.abs(x.astype(np.float64) - c.astype(np.float64))
        same = x.tobytes() == c.tobytes()
        return same or bool(np.all(diff <= FLOAT32_OF_MAX * scale)), figures
    return (stats["close_fraction"] >= CRITERIA["float_close_fraction"]
            and stats["correlation"] >= CRITERIA["float_correlation"]), figures


def _headers_agree(x: SMV, c: SMV, deliberate: list, what: str) -> list:
    """Entries that differ (HEADER_BYTES aside when C's header overflowed)."""
    differ = []
    keys = list(dict.fromkeys(list(c.header) + list(x.header)))
    for key in keys:
        if key == "HEADER_BYTES" and x.header.get(key) != c.header.get(key):
            # C says 512 even when its text is longer; we pad to a multiple of 512 and say so
            overflowed = [s for s in (x, c) if not s.consistent and len(s.header_text) > 512]
            if len(overflowed) == 1 and (x.consistent or c.consistent):
                deliberate.append(f"{what}: a header longer than the HEADER_BYTES=512 it declares "
                                  "(C's overflow, not reproduced: specs/quirks.md)")
                continue
        if x.header.get(key) != c.header.get(key):
            differ.append(f"{key}: {x.header.get(key)!r} vs {c.header.get(key)!r}")
    return differ


def _smv_pixels(x: SMV, c: SMV, what: str, exact_fraction: float, max_step: int, details: list, kinds: list,
                kind: str) -> None:
    if x.pixels is None or c.pixels is None or x.pixels.shape != c.pixels.shape:
        details.append(f"{what}: pixels unreadable or of another shape")
        kinds.append(kind)
        return
    fraction = within_counts(x.pixels, c.pixels, max_step)
    if fraction < exact_fraction:
        d = np.abs(x.pixels.astype(np.int64) - c.pixels.astype(np.int64))
        details.append(f"{what}: {100 * (1 - fraction):.3g}% of pixels differ by more than {max_step} "
                       f"(largest {int(d.max())})")
        kinds.append(kind)


def compare(ours_folder: str, ours: RunOutput, ref_folder: str, ref: RunOutput, files: dict,
            precision: str = "float64") -> Verdict:
    """Compare the program under test (``ours_*``) with the reference run (``ref_*``).

    ``files`` names the outputs the scene asked for: keys ``float``, ``int``,
    ``noise``, ``pgm`` (absent keys are not compared).
    """
    v = Verdict(agree=True)
    kinds, details = v.kinds, v.details
    if ours.returncode is None:
        kinds.append("hang")
        details.append(f"the program did not finish within {ours.seconds:.0f} s")
    elif ours.returncode < 0:
        kinds.append("crash")
        details.append(f"the program was killed by signal {-ours.returncode}")
    elif (ours.returncode == 0) != (ref.returncode == 0):
        kinds.append("exit status")
        details.append(f"exit status {ours.returncode} vs the reference's {ref.returncode}")
    if kinds or ref.returncode != 0:
        v.agree = not kinds
        v.kinds = [k for k in KINDS if k in kinds]
        return v

    ref_int = read_smv(os.path.join(ref_folder, files["int"]))
    shape = ref_int.pixels.shape if ref_int is not None and ref_int.pixels is not None else None
    ref_float, _ = read_float(os.path.join(ref_folder, files["float"]), shape)
    x_float, problem = read_float(os.path.join(ours_folder, files["float"]), shape)
    if ref_float is None:
        kinds.append("garbage")
        details.append("the reference wrote no readable float image")
    elif x_float is None:
        kinds.append("wrote nothing" if problem == "missing" else "garbage")
        details.append(f"{files['float']}: {problem or 'unreadable'} (expected {shape[1]}x{shape[0]} floats)")
    else:
        v.all_zero = not np.any(ref_float)
        ok, figures = _float_agree(x_float, ref_float, precision)
        v.figures.update(figures)
        v.bit_identical = x_float.tobytes() == ref_float.tobytes()
        if not ok:
            kinds.append("float image")
            details.append("float image: largest difference %.3g (%.3g of the maximum %.3g)%s"
                           % (figures.get("max_abs_diff", math.nan), figures.get("max_diff_of_max", math.nan),
                              figures.get("max_c", math.nan),
                              "" if "nonfinite_mismatch" not in figures
                              else f", {figures['nonfinite_mismatch']} non-finite pixels differ"))

    for key, what, kind_h, kind_p in (("int", "int image", "int header", "int image"),
                                      ("noise", "noise image", "noise header", "noise image")):
        if key not in files:
            continue
        c = read_smv(os.path.join(ref_folder, files[key]))
        x = read_smv(os.path.join(ours_folder, files[key]))
        if c is None:
            continue
        if x is None:
            kinds.append("wrote nothing")
            details.append(f"{files[key]} is missing")
            continue
        if x.declared_bytes is None:
            kinds.append("garbage")
            details.append(f"{files[key]} is not a readable SMV file")
            continue
        differ = _headers_agree(x, c, v.deliberate, what)
        if differ:
            kinds.append(kind_h)
            details.append(f"{what} header: " + "; ".join(differ[:4]))
        if key == "int":
            _smv_pixels(x, c, what, CRITERIA["int_within_1_fraction"], 1, details, kinds, kind_p)
        elif precision == "float64":
            _smv_pixels(x, c, what, CRITERIA["noise_identical_fraction"], 0, details, kinds, kind_p)
        if x.pixels is not None and c.pixels is not None and x.pixels.tobytes() != c.pixels.tobytes():
            v.bit_identical = False

    if "pgm" in files:
        c_path, x_path = os.path.join(ref_folder, files["pgm"]), os.path.join(ours_folder, files["pgm"])
        if os.path.exists(c_path):
            if not os.path.exists(x_path):
                kinds.append("wrote nothing")
                details.append(f"{files['pgm']} is missing")
            else:
                xc, cc = _read_pgm(x_path), _read_pgm(c_path)
                if xc is None or cc is None or xc.shape != cc.shape:
                    kinds.append("pgm")
                    details.append("pgm: unreadable or of another shape")
                elif within_counts(xc, cc, 1) < CRITERIA["pgm_within_1_fraction"]:
                    kinds.append("pgm")
                    details.append("pgm: more than 0.1% of grey levels differ by more than 1")

    sx, sc = statistics(ours.stdout), statistics(ref.stdout)
    # a statistic may differ as much as the pixels may (rmsd of a flat image is all cancellation),
    # plus the last of the six digits %g prints
    per_pixel = (FLOAT32_OF_MAX if precision == "float32" else 1e-7) * abs(sc.get("max_I", 0.0))
    bad = [f"{k} {sx[k]:g} vs {sc[k]:g}" for k in sc if k in sx and k != "photons"
           and not _same_statistic(sx[k], sc[k], per_pixel)]
    if bad:
        kinds.append("statistics")
        details.append("printed statistics: " + "; ".join(bad))
    v.kinds = [k for k in KINDS if k in kinds]
    v.agree = not v.kinds
    return v


def _same_statistic(x: float, c: float, tolerance: float) -> bool:
    """Printed numbers agree: equal (inf included), both nan, or within tolerance."""
    if x == c or (math.isnan(x) and math.isnan(c)):
        return True
    if not (math.isfinite(x) and math.isfinite(c)):
        return False
    return abs(x - c) <= 1e-5 * max(abs(x), abs(c)) + (tolerance if math.isfinite(tolerance) else 0.0)


def _read_pgm(path: str):
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        fields = []
        pos = 0
        while len(fields) < 4:
            while raw[pos:pos + 1].isspace():
                pos += 1
            if raw[pos:pos + 1] == b"#":
                pos = raw.index(b"\n", pos) + 1
                continue
            start = pos
            while not raw[pos:pos + 1].isspace():
                pos += 1
            fields.append(raw[start:pos])
        width, height = int(fields[1]), int(fields[2])
        data = raw[pos + 1:pos + 1 + width * height]
        return np.frombuffer(data, np.uint8).reshape(height, width)
    except (OSError, ValueError, IndexError):
        return None
