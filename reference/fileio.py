"""Reading and writing the files that nanoBragg exchanges with the outside world.

Formats handled here, all byte-compatible with the original C program:

* HKL text files (a stream of ``h k l F`` numbers, read as C reads it with
  ``-c_parity`` and strictly line by line otherwise) and the binary
  ``Fdump.bin`` cache of the dense structure-factor grid built from them;
* MOSFLM orientation matrices (the first nine numbers are the reciprocal cell
  vectors multiplied by the wavelength);
* source lists (up to five numbers per line: X Y Z weight wavelength);
* SMV ("ADSC") images: header parsing with C's keyword rules, and the exact
  512-byte header that C writes with ``-intfile`` and ``-noisefile`` (a
  header text that does not fit grows to the next multiple of 512 bytes);
* PGM previews and raw float32 images.

Every reader turns a problem with the user's file into one
:class:`~reference.errors.InputError` whose one-line message names the file
(and, for text files, the line).  Every writer replaces its target atomically,
so an interrupted run never leaves a half-written file behind under the real
name.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from reference.errors import InputError, warn

__all__ = [
    "InputError",
    "HKLTable",
    "read_hkl",
    "hkl_table",
    "fill_default",
    "write_fdump",
    "read_fdump",
    "read_mosflm_matrix",
    "read_source_file",
    "SMVImage",
    "read_smv",
    "smv_header_fields",
    "format_smv_header",
    "write_smv",
    "write_pgm",
    "write_float_image",
    "check_writable",
    "SMV_HEADER_BYTES",
]

# ---------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------

#: Size of the header that C writes in front of every SMV image, in bytes.
SMV_HEADER_BYTES = 512

# A number as C's strtod() accepts it: decimal, hexadecimal, inf or nan.
_HEX_RE = r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?"
_SPECIAL_RE = r"(?i:[+-]?(?:inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?))"
_DECIMAL_RE = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
# Hexadecimal first: otherwise "0x10" would stop after the decimal "0".
# ASCII digits only: C's strtod does not read other scripts' digits, Python's float() would.
_NUMBER = re.compile(f"(?:{_HEX_RE})|(?:{_SPECIAL_RE})|(?:{_DECIMAL_RE})", re.ASCII)

# The characters C's isspace() skips in front of a number.
_C_WHITESPACE = " \t\n\v\f\r"


def _number_from_match(text: str) -> float:
    """Convert text that matched :data:`_NUMBER` into a float."""
    body = text.lstrip("+-")
    if body[:2] in ("0x", "0X"):
        return float.fromhex(text)
    low = body.lower()
    sign = "-" if text.startswith("-") else ""
    if low.startswith("nan"):
        return float("nan")  # C ignores the optional "(chars)" payload
    if low.startswith("inf"):
        return float(sign + "inf")
    return float(text)


def _parse_number(token: str) -> float | None:
    """Return the value of ``token`` if the whole token is a number, else None.

    Stricter than Python's float(), which would also accept "1_000" or
    surrounding whitespace, and than C's atof(), which silently reads a
    prefix and turns garbage into 0.
    """
    if _NUMBER.fullmatch(token) is None:
        return None
    return _number_from_match(token)


def _atof(text: str) -> float:
    """C's atof(): skip leading whitespace, read the longest number prefix.

    Returns 0.0 when no number starts there, exactly as C does.
    """
    stripped = text.lstrip(_C_WHITESPACE)
    match = _NUMBER.match(stripped)
    if match is None:
        return 0.0
    return _number_from_match(match.group(0))


def _not_finite(where: str, token: str, c_parity: bool, effect: str) -> None:
    """A number of an input file that is NaN or infinite, at ``where`` (file:line).

    Spec mode refuses the file.  -c_parity reads it as the C program does (which
    accepts such numbers) and warns once per file, saying what C makes of it.
    """
    if not c_parity:
        raise InputError(f"{where}: '{token}' is not a finite number")
    from reference.errors import warn
    name = where.split(":")[0]
    warn(f"{where}: '{token}' is not a finite number; read as the C program reads it "
         f"(-c_parity): {effect}", topic=f"not finite: {name}")


def _read_bytes(path) -> bytes:
    """Return the whole content of ``path``, or raise InputError naming it.

    Only a regular file of a sane size is read (a FIFO or ``/dev/zero`` is
    refused before reading): :func:`reference.preflight.read_input`.
    """
    from reference.preflight import read_input
    return read_input(path)


def _read_lines(path) -> list[str]:
    """Return the lines of a text file without their line endings.

    Undecodable bytes become U+FFFD so that they surface as a "not a number"
    error on their own line instead of an obscure decoding error.
    """
    text = _read_bytes(path).decode("utf-8", errors="replace")
    # Split on '\n' only (str.splitlines would also split on form feeds and
    # other rare separators and so shift the line numbers in messages).
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _remove_quietly(path: str) -> None:
    """Delete ``path`` if it exists; used to clean up failed writes."""
    try:
        os.remove(path)
    except OSError:
        pass


def _atomic_write(path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` so that readers never see a partial file.

    The data go to a temporary file in the same directory (so that the final
    rename stays on one file system) which then replaces ``path`` in one step.
    """
    name = os.fspath(path)
    temporary = f"{name}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temporary, name)
    except BaseException as exc:
        _remove_quietly(temporary)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {name}: {exc.strerror or exc}") from None
        raise


def check_writable(path) -> None:
    """Raise InputError unless a file could be created at ``path``.

    Meant to be called on every output name before a long simulation, so that
    a typo in a directory name fails in a second rather than after an hour.
    """
    name = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(directory):
        raise InputError(f"cannot write {name}: directory {directory} does not exist")
    if os.path.isdir(name):
        raise InputError(f"cannot write {name}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {name}: directory {directory} is not writable")


# ---------------------------------------------------------------------------
# Structure factors: HKL text files and the Fdump.bin cache
# ---------------------------------------------------------------------------

# Guard against a typo such as "1e9 0 0 1" asking for a grid of absurd size.
_MAX_GRID_ENTRIES = 1 << 31


@dataclass
class HKLTable:
    """Structure factors on a dense Miller-index grid, laid out like C's Fhkl.

    ``values[h - h_min, k - k_min, l - l_min]`` is the structure factor
    amplitude |F| (electrons, dimensionless) of reflection (h, k, l).  Each
    axis has one extra slot at its end (index ``h_max - h_min + 1`` etc.):
    C allocates ``range + 1`` entries per axis and the padding stays 0.  The
    array is float64 with shape ``(h_range + 1, k_range + 1, l_range + 1)``
    where ``h_range = h_max - h_min + 1``.

    ``count`` is the number of reflections read (for an Fdump file, as in C,
    the number of grid points ``h_range * k_range * l_range``).  ``warnings``
    holds messages about the input, such as non-integer indices.  ``given``
    marks the grid points the file supplied; :func:`fill_default` sets the
    others.
    """

    h_min: int
    h_max: int
    k_min: int
    k_max: int
    l_min: int
    l_max: int
    values: np.ndarray
    count: int
    warnings: list[str] = field(default_factory=list)
    given: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        expected = self.shape
        if self.values.shape != expected:
            raise ValueError(f"HKLTable values have shape {self.values.shape}, expected {expected}")
        if self.given is None:
            # Without other information every real (non-padding) slot counts as given.
            self.given = np.zeros(expected, dtype=bool)
            self.given[:-1, :-1, :-1] = True

    @property
    def h_range(self) -> int:
        """Number of distinct h values covered, h_max - h_min + 1 (C's h_range)."""
        return self.h_max - self.h_min + 1

    @property
    def k_range(self) -> int:
        """Number of distinct k values covered, k_max - k_min + 1 (C's k_range)."""
        return self.k_max - self.k_min + 1

    @property
    def l_range(self) -> int:
        """Number of distinct l values covered, l_max - l_min + 1 (C's l_range)."""
        return self.l_max - self.l_min + 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of :attr:`values`, padding slot included on every axis."""
        return (self.h_range + 1, self.k_range + 1, self.l_range + 1)


def _nearest_index(value: float, axis: str, lineno: int, warnings: list[str]) -> int:
    """Round a Miller index read as a real number to the nearest integer (spec mode).

    C tests ``x != ceil(x - 0.4)``, which is true for every non-integer, and
    prints the warning reproduced here (C names the reflection's position in
    the file, counted from 0; we name the line).
    """
    if value != math.ceil(value - 0.4):
        warnings.append("WARNING: non-integer value for %s (%g) at line %d" % (axis, value, lineno))
    return math.floor(value + 0.5)


def _hkl_reflections(values: list[float], name: str, lineno: int, warnings: list[str]):
    """Turn the numbers of one HKL data line, a multiple of four, into (h, k, l, F) tuples."""
    rows = []
    for start in range(0, len(values), 4):
        h, k, l, amplitude = values[start:start + 4]
        if not all(math.isfinite(x) for x in (h, k, l)):
            raise InputError(f"{name}:{lineno}: Miller indices must be finite numbers")
        indices = [_nearest_index(x, axis, lineno, warnings) for x, axis in zip((h, k, l), "hkl")]
        rows.append((indices[0], indices[1], indices[2], amplitude))
    return rows


# A file that both readings handle alike, whatever the mode: every line blank or exactly
# "h k l F" with integer literals for the indices and a plain decimal for F.  The C
# stream reader's second pass reads indices with %d, which stops inside "1.0" or "1e2";
# integer literals are the one spelling on which its two passes agree.
_INT_LITERAL = r"[+-]?[0-9]+"
_PLAIN_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_CLEAN_HKL_LINE = rf"[ \t]*(?:{_INT_LITERAL}[ \t]+{_INT_LITERAL}[ \t]+{_INT_LITERAL}[ \t]+{_PLAIN_DECIMAL}[ \t]*)?\r?"
_CLEAN_HKL = re.compile(rf"(?:{_CLEAN_HKL_LINE}\n)*(?:{_CLEAN_HKL_LINE})?")


def _read_clean_hkl(text: str):
    """Parse a clean HKL text (see _CLEAN_HKL) at NumPy speed; None when it is not clean.

    Returns (hkl as int64 (n, 3), F as float64 (n,)).  Both modes read such a
    file the same way, so this is only a shortcut: on the 15,625-line P1.hkl of
    the corpus, 14 ms against 130 ms for the spec-mode reader and 260 ms for
    the C emulation (measured).
    """
    if _CLEAN_HKL.fullmatch(text) is None:
        return None
    table = np.array(text.split(), dtype=np.float64).reshape(-1, 4)
    if table.shape[0] == 0:
        return None
    hkl = table[:, :3]
    if np.abs(hkl).max() >= _C_INT_LIMIT or not np.isfinite(table[:, 3]).all():
        return None  # let the careful readers explain the problem
    return hkl.astype(np.int64), table[:, 3].copy()


def _read_hkl_lines(path, name: str, warnings: list[str]):
    """Spec mode's careful reader: whole reflections per line, every token a number.

    Returns (hkl as int64 (n, 3), F as float64 (n,)).
    """
    rows = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        values = []
        for token in text.split():
            value = _parse_number(token)
            if value is None:
                raise InputError(f"{name}:{lineno}: '{token}' is not a number")
            values.append(value)
        if len(values) % 4:
            # C would read such a file four numbers at a time across the lines: an
            # "h k l F sigma" file would silently become nonsense.
            raise InputError(f"{name}:{lineno}: expected 'h k l F' (4 numbers per reflection), "
                             f"found {len(values)} number(s)")
        for start in range(3, len(values), 4):
            if not math.isfinite(values[start]):
                raise InputError(f"{name}:{lineno}: the structure factor F = '{text.split()[start]}' "
                                 f"is not a finite number")
        rows.extend(_hkl_reflections(values, name, lineno, warnings))
    if not rows:
        raise InputError(f"{name}: no reflections found (expected lines of 'h k l F')")
    hkl = np.array([row[:3] for row in rows], dtype=np.int64)
    amplitudes = np.array([row[3] for row in rows], dtype=np.float64)
    return hkl, amplitudes


# --- C's fscanf(), as glibc does it, for the -c_parity reader --------------

# Limits of C's int, which holds the grid bounds.
_C_INT_LIMIT = 2 ** 31
_C_LONG_LIMIT = 2 ** 63

# What glibc's "%lg" consumes, measured on the C program's machine.  An exponent
# marker without digits is consumed and ignored ("1e" and "1e+" read 1).  "0x"
# commits to a hex mantissa, which needs a digit or a point ("0xg" fails rather than
# reading 0, but "0x." reads 0, without an exponent).  After "inf" an "i" must go on
# to "infinity".  "nan" takes no "(...)" payload.
_SCANF_DOUBLE = re.compile(
    r"(?P<sign>[+-]?)(?:"
    r"(?P<hex>0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+))(?:[pP](?P<hexp>[+-]?[0-9]*))?"
    r"|(?P<hexdot>0[xX]\.)"
    r"|(?P<inf>(?i:infinity|inf(?!i)))"
    r"|(?P<nan>(?i:nan))"
    r"|(?!0[xX])(?P<dec>[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE](?P<exp>[+-]?[0-9]*))?"
    r")")
_SCANF_INT = re.compile(r"[+-]?[0-9]+")
_C_SPACE = re.compile(f"[{re.escape(_C_WHITESPACE)}]*")


def _scanf_double(text: str, pos: int):
    """glibc's fscanf("%lg") at ``pos``: (value, end), or (None, start of the failed token)."""
    pos = _C_SPACE.match(text, pos).end()
    match = _SCANF_DOUBLE.match(text, pos)
    if match is None:
        return None, pos
    negative = match["sign"] == "-"
    if match["hex"] is not None:
        exponent = match["hexp"] if match["hexp"] not in (None, "", "+", "-") else "0"
        value = float.fromhex(f"{match['hex']}p{exponent}")
    elif match["hexdot"] is not None:
        value = 0.0
    elif match["inf"] is not None:
        value = math.inf
    elif match["nan"] is not None:
        value = math.nan
    else:
        exponent = match["exp"] if match["exp"] not in (None, "", "+", "-") else "0"
        value = float(f"{match['dec']}e{exponent}")
    return (-value if negative else value), match.end()


def _scanf_int(text: str, pos: int):
    """glibc's fscanf("%d") at ``pos``: (value, end), or (None, start of the failed token).

    The digits go through strtol (clamped to the 64-bit long range) and are
    then cut to a 32-bit int, as glibc does: 2147483648 reads as -2147483648.
    """
    pos = _C_SPACE.match(text, pos).end()
    match = _SCANF_INT.match(text, pos)
    if match is None:
        return None, pos
    value = max(-_C_LONG_LIMIT, min(_C_LONG_LIMIT - 1, int(match.group(0))))
    value = (value + _C_INT_LIMIT) % (2 * _C_INT_LIMIT) - _C_INT_LIMIT
    return value, match.end()


def _scanf_quad(text: str, pos: int, scanners):
    """One ``fscanf(file, "%x%x%x%x", ...)`` call: (four values, end), or (None, where it failed)."""
    values = []
    for scan in scanners:
        value, pos = scan(text, pos)
        if value is None:
            return None, pos
        values.append(value)
    return values, pos


def _line_at(text: str, pos: int) -> int:
    """1-based line number of character ``pos``."""
    return text.count("\n", 0, pos) + 1


def _token_before(text: str, end: int) -> str:
    """The characters before ``end`` back to the previous white space (for messages)."""
    return re.search(r"\S{0,20}$", text[:end]).group(0)


def _token_at(text: str, pos: int) -> str:
    """The characters from ``pos`` up to the next white space (for messages)."""
    return re.match(r"\S{0,20}", text[pos:]).group(0)


def _read_hkl_like_c(path, name: str, warnings: list[str]) -> HKLTable:
    """-c_parity reader: C's two fscanf() passes over the file, stream of numbers.

    Pass 1 reads ``%lg%lg%lg%lg`` until a call does not fill all four: its
    reflections give the count and the index ranges (bounds held in C ints:
    a non-integer index is truncated toward zero when it becomes a bound).
    Pass 2 rereads the file with ``%d%d%d%lg`` and stores the values; it stops
    inside an index written "1.0" or "1e2", and an index written "1.5" in the
    l position reads as 1 followed by F = .5, which puts the rest of the
    stream out of step.  Values pass 2 stores into C's padding slots are kept;
    a store outside C's table (undefined behaviour in C) is an error.
    """
    text = _read_bytes(path).decode("latin-1")  # one character per byte, as C sees them
    double4 = (_scanf_double,) * 4
    quads = []
    pos = 0
    # (line numbers are counted only for messages: counting them for every
    # reflection would make the reading quadratic in the file size)
    while True:
        quad, end = _scanf_quad(text, pos, double4)
        if quad is None:
            stop1 = end
            break
        for axis, value in zip("hkl", quad[:3]):
            if not math.isfinite(value):
                raise InputError(f"{name}:{_line_at(text, end)}: Miller indices must be finite numbers")
            if not -_C_INT_LIMIT < value < _C_INT_LIMIT:
                raise InputError(f"{name}:{_line_at(text, end)}: Miller index {value:g} does not fit in C's int")
            if value != math.ceil(value - 0.4):
                # C's wording, numbering the reflections from 0
                warnings.append("WARNING: non-integer value for %s (%g) at line %d" % (axis, value, len(quads)))
        if not math.isfinite(quad[3]):
            _not_finite(f"{name}:{_line_at(text, end)}", _token_before(text, end), True,
                        "the pixels that use this structure factor will be NaN or inf")
        quads.append(quad)
        pos = end
    rest = text[stop1:].strip(_C_WHITESPACE)
    if not quads:
        where = f"; C's reader stops at line {_line_at(text, stop1)}, '{_token_at(text, stop1)}'" if rest else ""
        raise InputError(f"{name}: no reflections found (expected 'h k l F'{where})")
    if rest:
        warnings.append(f"WARNING: {name} line {_line_at(text, stop1)}: reading stops at "
                        f"'{_token_at(text, stop1)}', as in C; the rest of the file is ignored")

    # C's bounds: ints, compared with each double and assigned by truncation
    lows = [10 ** 9] * 3
    highs = [-(10 ** 9)] * 3
    for quad in quads:
        for axis in range(3):
            if lows[axis] > quad[axis]:
                lows[axis] = int(quad[axis])
            if highs[axis] < quad[axis]:
                highs[axis] = int(quad[axis])
    shape = tuple(high - low + 2 for low, high in zip(lows, highs))  # range + 1 padding slot
    if math.prod(shape) > _MAX_GRID_ENTRIES:
        raise InputError(f"{name}: Miller index range {lows}..{highs} is too large")
    values = np.zeros(shape, dtype=np.float64)
    given = np.zeros(shape, dtype=bool)

    pass2 = (_scanf_int, _scanf_int, _scanf_int, _scanf_double)
    pos = 0
    stored = 0
    while True:
        quad, end = _scanf_quad(text, pos, pass2)
        if quad is None:
            stop2 = end
            break
        slot = tuple(index - low for index, low in zip(quad[:3], lows))
        if not all(0 <= i < n for i, n in zip(slot, shape)):
            raise InputError(
                f"{name}:{_line_at(text, end)}: C's second reading of the file, with integer "
                f"indices, gets out of step and stores ({quad[0]} {quad[1]} {quad[2]}) outside its "
                f"table (undefined behaviour in C); write every Miller index as an integer")
        values[slot] = quad[3]
        given[slot] = True
        stored += 1
        pos = end
    if stop2 < stop1:
        warnings.append(f"WARNING: {name} line {_line_at(text, stop2)}: C's second reading, with "
                        f"integer indices, stops at '{_token_at(text, stop2)}' after {stored} of "
                        f"{len(quads)} reflections; the others keep default_F")
    return HKLTable(
        h_min=lows[0], h_max=highs[0], k_min=lows[1], k_max=highs[1], l_min=lows[2], l_max=highs[2],
        values=values, count=len(quads), warnings=warnings, given=given,
    )


def read_hkl(path, c_parity: bool = False) -> HKLTable:
    """Read an HKL text file into a dense :class:`HKLTable`.

    The file is a stream of numbers read four at a time as reflections
    ``h k l F`` (F is the structure factor amplitude, electrons), as in C.

    * Spec mode (``c_parity`` False): every line holds whole reflections
      (four numbers, or a multiple of four), every token is a number; blank
      lines and lines starting with '#' are skipped.  Anything else (an
      ``h k l F sigma`` line, a stray word) is an InputError naming the file
      and line.  A non-integer index is rounded to the nearest integer with a
      warning.
    * ``c_parity``: C's own reading, both fscanf() passes, including where each
      stops (see :func:`_read_hkl_like_c`).

    When a reflection appears twice the later one wins, as in C.  Entries the
    file does not list stay 0; use :func:`fill_default` to give them C's
    ``-default_F`` value.
    """
    name = os.fspath(path)
    warnings: list[str] = []
    clean = _read_clean_hkl(_read_bytes(path).decode("latin-1"))
    if clean is not None:
        hkl, amplitudes = clean
    elif c_parity:
        return _read_hkl_like_c(path, name, warnings)
    else:
        hkl, amplitudes = _read_hkl_lines(path, name, warnings)
    return hkl_table(hkl, amplitudes, name, warnings)


def hkl_table(hkl: np.ndarray, amplitudes: np.ndarray, name: str, warnings: list[str] | None = None) -> HKLTable:
    """The dense :class:`HKLTable` of a list of reflections.

    ``hkl`` is an int (n, 3) array of Miller indices (n >= 1), ``amplitudes``
    the (n,) structure factor amplitudes; ``name`` names the source in an
    error.  A reflection listed twice keeps its last amplitude.
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    lows = hkl.min(axis=0)
    highs = hkl.max(axis=0)
    shape = tuple(int(n) for n in highs - lows + 2)  # range + 1 padding slot per axis
    if math.prod(shape) > _MAX_GRID_ENTRIES:
        raise InputError(f"{name}: Miller index range {lows.tolist()}..{highs.tolist()} is too large")

    values = np.zeros(shape, dtype=np.float64)
    given = np.zeros(shape, dtype=bool)
    flat = np.ravel_multi_index(tuple((hkl - lows).T), shape)
    # Keep the last occurrence of each reflection: C overwrites as it reads.
    _, first_in_reversed = np.unique(flat[::-1], return_index=True)
    keep = len(flat) - 1 - first_in_reversed
    values.flat[flat[keep]] = amplitudes[keep]
    given.flat[flat[keep]] = True

    return HKLTable(
        h_min=int(lows[0]), h_max=int(highs[0]),
        k_min=int(lows[1]), k_max=int(highs[1]),
        l_min=int(lows[2]), l_max=int(highs[2]),
        values=values, count=len(amplitudes), warnings=warnings if warnings is not None else [], given=given,
    )


def fill_default(table: HKLTable, default_F: float) -> HKLTable:
    """Give every grid point the file did not list the amplitude ``default_F``.

    C initialises all real (non-padding) entries to default_F before reading
    the file; the padding slots at the end of each axis stay 0.  Modifies
    ``table`` in place and returns it for convenience.
    """
    missing = ~table.given
    missing[-1, :, :] = False
    missing[:, -1, :] = False
    missing[:, :, -1] = False
    table.values[missing] = default_F
    return table


def _fdump_header(table: HKLTable) -> bytes:
    """The ASCII header C writes in front of the Fdump grid: ranges, newline, form feed."""
    limits = (table.h_min, table.h_max, table.k_min, table.k_max, table.l_min, table.l_max)
    return ("%d %d %d %d %d %d\n\f" % limits).encode("ascii")


def write_fdump(path, table: HKLTable) -> None:
    """Write ``table`` in C's Fdump.bin layout.

    Layout: the header ``"h_min h_max k_min k_max l_min l_max\\n\\f"`` followed
    by the whole padded grid as little-endian float64, h slowest and l fastest,
    (h_range+1)*(k_range+1)*(l_range+1) values.
    """
    grid = np.ascontiguousarray(table.values, dtype="<f8")
    _atomic_write(path, [_fdump_header(table), grid.tobytes(order="C")])


_C_SPACE_BYTES = _C_WHITESPACE.encode("ascii")
_SIX_INTEGERS = re.compile(b"(?:[" + re.escape(_C_SPACE_BYTES) + rb"]*[+-]?\d+){6}")


def _fdump_data_as_c_reads_it(raw: bytes, expected_bytes: int, name: str) -> tuple[bytes, int]:
    """Where C's Fdump reader starts reading values, and the bytes it then has (quirk (t)).

    C reads the header with ``fscanf("%d%d%d%d%d%d\n\f")``; in a scanf format
    "\n" and "\f" both mean "skip any white space", so after the six numbers C
    skips every white-space byte, including those that begin the first value
    (a double whose lowest byte is 0x09-0x0d or 0x20).  ``fread`` then reads the
    values from there, shifted; what the file lacks at the end stays 0.
    """
    m = _SIX_INTEGERS.match(raw)
    start = m.end() if m else 0
    while start < len(raw) and raw[start] in _C_SPACE_BYTES:
        start += 1
    written = raw[:start] + raw[start:start + expected_bytes].ljust(expected_bytes, b"\0")
    shifted = start - (raw.find(b"\n\f") + 2)
    if shifted > 0:
        warn(f"{name}: the first value begins with {shifted} white-space byte(s), which C's "
             "reader skips: every value is read shifted (emulated under -c_parity)")
    return written, start


def read_fdump(path, c_parity: bool = False) -> HKLTable:
    """Read a structure-factor grid written by :func:`write_fdump` or by C.

    Raises InputError when the header is malformed or when the number of bytes
    after it is not exactly the size of the grid it announces, and (in spec
    mode, ``c_parity`` False) when a value is NaN or infinite; with
    ``c_parity`` such a value is kept, as C keeps it, with a warning.
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    end_of_header = raw.find(b"\n", 0, 256)
    if end_of_header < 0:
        raise InputError(f"{name}: not an Fdump file (no header line with six index limits)")
    fields_text = raw[:end_of_header].decode("ascii", errors="replace").split()
    limits = [_parse_number(token) for token in fields_text]
    if len(limits) != 6 or any(x is None or not math.isfinite(x) or x != int(x) for x in limits):
        raise InputError(f"{name}: not an Fdump file (header must be six integers, got {fields_text!r})")
    h_min, h_max, k_min, k_max, l_min, l_max = (int(x) for x in limits)
    if h_max < h_min or k_max < k_min or l_max < l_min:
        raise InputError(f"{name}: Fdump header has a maximum index below its minimum")

    start = end_of_header + 1
    if raw[start:start + 1] == b"\f":  # C writes a form feed after the newline
        start += 1
    shape = (h_max - h_min + 2, k_max - k_min + 2, l_max - l_min + 2)
    expected_bytes = math.prod(shape) * 8
    if c_parity:
        raw, start = _fdump_data_as_c_reads_it(raw, expected_bytes, name)
    found_bytes = len(raw) - start
    if found_bytes != expected_bytes:
        state = "truncated" if found_bytes < expected_bytes else "too long"
        raise InputError(
            f"{name}: Fdump file {state}: header announces {math.prod(shape)} float64 values "
            f"({expected_bytes} bytes) but {found_bytes} bytes follow")
    values = np.frombuffer(raw, dtype="<f8", count=math.prod(shape), offset=start)
    values = values.reshape(shape).astype(np.float64)  # native-order, writable copy
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        h, k, l = (int(i) + low for i, low in zip(bad[0], (h_min, k_min, l_min)))
        _not_finite(f"{name}: the structure factor of ({h} {k} {l})", "%g" % values[tuple(bad[0])], c_parity,
                    "the pixels that use it will be NaN or inf")
    count = (h_max - h_min + 1) * (k_max - k_min + 1) * (l_max - l_min + 1)
    return HKLTable(h_min, h_max, k_min, k_max, l_min, l_max, values=values, count=count)


# ---------------------------------------------------------------------------
# MOSFLM orientation matrix
# ---------------------------------------------------------------------------

def read_mosflm_matrix(path, c_parity: bool = False) -> np.ndarray:
    """Read the orientation part of a MOSFLM matrix file.

    Returns the first nine numbers of the file as a 3x3 float64 array of
    rows, exactly as written.  Column j is the j-th reciprocal cell vector
    (a*, b*, c*) multiplied by the wavelength, so the entries are
    dimensionless (Angstrom^-1 times Angstrom); divide by the wavelength in
    Angstrom to get a*, b*, c* in Angstrom^-1.  Line structure does not
    matter; anything after the ninth number (MOSFLM's U matrix and cell) is
    ignored.  A NaN or infinite number is an error, except with ``c_parity``,
    where it is kept as C keeps it (with a warning).
    """
    name = os.fspath(path)
    found: list[float] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        for token in line.split():
            value = _parse_number(token)
            if value is None:
                raise InputError(f"{name}:{lineno}: '{token}' is not a number")
            if not math.isfinite(value):
                _not_finite(f"{name}:{lineno}", token, c_parity,
                            "every cell vector, and so every pixel, will be NaN")
            found.append(value)
            if len(found) == 9:
                return np.array(found, dtype=np.float64).reshape(3, 3)
    raise InputError(f"{name}: expected nine numbers for the orientation matrix, found {len(found)}")


# ---------------------------------------------------------------------------
# Source lists
# ---------------------------------------------------------------------------

# Column separators of C's read_text_file(); '\r' is added so that files with
# Windows line endings read the same.
_SOURCE_DELIMITERS = re.compile(r"[ \t,;:!\r]+")
_SOURCE_COLUMNS = 5


def read_source_file(path, c_parity: bool = False) -> np.ndarray:
    """Read a source list: one source per line, ``X Y Z weight wavelength``.

    Columns may be separated by any of `` \\t,;:!``; blank lines are skipped.
    A line may hold fewer than five values: the missing ones are NaN, which
    the caller replaces with defaults (position along the beam, weight 1,
    the nominal wavelength).  Values past the fifth are ignored.  Units are
    those of the command line: X Y Z in metres, wavelength in metres.  A NaN
    or infinite number is an error, except with ``c_parity``, where it is read
    as C reads it (with a warning): C takes NaN as a missing value.

    Returns a float64 array of shape (number of sources, 5).
    """
    name = os.fspath(path)
    rows = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        tokens = [t for t in _SOURCE_DELIMITERS.split(line) if t]
        if not tokens:
            continue
        row = [math.nan] * _SOURCE_COLUMNS
        for column, token in enumerate(tokens[:_SOURCE_COLUMNS]):
            value = _parse_number(token)
            if value is None:
                # C's atof() would quietly read 0 here; a typo deserves an error.
                raise InputError(f"{name}:{lineno}: '{token}' is not a number")
            if not math.isfinite(value):
                _not_finite(f"{name}:{lineno}", token, c_parity,
                            "C takes nan as a missing value (its default) and inf as it is")
            row[column] = value
        rows.append(row)
    if not rows:
        raise InputError(f"{name}: no sources found (the file has no data lines)")
    return np.array(rows, dtype=np.float64)


# ---------------------------------------------------------------------------
# SMV images
# ---------------------------------------------------------------------------

# What C checks before accepting a file as SMV (the first 12 bytes).
_SMV_MAGIC = b"{\nHEADER_BYT"
# Keys whose line C ends without the usual ';'.
_KEYS_WITHOUT_SEMICOLON = frozenset({"DIALS_ORIGIN"})


@dataclass
class SMVImage:
    """An SMV image as read by :func:`read_smv`.

    ``header`` is the header text (its first ``header_bytes`` bytes, up to any
    NUL byte).  ``width`` is SIZE1 (fast pixels), ``height`` is SIZE2 (slow
    pixels).  ``data`` is a uint16 array of shape (height, width) in native
    byte order; ``byte_order`` is what the header declared.
    """

    path: str
    header: str
    header_bytes: int
    width: int
    height: int
    byte_order: str
    data: np.ndarray

    def value(self, keyword: str) -> float | None:
        """Number after ``keyword`` in the header, by C's ValueOf() rule.

        C finds the LAST place where ``keyword`` occurs as a substring, moves
        to the next '=' and reads a number there with atof().  Consequences
        kept on purpose: "ORGX" finds "XDS_ORGX", and "DISTANCE" finds
        "CLOSE_DISTANCE" when that comes later.  Returns None when the keyword
        does not occur (C: NaN), 0.0 when no '=' follows it or no number
        follows the '='.
        """
        return _value_of(self.header, keyword)

    def entries(self) -> dict[str, str]:
        """All ``KEY=value`` lines of the header as exact key -> raw text.

        Unlike :meth:`value` this matches whole keys; trailing ';' and
        surrounding blanks are removed from the values.
        """
        found = {}
        for line in self.header.split("\n"):
            key, sep, rest = line.partition("=")
            if sep:
                found[key.strip()] = rest.strip().rstrip(";").strip()
        return found


def _value_of(header: str, keyword: str) -> float | None:
    """C's ValueOf(): see :meth:`SMVImage.value`."""
    position = header.rfind(keyword)
    if position < 0 or not keyword:
        return None
    equals = header.find("=", position + len(keyword))
    if equals < 0:
        return 0.0
    return _atof(header[equals + 1:])


def _smv_dimension(value: float | None) -> int:
    """C's (int) cast of a header number; invalid values become 0."""
    if value is None or not math.isfinite(value):
        return 0
    return int(value)  # truncates toward zero, like C


def read_smv(path) -> SMVImage:
    """Read an SMV (ADSC) image: header and unsigned 16-bit pixels.

    The header size comes from HEADER_BYTES, the image size from SIZE1 (fast)
    and SIZE2 (slow), or from DETECTOR_DIMENSIONS when SIZE1 is absent or 0,
    as in C.  Pixels are read in the byte order the header declares
    (little_endian unless it says otherwise).  Raises InputError when the
    file does not start like an SMV header or is shorter than header + data.
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    if not raw.startswith(_SMV_MAGIC):
        raise InputError(f"{name}: not an SMV image (it does not start with '{{' and HEADER_BYTES)")
    if len(raw) < SMV_HEADER_BYTES:
        raise InputError(f"{name}: SMV file truncated: {len(raw)} bytes, shorter than a "
                         f"{SMV_HEADER_BYTES}-byte header")

    first_block = raw[:SMV_HEADER_BYTES].split(b"\0", 1)[0].decode("latin-1")
    header_bytes = _smv_dimension(_value_of(first_block, "HEADER_BYTES"))
    if header_bytes <= 0:
        raise InputError(f"{name}: SMV header has no valid HEADER_BYTES")
    if len(raw) < header_bytes:
        raise InputError(f"{name}: SMV file truncated: {len(raw)} bytes, header alone needs {header_bytes}")
    header = raw[:header_bytes].split(b"\0", 1)[0].decode("latin-1")

    width = _smv_dimension(_value_of(header, "SIZE1"))
    height = _smv_dimension(_value_of(header, "SIZE2"))
    if width == 0:
        width = height = _smv_dimension(_value_of(header, "DETECTOR_DIMENSIONS"))
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: SMV header has no valid SIZE1/SIZE2 (got {width} x {height})")

    byte_order = _declared_byte_order(header)
    needed = header_bytes + 2 * width * height
    if len(raw) < needed:
        raise InputError(f"{name}: SMV file truncated: {len(raw)} bytes, header and "
                         f"{width}x{height} pixels need {needed}")
    dtype = "<u2" if byte_order.startswith("little_end") else ">u2"
    pixels = np.frombuffer(raw, dtype=dtype, count=width * height, offset=header_bytes)
    data = pixels.reshape(height, width).astype(np.uint16)
    return SMVImage(name, header, header_bytes, width, height, byte_order, data)


def _declared_byte_order(header: str) -> str:
    """The word after the last BYTE_ORDER= in the header ("little_endian" if none).

    C compares only its first 10 characters with the machine's order.
    """
    position = header.rfind("BYTE_ORDER=")
    if position < 0:
        return "little_endian"
    rest = header[position + len("BYTE_ORDER="):]
    return re.split(r"[;\s]", rest, maxsplit=1)[0]


def smv_header_fields(fpixels: int, spixels: int, pixel_size_mm: float, distance_mm: float,
                      wavelength_A: float, beam_center_x_mm: float, beam_center_y_mm: float,
                      adxv_x: float, adxv_y: float, mosflm_x: float, mosflm_y: float,
                      denzo_x: float, denzo_y: float, dials_origin: Sequence[float],
                      orgx: float, orgy: float, close_distance_mm: float, phi_deg: float,
                      osc_deg: float, twotheta_deg: float) -> list[tuple[str, object]]:
    """The (key, value) pairs of C's SMV header, in C's order.

    All numbers must already be in header units: millimetres for lengths and
    beam centres (adxv/mosflm/denzo included), Angstrom for the wavelength,
    pixels for XDS_ORGX/ORGY, degrees for angles; ``dials_origin`` is three
    numbers in mm.  OSC_START repeats PHI, as in C.  Pixel counts are written
    with %d, everything else with %g.
    """
    return [
        ("HEADER_BYTES", str(SMV_HEADER_BYTES)),
        ("DIM", "2"),
        ("BYTE_ORDER", "little_endian"),
        ("TYPE", "unsigned_short"),
        ("SIZE1", int(fpixels)),
        ("SIZE2", int(spixels)),
        ("PIXEL_SIZE", float(pixel_size_mm)),
        ("DISTANCE", float(distance_mm)),
        ("WAVELENGTH", float(wavelength_A)),
        ("BEAM_CENTER_X", float(beam_center_x_mm)),
        ("BEAM_CENTER_Y", float(beam_center_y_mm)),
        ("ADXV_CENTER_X", float(adxv_x)),
        ("ADXV_CENTER_Y", float(adxv_y)),
        ("MOSFLM_CENTER_X", float(mosflm_x)),
        ("MOSFLM_CENTER_Y", float(mosflm_y)),
        ("DENZO_X_BEAM", float(denzo_x)),
        ("DENZO_Y_BEAM", float(denzo_y)),
        ("DIALS_ORIGIN", tuple(float(x) for x in dials_origin)),
        ("XDS_ORGX", float(orgx)),
        ("XDS_ORGY", float(orgy)),
        ("CLOSE_DISTANCE", float(close_distance_mm)),
        ("PHI", float(phi_deg)),
        ("OSC_START", float(phi_deg)),
        ("OSC_RANGE", float(osc_deg)),
        ("TWOTHETA", float(twotheta_deg)),
        ("DETECTOR_SN", "000"),
        ("BEAMLINE", "fake"),
    ]


def c_format(spec: str, value: float) -> str:
    """``spec % value`` as C's printf writes it: a NaN whose sign bit is set prints "-nan"."""
    value = float(value)
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    return spec % value


def _format_smv_value(value) -> str:
    """Text of one header value: strings verbatim, integers %d, reals %g, sequences comma-joined %g."""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return "%d" % value
    if isinstance(value, numbers.Real):
        return c_format("%g", value)
    return ",".join(c_format("%g", x) for x in value)


def _smv_header_text(pairs, header_bytes: int) -> bytes:
    """The header text for ``pairs`` (no padding), HEADER_BYTES written as ``header_bytes``."""
    lines = ["{\n"]
    for key, value in pairs:
        if key == "HEADER_BYTES":
            value = header_bytes
        end = "\n" if key in _KEYS_WITHOUT_SEMICOLON else ";\n"
        lines.append(f"{key}={_format_smv_value(value)}{end}")
    lines.append("}\f")
    return "".join(lines).encode("ascii")


def format_smv_header(fields) -> bytes:
    """The SMV header for ``fields``: "{\\n", one "KEY=value;\\n" per field, "}\\f", space padded.

    ``fields`` is a sequence of (key, value) pairs or a mapping, in output
    order.  As in C, the DIALS_ORIGIN line has no ';'.  The header is 512
    bytes, byte for byte C's, whenever the text fits in 512 bytes.  A longer
    text (long numbers, e.g. with a two-theta) is padded to the next multiple
    of 512 bytes instead; the HEADER_BYTES entry always states the size
    actually written, whatever value ``fields`` gave it, so that readers find
    the pixels.  (C writes the long text unpadded under HEADER_BYTES=512,
    which puts the pixels at the wrong offset.)
    """
    pairs = list(fields.items() if hasattr(fields, "items") else fields)
    size = SMV_HEADER_BYTES
    while True:
        text = _smv_header_text(pairs, size)
        if len(text) <= size:
            return text.ljust(size, b" ")
        # A longer HEADER_BYTES value can itself push the text past the new size,
        # hence the loop (it ends: the text grows far slower than the size).
        size = -(-len(text) // SMV_HEADER_BYTES) * SMV_HEADER_BYTES


def write_smv(path, image_uint16: np.ndarray, header_fields) -> None:
    """Write an SMV image: the header (512 bytes, or the next multiple of 512 bytes
    when the text is longer; see :func:`format_smv_header`), then little-endian
    uint16 pixels.

    ``image_uint16`` has shape (slow, fast) = (SIZE2, SIZE1), fast index
    varying fastest in the file; ``header_fields`` is as for
    :func:`format_smv_header` (usually from :func:`smv_header_fields`).
    """
    image = np.asarray(image_uint16)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"write_smv needs a 2-D uint16 array, got {image.dtype} with shape {image.shape}")
    pairs = dict(header_fields.items() if hasattr(header_fields, "items") else header_fields)
    declared = (pairs.get("SIZE2", image.shape[0]), pairs.get("SIZE1", image.shape[1]))
    if tuple(int(n) for n in declared) != image.shape:
        raise ValueError(f"SMV header says {declared[1]}x{declared[0]} pixels but the image has shape {image.shape}")
    header = format_smv_header(header_fields)
    _atomic_write(path, [header, np.ascontiguousarray(image, dtype="<u2").tobytes()])


# ---------------------------------------------------------------------------
# PGM preview and raw float image
# ---------------------------------------------------------------------------

def write_pgm(path, image_uint8: np.ndarray, pgm_scale: float) -> None:
    """Write an 8-bit binary PGM ("P5") preview as C does.

    ``image_uint8`` has shape (slow, fast); the header records width = fast
    pixels, height = slow pixels and, in a comment, the scale factor that
    turned photons into grey levels.
    """
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"write_pgm needs a 2-D uint8 array, got {image.dtype} with shape {image.shape}")
    height, width = image.shape
    header = "P5\n%d %d\n# pixels scaled by %g\n255\n" % (width, height, pgm_scale)
    _atomic_write(path, [header.encode("ascii"), np.ascontiguousarray(image).tobytes()])


def write_float_image(path, image: np.ndarray) -> None:
    """Write pixel values as raw little-endian float32, fast index fastest.

    ``image`` has shape (slow, fast) (any shape is flattened in C order);
    values are photons per pixel.  There is no header.
    """
    data = np.ascontiguousarray(image, dtype="<f4")
    _atomic_write(path, [data.tobytes(order="C")])
