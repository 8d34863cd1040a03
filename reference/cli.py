"""The ``nanobragg`` command line: flags in, image files out.

``parse_args`` turns the C program's flags into a :class:`Config`;
``main`` runs the simulation with the chosen engine and writes the outputs.
Any :class:`InputError` becomes one ``nanobragg: error: ...`` line and exit
status 2.
"""

from __future__ import annotations

import difflib
import sys

import numpy as np

from reference.config import Config
from reference.errors import InputError
from reference.flags import BY_NAME, FLAGS, RTD, CNumbers, StrictNumbers, is_number


def _looks_like_flag(text: str) -> bool:
    return text.startswith("-") and not is_number(text)


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


def _check_value(name, values):
    """Reject values that no run can use (zero pixels, zero wavelength...)."""
    if name in _POSITIVE and StrictNumbers(name).f(values[0]) <= 0:
        raise InputError(f"{name} must be positive, got '{values[0]}'")


def _take_values(tokens, i, flag):
    """The values that follow ``tokens[i]`` for ``flag``, checked for count."""
    name = tokens[i]
    rest = tokens[i + 1:]
    if flag.nvalues == -6:                      # -cell: one to six numbers
        values = []
        for text in rest[:6]:
            if text.startswith("-"):
                break
            values.append(text)
        if not values:
            raise InputError(f"{name} needs at least one value")
        return values
    if name == "-misset" and rest and "rand" in rest[0]:
        return rest[:1]
    wanted = flag.nvalues
    values = rest[:wanted]
    if len(values) < wanted or any(_looks_like_flag(v) for v in values):
        raise InputError(f"{name} needs {wanted} value{'s' if wanted > 1 else ''}")
    return values


def _scan(tokens):
    """Split the tokens into (flag, values) pairs, rejecting anything unknown."""
    pairs = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not _looks_like_flag(token):
            raise InputError(f"unexpected argument '{token}' (values must follow their flag)")
        flag = BY_NAME.get(token)
        if flag is None:
            raise _unknown_flag(token)
        values = _take_values(tokens, i, flag)
        pairs.append((token, flag, values))
        i += 1 + len(values)
    return pairs


def _replay_like_c(cfg: Config, tokens) -> None:
    """Run every handler the C program would run, the way it would run it."""
    numbers = CNumbers()
    argc = len(tokens) + 1                       # C counts the program name
    for i0, token in enumerate(tokens):
        if not token.startswith("-"):
            continue
        known = BY_NAME.get(token)
        if known is not None and known.ours:
            _apply(cfg, known, tokens[i0 + 1:i0 + 1 + max(known.nvalues, 0)], StrictNumbers(token))
            continue
        i = i0 + 1                                # C index of this argument
        for flag in FLAGS:
            if flag.ours or not flag.c_match(token) or not argc > i + flag.c_need:
                continue
            values = tokens[i0 + 1:i0 + 7]
            if flag.nvalues != 0 and not values:
                continue
            outcome = flag.action(cfg, values, numbers)
            if flag.stop or outcome == "stop":
                break


def _apply(cfg, flag, values, numbers):
    flag.action(cfg, values, numbers)


def _apply_header(cfg: Config, path: str, is_mask: bool) -> None:
    """Let an SMV header set the geometry, as the C program does before the flags."""
    from reference.fileio import read_smv

    frame = read_smv(path)
    cfg.header_notes.append("reading %s" % path)
    cfg.fpixels, cfg.spixels = frame.width, frame.height

    def value(key):
        return frame.value(key)

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
    pairs = _scan(tokens)
    parity = any(name == "-c_parity" for name, _, _ in pairs)

    cfg = Config()
    cfg.c_parity = parity
    # validate every value strictly, whatever the mode
    scratch = Config()
    for name, flag, values in pairs:
        _check_value(name, values)
        flag.action(scratch, values, _CheckedNumbers(name))

    # the -mask and -img headers come first, mask before image (C order)
    if parity:
        # C scans every argument: the last one containing "-mask"/"-img" wins
        mask = img = None
        for i, t in enumerate(tokens[:-1]):
            if t.startswith("-") and "-mask" in t:
                mask = tokens[i + 1]
            if t.startswith("-") and "-img" in t:
                img = tokens[i + 1]
    else:
        mask, img = scratch.mask_file, scratch.img_file
    if mask:
        _apply_header(cfg, mask, is_mask=True)
    if img:
        _apply_header(cfg, img, is_mask=False)

    if parity:
        _replay_like_c(cfg, tokens)
    else:
        for name, flag, values in pairs:
            flag.action(cfg, values, StrictNumbers(name))
    cfg.mask_file, cfg.img_file = mask, img
    return cfg


def usage() -> str:
    lines = ["usage: nanobragg -mat auto.mat -hkl Fs.hkl [flags]   (or -cell a b c al be ga, -default_F F)",
             "flags (the C program's, plus ours):"]
    for f in FLAGS:
        spell = " ".join(f.names)
        lines.append(f"  {spell:<40} {f.help}")
    return "\n".join(lines)


def console_main() -> None:
    """The ``nanobragg`` script: run, then leave without a slow final collection.

    After a run the interpreter holds many compiled-code objects; freezing
    them skips the garbage collector's last sweep over them at exit
    (measured: 0.3-0.4 s of a whole run).
    """
    import gc
    # Numba imports SciPy's BLAS bindings on its first compiled call when SciPy is
    # installed (0.17 s measured), although no kernel here calls BLAS.  This process
    # is ours alone, so the command line hides them; the library never does.
    sys.modules.setdefault("scipy.linalg.cython_blas", None)
    status = main()
    sys.stdout.flush()
    gc.freeze()
    sys.exit(status)


def main(argv=None) -> int:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "-help", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        cfg = parse_args(argv)
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
