"""One simulation run: config in, statistics printed, image files written.

This is the part of the command line that sits between parsing and the
engines: it builds the scene, calls the chosen engine for the float image,
then derives the int, PGM and noise images exactly as the C program does.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from reference import fileio
from reference.config import Config
from reference.errors import InputError
from reference.flags import RTD
from reference.scene import Scene, build_scene, rendered_mask, roi_mask


def _outputs(cfg: Config):
    files = [cfg.floatfile, cfg.intfile]
    if cfg.write_pgm:
        files.append(cfg.pgmfile)
    if cfg.calculate_noise:
        files.append(cfg.noisefile)
    return files


def render_float_image(sc: Scene, progress: bool):
    """The float image from the engine the config names."""
    cfg = sc.cfg
    if cfg.engine == "torch":
        try:
            from torchsim.engine import render as torch_render
        except ImportError as exc:
            raise InputError(f"the torch engine is not available: {exc}") from None
        return torch_render(sc, progress=progress)
    from reference.render import render
    return render(sc, progress=progress)


def check_finite(sc: Scene, image: np.ndarray) -> None:
    """Refuse (spec mode) or announce (-c_parity) a float image holding NaN or inf, with its cause.

    Under -c_parity the image is written as C writes it, with one warning,
    unless the cause is the torch engine's own float32 overflow (C would not
    overflow there: refused in both modes).  A NaN or inf that came in with an
    input file has had its warning already.
    """
    from reference import overflow
    from reference.errors import warn, warned_about

    cfg = sc.cfg
    found = overflow.explain(sc, image, engine_float32=cfg.engine == "torch" and cfg.dtype == "float32")
    if found is None:
        return
    problem, kind = found
    if not cfg.c_parity or kind == "float32":
        raise InputError(f"{problem}; no file written")
    if not (kind == "input" and warned_about("not finite")):
        warn(f"{problem}; written as the C program writes it (-c_parity)", topic="image not finite")


def c_g(value: float, spec: str = "%g") -> str:
    """``spec % value`` as C's printf writes it: a NaN with its sign bit set is "-nan"."""
    return fileio.c_format(spec, value)


def statistics(sc: Scene, image: np.ndarray):
    """C's max, mean, rms and rmsd over the rendered pixels.

    NaN and inf pixels go through the sums as in C (the mean of an image
    holding inf is inf), and the maximum, like C's running ``>`` test, skips NaN.
    """
    with np.errstate(all="ignore"):
        return _statistics(sc, image)


def _statistics(sc: Scene, image: np.ndarray):
    roi = roi_mask(sc)
    rendered = rendered_mask(sc)
    values = image[rendered].astype(np.float64)
    max_I, max_x, max_y = 0.0, 0.0, 0.0
    comparable = np.where(np.isnan(values), -np.inf, values)    # NaN > max_I is false in C
    if values.size and comparable.max() > 0.0:
        idx = np.flatnonzero(rendered.ravel())[int(np.argmax(comparable))]
        spixel, fpixel = divmod(int(idx), sc.fpixels)
        max_I = float(comparable.max())
        sub = sc.pixel_size / sc.oversample
        last = sc.oversample - 1
        max_x = sub * (fpixel * sc.oversample + last) + sub / 2.0
        max_y = sub * (spixel * sc.oversample + last) + sub / 2.0
    n = max(values.size, 1)
    avg = float(values.sum()) / n
    n_rms = n if n > 1 else 2
    if sc.cfg.c_parity:
        # C squares its float image in single precision: tiny pixels square to 0 (quirk (r))
        squares = (values.astype(np.float32) * values.astype(np.float32)).astype(np.float64)
    else:
        squares = values * values
    rms = math.sqrt(float(squares.sum()) / (n_rms - 1))
    in_roi = image[roi].astype(np.float64)
    n_roi = in_roi.size if in_roi.size > 1 else 2
    rmsd = math.sqrt(float(((in_roi - avg) ** 2).sum()) / (n_roi - 1))
    return max_I, max_x, max_y, avg, rms, rmsd


def int_image(sc: Scene, image: np.ndarray, scale: float, roi: np.ndarray) -> np.ndarray:
    """Scaled, offset, clipped and rounded 16-bit image (C rounds via float).

    A NaN pixel (an inf pixel times C's scale of 0 is one) becomes 0, what C's
    conversion to unsigned short gives on x86-64.
    """
    with np.errstate(all="ignore"):
        test = image.astype(np.float64) * scale + sc.cfg.adc_offset
        test = np.clip(test, 0.0, 65535.0)
        rounded = np.floor((test + 0.5).astype(np.float32))
    rounded = np.where(np.isnan(rounded), 0.0, rounded)
    return np.where(roi, rounded, 0).astype(np.uint16)


def pgm_image(image: np.ndarray, scale: float, roi: np.ndarray) -> np.ndarray:
    """8-bit grey levels; a NaN pixel becomes 0, as in C on x86-64."""
    with np.errstate(all="ignore"):
        test = np.minimum(image.astype(np.float64) * scale, 255.0)
        test = np.clip(test, 0.0, 255.0)
    test = np.where(np.isnan(test), 0.0, test)
    return np.where(roi, np.trunc(test), 0).astype(np.uint8)


def header_fields(sc: Scene):
    px = sc.pixel_size
    return fileio.smv_header_fields(
        sc.fpixels, sc.spixels, px * 1000.0, sc.distance * 1000.0, sc.lambda0 * 1e10,
        sc.Xbeam * 1000.0, sc.Ybeam * 1000, sc.Fbeam * 1000.0, (sc.detsize_s - sc.Sbeam) * 1000,
        (sc.Sbeam - 0.5 * px) * 1000.0, (sc.Fbeam - 0.5 * px) * 1000, (sc.Sbeam - 0.0 * px) * 1000.0,
        (sc.Fbeam - 0.0 * px) * 1000, sc.dials_origin, sc.ORGX, sc.ORGY, sc.close_distance * 1000.0,
        sc.phi0 * RTD, sc.osc * RTD, sc.twotheta * RTD)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _announce_replacement(path, log):
    if os.path.exists(path):
        log(f"note: replacing existing file {path}")


class _Staged:
    """Output files written under temporary names, renamed into place only when all are done.

    A run that fails or is interrupted half-way therefore leaves no new output
    file behind and replaces none of the user's files.  Each file is staged
    next to the file its name resolves to (through symbolic links), and the
    rename replaces that file: a link stays a link, as when C writes through it.
    """

    def __init__(self, log=print):
        self.files = []                   # (temporary, final path, name as given, warning or None)
        self.deferred = []                # (writer, name, args, warning)
        self.log = log

    def write(self, writer, path, *args, warning=None):
        """Write now, under a temporary name.  With ``warning``, a failure is only that warning."""
        final = os.path.realpath(path)
        temporary = "%s.part-%d-%d" % (final, os.getpid(), len(self.files))
        self.files.append((temporary, final, path, warning))
        try:
            writer(temporary, *args)
        except InputError as exc:
            if warning is None:
                raise InputError(str(exc).replace(temporary, path)) from None
            self.files.pop()
            self.log(warning)

    def defer(self, writer, path, *args, warning=None):
        """Write at commit time, before the renames (the Fdump cache: C writes it early,
        we write it only when the run has succeeded)."""
        self.deferred.append((writer, path, args, warning))

    def commit(self):
        from reference.interrupts import held

        for writer, path, args, warning in self.deferred:
            self.write(writer, path, *args, warning=warning)
        self.deferred = []
        with held():                      # a signal now waits until every file is in place
            for temporary, final, path, warning in self.files:
                try:
                    os.replace(temporary, final)
                except OSError as exc:
                    if warning is None:
                        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
                    _remove_quietly(temporary)
                    self.log(warning)

    def discard(self):
        from reference.interrupts import held

        with held():
            for temporary, _, _, _ in self.files:
                _remove_quietly(temporary)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _output_requests(cfg: Config):
    """(flag, file name) of every file the run will write, the Fdump cache included."""
    requests = [("-floatfile", cfg.floatfile), ("-intfile", cfg.intfile)]
    if cfg.write_pgm:
        requests.append(("-pgmfile", cfg.pgmfile))
    if cfg.calculate_noise:
        requests.append(("-noisefile", cfg.noisefile))
    if cfg.hkl_file is not None:
        requests.append(("-dump", cfg.dump_file))
    return requests


def check_outputs(cfg: Config) -> None:
    """Refuse, before any work, output names that are empty, unwritable or the same file.

    Names are compared after resolving symbolic links, ``.`` and ``..``, so
    ``a.img``, ``./a.img`` and a link to ``a.img`` are one file.  The Fdump
    cache only warns when it cannot be written (as in C), but it must not be
    another output either.
    """
    seen = {}
    for flag, path in _output_requests(cfg):
        if not path:
            raise InputError(f"the output file name of {flag} is empty")
        final = os.path.realpath(path)
        if flag != "-dump":
            fileio.check_writable(path if final == os.path.abspath(path) else final)
        key = os.path.normcase(final)
        if key in seen:
            other_flag, other_path = seen[key]
            names = (f"{other_flag} and {flag} both name {path}" if other_path == path else
                     f"{other_flag} {other_path} and {flag} {path} name the same file")
            raise InputError(f"{names}: each output needs its own file")
        seen[key] = (flag, path)


def check_trace_pixel(cfg: Config, sc: Scene) -> None:
    """Refuse a -trace_pixel outside the detector, before the render."""
    if cfg.trace_pixel is None:
        return
    spixel, fpixel = cfg.trace_pixel
    if not (0 <= spixel < sc.spixels and 0 <= fpixel < sc.fpixels):
        raise InputError(f"-trace_pixel {spixel} {fpixel} (slow fast) is outside the "
                         f"{sc.fpixels}x{sc.spixels} detector: slow must be below {sc.spixels}, "
                         f"fast below {sc.fpixels}")


def _note_earlier_fdump(cfg: Config) -> None:
    """Say on stderr that the structure factors came from an earlier run's cache (no -hkl)."""
    text = (f"nanobragg: note: reading structure factors from {os.path.abspath(cfg.dump_file)} "
            f"(written by an earlier run)")
    if cfg.default_F != 0.0:
        text += "; inside its h,k,l range it overrides -default_F"
    print(text, file=sys.stderr)


def run(cfg: Config, echo: bool = True):
    """Run the whole simulation described by ``cfg``; returns (scene, float image).

    Nothing is written unless the whole run succeeds: every output, the
    Fdump cache included, is staged and renamed into place at the end.
    """
    check_outputs(cfg)
    staged = _Staged(log=print if echo else (lambda text="": None))
    try:
        result = _run(cfg, echo, staged)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return result


def _run(cfg: Config, echo: bool, staged: _Staged):
    def log(text=""):
        if echo:
            print(text)

    reads_fdump = cfg.hkl_file is None and os.path.exists(cfg.dump_file)
    sc = build_scene(cfg, echo=echo, stage=staged.defer)
    if echo and reads_fdump:
        _note_earlier_fdump(cfg)
    check_trace_pixel(cfg, sc)
    from reference.preflight import announce
    announce(sc, log if echo else None)         # the cost estimate; refuses a run that cannot fit
    # the bar only on a terminal: in a log, tqdm's carriage returns pile up as lines
    progress = cfg.progress and not cfg.printout and echo and _is_terminal(sys.stderr)
    result = render_float_image(sc, progress)
    image = result.image
    if result.oob_warning is not None:
        log("WARNING: out of range for three point interpolation: h,k,l,h0,k0,l0: %g,%g,%g,%d,%d,%d "
            % result.oob_warning)
        log("WARNING: further warnings will not be printed! ")
    if cfg.trace_pixel is not None:
        print_trace(sc, *cfg.trace_pixel)
    if cfg.printout:
        print_printout(sc, image)
    check_finite(sc, image)         # after the trace, which shows where a NaN starts
    log("")
    log("solid angle subtended by detector = %s steradian ( %s%% sphere)"
        % (c_g(result.omega_sum / sc.steps), c_g(100 * result.omega_sum / sc.steps / 4 / math.pi)))

    roi = roi_mask(sc)
    max_I, max_x, max_y, avg, rms, rmsd = statistics(sc, image)
    _announce_replacement(cfg.floatfile, log)
    log("writing %s as %d %d-byte floats" % (cfg.floatfile, sc.fpixels * sc.spixels, 4))
    staged.write(fileio.write_float_image, cfg.floatfile, image)
    log("max_I = %s  at %g %g" % (c_g(max_I), max_x, max_y))
    log("mean= %s rms= %s rmsd= %s" % (c_g(avg), c_g(rms), c_g(rmsd)))
    scale = cfg.intfile_scale
    if scale <= 0.0:
        scale = 55000.0 / max_I if max_I > 0.0 else 1.0
    log("intfile_scale = %g" % scale)
    header = header_fields(sc)
    _announce_replacement(cfg.intfile, log)
    log("writing %s as %d-byte integers" % (cfg.intfile, 2))
    staged.write(fileio.write_smv, cfg.intfile, int_image(sc, image, scale, roi), header)

    if cfg.write_pgm:
        pgm_scale = cfg.pgm_scale
        if pgm_scale <= 0.0:
            pgm_scale = 250.0 / (5.0 * rmsd) if rmsd > 0.0 else scale
        log("pgm_scale = %g" % pgm_scale)
        _announce_replacement(cfg.pgmfile, log)
        log("writing %s as %d-byte integers" % (cfg.pgmfile, 1))
        staged.write(fileio.write_pgm, cfg.pgmfile, pgm_image(image, pgm_scale, roi), pgm_scale)

    if cfg.calculate_noise:
        from reference import rng
        noisy, photons, overloads = rng.noise_image(image, roi, sc.seed, cfg.adc_offset, sc.rng_table)
        log("%s photons on noise image (%d overloads)" % (c_g(photons, "%.0f"), overloads))
        _announce_replacement(cfg.noisefile, log)
        log("writing %s as %d-byte integers" % (cfg.noisefile, 2))
        staged.write(fileio.write_smv, cfg.noisefile, noisy, header)
    return sc, image


UNITS = {"pixel_pos": "m", "diffracted": "unit", "scattering": "1/m", "stol": "1/m", "h": "", "k": "", "l": "",
         "F_latt": "", "F_cell": "electrons", "omega": "sr", "polar": "", "capture_fraction": "",
         "I_sum": "electrons^2", "pixel_value": "photons", "airpath": "m", "lambda": "m"}


def print_trace(sc: Scene, spixel: int, fpixel: int):
    """Print every intermediate of one pixel (``-trace_pixel slow fast``)."""
    if not (0 <= spixel < sc.spixels and 0 <= fpixel < sc.fpixels):
        raise InputError(f"-trace_pixel {spixel} {fpixel} is outside the {sc.fpixels}x{sc.spixels} detector")
    if sc.cfg.engine == "torch":
        from torchsim.engine import trace_pixel
    else:
        from reference.render import trace_pixel
    values = trace_pixel(sc, spixel, fpixel)
    print(f"TRACE pixel slow={spixel} fast={fpixel} engine={sc.cfg.engine}")
    for name, value in values.items():
        base = name.rsplit("_", 1)[0] if name[-2:] in ("_x", "_y", "_z") else name
        unit = UNITS.get(base, "m" if base in "abc" else "")
        print("TRACE %-18s %.17g %s" % (name, value, unit))


def print_printout(sc: Scene, image: np.ndarray):
    """C's -printout / -printout_pixel lines for the matching pixels."""
    from reference.render import trace_pixel
    pf, ps = sc.cfg.printout_pixel
    rendered = rendered_mask(sc)
    for spixel in range(sc.spixels):
        for fpixel in range(sc.fpixels):
            if not rendered[spixel, fpixel] or not ((fpixel == pf and spixel == ps) or pf < 0):
                continue
            t = trace_pixel(sc, spixel, fpixel)
            x, y, z = t["pixel_pos_x"], t["pixel_pos_y"], t["pixel_pos_z"]
            twotheta = math.atan2(math.sqrt(y * y + z * z), x)
            print("%4d %4d : stol = %g or %g" % (fpixel, spixel, t["stol"], math.sin(twotheta / 2.0) / (sc.lambda0 * 1e10)))
            print("at %g %g %g" % (x, y, z))
            print("hkl= %f %f %f  hkl0= %d %d %d" % (t["h"], t["k"], t["l"], t["h0"], t["k0"], t["l0"]))
            print(" F_cell=%g  F_latt=%g   I = %g" % (t["F_cell"], t["F_latt"], t["I_sum"]))
            print("I/steps %15.10g" % (t["I_sum"] / sc.steps))
            print("polar   %15.10g" % t["polar"])
            print("omega   %15.10g" % t["omega"])
            print("capfrac %15.10g" % t["capture_fraction"])
            print("pixel   %15.10g" % image[spixel, fpixel])
            print("real-space cell vectors (Angstrom):")
            print("     %-10s  %-10s  %-10s" % ("a", "b", "c"))
            for j, axis in enumerate("XYZ"):
                print("%s: %11.8f %11.8f %11.8f" % (axis, t[f"a_{'xyz'[j]}"] * 1e10, t[f"b_{'xyz'[j]}"] * 1e10,
                                                   t[f"c_{'xyz'[j]}"] * 1e10))
