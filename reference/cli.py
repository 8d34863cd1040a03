"""The ``nanobragg`` command line: flags in, image files out.

``parse_args`` turns the C program's flags into a :class:`Config`;
``main`` runs the simulation with the chosen engine and writes the outputs.
Any :class:`InputError` becomes one ``nanobragg: error: ...`` line and exit
status 2.
"""

from __future__ import annotations

import difflib
import math
import re
import sys

import numpy as np

from reference.config import Config
from reference import interrupts
from reference.errors import InputError, reset_warnings, warn
from reference.flags import BY_NAME, FLAGS, RTD, CNumbers, StrictNumbers, is_number


# a token that starts like a negative number ("-50", "-.5", "-1_000") is a value, even when
# it is a malformed one: the flag before it then says what is wrong with it
_NUMERIC_START = re.compile(r"-\.?[0-9]")


def _looks_like_flag(text: str) -> bool:
    if text in BY_NAME:                         # -4stol starts like a number
        return True
    return text.startswith("-") and not is_number(text) and _NUMERIC_START.match(text) is None


def _unknown_flag(token: str) -> InputError:
    close = difflib.get_close_matches(token, list(BY_NAME), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return InputError(f"unknown flag '{token}'{hint}")


C_INT_MAX = 2**31 - 1

# flags whose (first) value must be a positive number, checked before any handler runs
_POSITIVE = {n for name in ("-detpixels", "-detpixels_f", "-detpixels_s", "-pixel", "-lambda", "-energy",
                            "-oversample") for n in BY_NAME[name].names}


class _CheckedNumbers(StrictNumbers):
    """Strict numbers whose whole numbers also fit the C program's int."""

    def i(self, text: str) -> int:
        value = super().i(text)
        if abs(value) > C_INT_MAX:
            raise InputError(f"{self.flag} expects a whole number below 2^31, got '{text}'")
        return value


_CELL_PARTS = ("length a", "length b", "length c", "angle alpha", "angle beta", "angle gamma")


def _check_cell(name, values, parity):
    """-cell: lengths positive, angles strictly between 0 and 180 degrees.

    C reads a b, c or angle of 0 as "not given" (b = c = a, angles 90); spec
    mode refuses it, -c_parity takes it the C way with a warning.
    """
    numbers = StrictNumbers(name)
    for j, text in enumerate(values):
        value = numbers.f(text)
        part = _CELL_PARTS[j]
        if j < 3 and (value < 0 or (j == 0 and value == 0)):
            raise InputError(f"{name}: the cell {part} must be positive, got '{text}'")
        if j >= 3 and not 0.0 <= value < 180.0:
            raise InputError(f"{name}: the cell {part} must lie between 0 and 180 degrees, got '{text}'")
        if value == 0:
            meaning = "the length a" if j < 3 else "90 degrees"
            if not parity:
                raise InputError(f"{name}: the cell {part} must be "
                                 f"{'positive' if j < 3 else 'between 0 and 180 degrees'}, got '{text}' "
                                 f"(the C program would read 0 as {meaning})")
            warn(f"{name}: reading the cell {part} of 0 as {meaning}, as the C program does", topic="-cell zero")


def _check_value(flag, name, values, parity=False):
    """Reject values that no run can use (zero pixels, zero wavelength, a negative cell...)."""
    if flag.names[0] in _POSITIVE and StrictNumbers(name).f(values[0]) <= 0:
        raise InputError(f"{name} must be positive, got '{values[0]}'")
    if flag.nvalues == -6:
        _check_cell(name, values, parity)


def _take_values(tokens, i, flag):
    """The values that follow ``tokens[i]`` for ``flag``, checked for count."""
    name = tokens[i]
    rest = tokens[i + 1:]
    if flag.nvalues == -6:                      # -cell: one to six numbers
        values = []
        for text in rest[:6]:
            # C stops at any token starting with '-'; we take negative numbers too,
            # so that the message can say which value is wrong
            if _looks_like_flag(text):
                break
            values.append(text)
        if not values:
            raise InputError(f"{name} needs at least one value (a b c alpha beta gamma, in A and degrees)")
        return values
    if flag is BY_NAME["-misset"] and rest and "rand" in rest[0]:
        return rest[:1]
    wanted = flag.nvalues
    values = rest[:wanted]
    if len(values) < wanted or any(_looks_like_flag(v) for v in values):
        raise InputError(f"{name} needs {wanted} value{'s' if wanted > 1 else ''}")
    return values


def _c_line(tokens):
    """The C program's command line and where each token lands in it.

    Returns (C's tokens, for each of ``tokens`` its index among C's tokens or
    None).  Our own flags and their values are left out: C never sees them,
    so they must neither count in its ``argc`` nor be read as its values.  A
    token spelled like one of our flags is that flag, since values never
    look like flags.
    """
    c_tokens, where, skip = [], [], 0
    for token in tokens:
        flag = BY_NAME.get(token)
        if skip:
            skip -= 1
            where.append(None)
        elif flag is not None and flag.ours:
            skip = max(flag.nvalues, 0)
            where.append(None)
        else:
            where.append(len(c_tokens))
            c_tokens.append(token)
    return c_tokens, where


def _run_c_handlers(cfg: Config, tokens, i0, numbers) -> list:
    """Run on ``cfg`` the handlers C runs for argument ``tokens[i0]``; return them, in C order.

    ``tokens`` is C's command line (see :func:`_c_line`).
    """
    token = tokens[i0]
    argc, i = len(tokens) + 1, i0 + 1            # C counts the program name
    ran = []
    for flag in FLAGS:
        if flag.ours or not flag.c_match(token) or not argc > i + flag.c_need:
            continue
        values = tokens[i0 + 1:i0 + 7]
        if flag.nvalues != 0 and not values:
            continue
        ran.append(flag)
        outcome = flag.action(cfg, values, numbers)
        if flag.stop or outcome == "stop":
            break
    return ran


def _c_reading(c_tokens, j) -> list:
    """The handlers C runs for its argument ``c_tokens[j]``, without changing anything."""
    ran = _run_c_handlers(Config(), c_tokens, j, CNumbers())
    # C takes -mask in a scan of its own before the handlers, with the same kind of test
    if "-mask" in c_tokens[j] and j + 1 < len(c_tokens):
        ran.insert(0, BY_NAME["-mask"])
    return ran


def _names(flags) -> str:
    return ", ".join(f.names[0] for f in flags)


def _values_for_several(tokens, i, flags):
    """Values of a token that runs several C handlers (-c_parity only).

    C reads whatever follows; we take the tokens that do not look like flags,
    up to the most values any of the handlers reads.
    """
    most = max(6 if f.nvalues == -6 else f.nvalues for f in flags)
    values = []
    for text in tokens[i + 1:i + 1 + most]:
        if _looks_like_flag(text):
            break
        values.append(text)
    return values


def _scan(tokens, notes=None):
    """Split the tokens into (token, flag, values) triples, rejecting anything unknown.

    A token that is not a flag's exact spelling is read the C way: when C's
    substring test gives it to exactly one handler, it is that flag, and a
    line saying so is added to ``notes``.  When it runs several handlers,
    it is an error, except under -c_parity, where its flag is None and the
    C replay runs them all.  A token that C would ignore is an error.
    """
    parity = "-c_parity" in tokens
    c_tokens, where = _c_line(tokens)
    pairs = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _looks_like_flag(token):
            raise InputError(f"unexpected argument '{token}' (values must follow their flag)")
        flag = BY_NAME.get(token)
        if flag is None:
            ran = _c_reading(c_tokens, where[i]) if where[i] is not None else []
            if not ran:
                raise _unknown_flag(token)
            if len(ran) > 1:
                if not parity:
                    raise InputError(f"ambiguous flag '{token}': the C program would run all of {_names(ran)} "
                                     f"for it (quirk (e)); spell the one you mean")
                values = _values_for_several(tokens, i, ran)
                if notes is not None:
                    notes.append(f"reading {token} as {_names(ran)}, as the C program does")
                pairs.append((token, None, values))
                i += 1 + len(values)
                continue
            flag = ran[0]
            if notes is not None:
                notes.append(f"reading {token} as {flag.names[0]}")
        values = _take_values(tokens, i, flag)
        pairs.append((token, flag, values))
        i += 1 + len(values)
    return pairs


def _replay_like_c(cfg: Config, tokens) -> None:
    """Run every handler the C program would run, the way it would run it.

    ``tokens`` is the C program's command line (see :func:`_c_line`): our
    own flags must not count in C's ``argc`` nor be read as C values.
    """
    numbers = CNumbers()
    for i0, token in enumerate(tokens):
        if token.startswith("-"):
            _run_c_handlers(cfg, tokens, i0, numbers)


def _apply_header(cfg: Config, path: str, is_mask: bool) -> None:
    """Let an SMV header set the geometry, as the C program does before the flags."""
    from reference.fileio import read_smv

    frame = read_smv(path)
    cfg.header_notes.append("reading %s" % path)
    cfg.fpixels, cfg.spixels = frame.width, frame.height

    def value(key):
        number = frame.value(key)
        if number is not None and not math.isfinite(number):
            # C's atof reads "nan" and "inf"; C then skips a NaN (its "not given") and applies inf
            position = frame.header.rfind(key)                 # C's rule: the last occurrence
            line = frame.header[frame.header.rfind("\n", 0, position) + 1:].split("\n", 1)[0].strip()
            where = f"{path}: the SMV header line '{line}' gives {key} = {number:g}"
            if not cfg.c_parity:
                raise InputError(f"{where}, not a finite number")
            effect = ("ignores it, as a value not given" if math.isnan(number)
                      else "applies it, so the geometry and the image may be NaN")
            warn(f"{where}, not a finite number; -c_parity does what the C program does: {effect}",
                 topic=f"not finite: {path}")
            if math.isnan(number):
                return None
        return number

    if value("PIXEL_SIZE") is not None:
        cfg.pixel_size = value("PIXEL_SIZE") / 1000.0
    cfg.detsize_f = cfg.pixel_size * cfg.fpixels
    cfg.detsize_s = cfg.pixel_size * cfg.spixels
    if value("DISTANCE") is not None:
        cfg.distance = value("DISTANCE") / 1000.0
    if value("CLOSE_DISTANCE") is not None:
        cfg.close_distance = value("CLOSE_DISTANCE") / 1000.0
    if value("WAVELENGTH") is not None:
        cfg.lambda0 = value("WAVELENGTH") / 1e10
    if value("BEAM_CENTER_X") is not None:
        cfg.Xbeam = value("BEAM_CENTER_X") / 1000.0
    if value("BEAM_CENTER_Y") is not None:
        y = value("BEAM_CENTER_Y") / 1000.0
        # a mask's header counts Y from the other edge (C behaviour, kept)
        cfg.Ybeam = cfg.detsize_s - y if is_mask else y
    if value("ORGX") is not None:
        cfg.ORGX = value("ORGX")
    if value("ORGY") is not None:
        cfg.ORGY = value("ORGY")
    if value("PHI") is not None:
        cfg.phi0 = value("PHI") / RTD
    if value("OSC_RANGE") is not None:
        cfg.osc = value("OSC_RANGE") / RTD
    if value("TWOTHETA") is not None:
        # C reads it into a scratch variable and drops it; spec mode applies it
        # (before the flags, so a -twotheta flag still wins)
        cfg.header_twotheta = value("TWOTHETA") / RTD
        if not cfg.c_parity:
            cfg.detector_twotheta = cfg.header_twotheta
    if is_mask:
        cfg.mask_image = np.ascontiguousarray(frame.data.reshape(cfg.spixels, cfg.fpixels))


def parse_args(tokens) -> Config:
    """Build a :class:`Config` from the command-line tokens (without the program name)."""
    tokens = list(tokens)
    notes = []
    pairs = _scan(tokens, notes)
    parity = any(name == "-c_parity" for name, _, _ in pairs)

    cfg = Config()
    cfg.c_parity = parity
    cfg.spelling_notes = notes
    # validate every value strictly, whatever the mode
    scratch = Config()
    for name, flag, values in pairs:
        if flag is None:                # several C handlers (-c_parity): C's atof reads the values
            continue
        _check_value(flag, name, values, parity)
        flag.action(scratch, values, _CheckedNumbers(name))

    c_tokens, _ = _c_line(tokens)
    # the -mask and -img headers come first, mask before image (C order)
    if parity:
        # C scans every argument: the last one containing "-mask"/"-img" wins
        mask = img = None
        for i, t in enumerate(c_tokens[:-1]):
            if t.startswith("-") and "-mask" in t:
                mask = c_tokens[i + 1]
            if t.startswith("-") and "-img" in t:
                img = c_tokens[i + 1]
    else:
        mask, img = scratch.mask_file, scratch.img_file
    if mask:
        _apply_header(cfg, mask, is_mask=True)
    if img:
        _apply_header(cfg, img, is_mask=False)

    if parity:
        for name, flag, values in pairs:
            if flag is not None and flag.ours:
                flag.action(cfg, values, StrictNumbers(name))
        _replay_like_c(cfg, c_tokens)
    else:
        for name, flag, values in pairs:
            flag.action(cfg, values, StrictNumbers(name))
    cfg.mask_file, cfg.img_file = mask, img
    _structure_factor_source(cfg, pairs)
    return cfg


def _structure_factor_source(cfg: Config, pairs) -> None:
    """-hkl or -model, their options, and the unit cell an MTZ, mmCIF or model file gives."""
    given = {flag.names[0] for _, flag, _ in pairs if flag is not None}
    if "-hkl" in given and "-model" in given:
        raise InputError("give -hkl (reflections) or -model (coordinates), not both")
    from reference import reflections
    reflections.check_options(cfg)
    reflections.adopt_file_cell(cfg)


def usage() -> str:
    lines = ["usage: nanobragg -mat auto.mat -hkl Fs.hkl [flags]   (or -cell a b c al be ga, -default_F F)",
             "       nanobragg -h | -help | --help      this help",
             "       nanobragg -version | --version     the version",
             "flags (the C program's, plus ours), each with its unit in parentheses and its default:"]
    for f in FLAGS:
        spell = " ".join(f.names)
        lines.append(f"  {spell:<40} {f.help} [default: {f.default}]")
    return "\n".join(lines)


# Exit status when standard output is closed early: what a shell reports for a
# program killed by SIGPIPE (128 + 13), as the C program would be, so that a
# script with `set -o pipefail` can tell that the output was cut short.
EXIT_BROKEN_PIPE = 141


def _interrupted(exc) -> int:
    """One line for a run stopped by a signal; its exit status is 128 + the signal number."""
    try:
        print(f"nanobragg: interrupted by {exc.name}", file=sys.stderr)
    except (OSError, ValueError):
        pass                    # a hung-up terminal (SIGHUP) may refuse the line
    return exc.exit_status


def console_main() -> None:
    """The ``nanobragg`` script: run, then leave without the interpreter's shut-down
    (:func:`reference.interrupts.leave` says why)."""
    try:
        # Numba imports SciPy's BLAS bindings on its first compiled call when SciPy is
        # installed (0.17 s measured), although no kernel here calls BLAS.  This process
        # is ours alone, so the command line hides them; the library never does.
        sys.modules.setdefault("scipy.linalg.cython_blas", None)
        # SIGINT, SIGTERM and SIGHUP raise Interrupted: the staged writes remove their
        # temporary files on the way out (only here: importing the library installs nothing).
        # Inside the try, so that a signal at any step from here on ends in one line.
        interrupts.install()
        status = main()
        sys.stdout.flush()
    except interrupts.Interrupted as exc:
        status = _interrupted(exc)
    except BrokenPipeError:
        # Whoever read our standard output has gone (`nanobragg -h | head`): stop
        # quietly.  Standard output now points at /dev/null, so that the
        # interpreter's last flush of what is still buffered cannot fail again
        # and print a traceback at exit.
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        status = EXIT_BROKEN_PIPE
    interrupts.finishing()      # nothing left to clean up: a late signal ends the process at once
    interrupts.leave(status)


HELP_FLAGS = ("-h", "-help", "--help")
VERSION_FLAGS = ("-version", "--version")


def version() -> str:
    """The installed package's version, or the source tree's when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version as installed
        return installed("nanobragg")
    except (ImportError, PackageNotFoundError):
        from reference import __version__
        return __version__


def main(argv=None) -> int:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    reset_warnings()
    if not argv or any(token in HELP_FLAGS for token in argv):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if any(token in VERSION_FLAGS for token in argv):
        print(f"nanobragg {version()}")
        return 0
    try:
        cfg = parse_args(argv)
        for note in cfg.spelling_notes:
            print(f"nanobragg: note: {note}", file=sys.stderr)
        from reference.run import run
        run(cfg)
    except InputError as exc:
        print(f"nanobragg: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"nanobragg: error: not enough memory for this run ({exc or 'allocation failed'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanobragg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    console_main()
