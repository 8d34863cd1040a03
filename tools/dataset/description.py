"""The dataset description: a TOML file read, checked and turned into plain objects.

A description holds the scene (``[scene]``: nanobragg flags), one sweep kind
(``[rotation]``, or several as ``[[rotation]]``, or ``[stills]``), and
optionally ``[dataset]``, ``[detector_effects]`` and ``[execution]``.  The
full schema is in the README's 'Datasets' section; :func:`load` checks every
table and key and reports each problem as one line.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from dataclasses import dataclass, field

from reference.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = ("smv", "cbf", "nexus", "float")

# flags the dataset tool decides itself: output files, and what the sweep sets
OUTPUT_FLAGS = ("-floatfile", "-intfile", "-pgmfile", "-noisefile", "-nonoise", "-nopgm", "-pgmscale",
                "-printout", "-printout_pixel", "-trace_pixel", "-progress", "-noprogress", "-stolout")
ROTATION_FLAGS = ("-phi", "-osc", "-phistep", "-phisteps")
STILLS_FLAGS = ROTATION_FLAGS + ("-misset", "-misset_seed")

# per-shot variations: what each draws, the flag it sets, and the flags it replaces or cannot live with
VARIATIONS = {
    "cell": dict(what="a factor on the cell lengths a, b, c", sets="-cell", needs="-cell"),
    "crystal_size": dict(what="unit cells along each crystal edge (rounded, at least 1)", sets="-N",
                         replaces=("-N", "-Na", "-Nb", "-Nc"),
                         conflicts=("-samplesize", "-xtalsize", "-sample_thick", "-sample_width",
                                    "-sample_height", "-xtal_thick", "-xtal_width", "-xtal_height")),
    "mosaic": dict(what="the mosaic spread (degrees)", sets="-mosaic", replaces=("-mosaic",)),
    "wavelength": dict(what="the central wavelength (Angstrom)", sets="-lambda",
                       replaces=("-lambda", "-energy")),
    "fluence": dict(what="the fluence (photons/m^2)", sets="-fluence", replaces=("-fluence",),
                    conflicts=("-flux",)),
}
SPECTRUM_CONFLICTS = ("-sourcefile", "-dispersion", "-dispsteps", "-divergence", "-hdivrange", "-vdivrange",
                      "-hdivstep", "-vdivstep", "-hdivsteps", "-vdivsteps", "-divsteps")


@dataclass
class Flag:
    """One nanobragg flag of the scene, as tokens: the name as written and its values."""

    name: str                # the spelling used (a key of reference.flags.BY_NAME)
    canonical: str           # the flag's first name
    values: list             # strings


@dataclass
class RotationSweep:
    start: float             # degrees
    osc: float               # degrees per image
    images: int
    phisteps: int | None     # None: nanobragg's own rule
    name: str                # file prefix
    scene: list              # extra Flag entries for this sweep (override the scene's)


@dataclass
class Variation:
    distribution: object     # draws.Distribution
    independent: bool = False


@dataclass
class Spectrum:
    lines: int
    bandwidth: float         # relative rms width of the envelope
    sase: bool


@dataclass
class Stills:
    shots: int
    name: str
    vary: dict               # variation name -> Variation
    spectrum: Spectrum | None


@dataclass
class Description:
    path: str
    folder: str              # relative input paths are read from here
    text: bytes              # the file as read (its checksum goes into truth.json)
    seed: int = 1
    name: str = ""
    format: str | None = None
    scene: list = field(default_factory=list)          # Flag
    sweeps: list = field(default_factory=list)         # RotationSweep
    stills: Stills | None = None
    detector_effects: dict | None = None
    tile_pixels: int = 0
    retries: int = 2

    @property
    def kind(self) -> str:
        return "stills" if self.stills is not None else "rotation"


class Problems:
    """Every problem found, one line each."""

    def __init__(self, path):
        self.path = path
        self.lines = []

    def add(self, where: str, text: str) -> None:
        self.lines.append(f"{self.path}: {where}: {text}" if where else f"{self.path}: {text}")


class DescriptionError(InputError):
    """A description with problems; ``lines`` holds one line per problem."""

    def __init__(self, lines):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


# ---------------------------------------------------------------------------
# small typed readers: each returns the value, or adds a problem and returns None
# ---------------------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(table, key, where, problems, default=None, required=False, positive=False, non_negative=False):
    if key not in table:
        if required:
            problems.add(where, f"'{key}' is missing")
        return default
    value = table[key]
    if not _is_number(value):
        problems.add(where, f"'{key}' must be a number, got {value!r}")
        return None
    if positive and value <= 0:
        problems.add(where, f"'{key}' must be positive, got {value!r}")
        return None
    if non_negative and value < 0:
        problems.add(where, f"'{key}' must not be negative, got {value!r}")
        return None
    return float(value)


def _whole(table, key, where, problems, default=None, required=False, minimum=None):
    if key not in table:
        if required:
            problems.add(where, f"'{key}' is missing")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(where, f"'{key}' must be a whole number, got {value!r}")
        return None
    if minimum is not None and value < minimum:
        problems.add(where, f"'{key}' must be at least {minimum}, got {value}")
        return None
    return value


def _text(table, key, where, problems, default=None, choices=None):
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str):
        problems.add(where, f"'{key}' must be a string, got {value!r}")
        return None
    if choices is not None and value not in choices:
        problems.add(where, f"'{key}' must be one of {', '.join(choices)}, got '{value}'")
        return None
    return value


def _boolean(table, key, where, problems, default=False):
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, bool):
        problems.add(where, f"'{key}' must be true or false, got {value!r}")
        return default
    return value


def _unknown_keys(table, known, where, problems) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.add(where, f"unknown key '{key}'{hint}; known: {', '.join(known)}")


def _table(value, where, problems):
    if not isinstance(value, dict):
        problems.add(where, f"must be a table, got {value!r}")
        return None
    return value


def _file_name(value) -> bool:
    """A sweep name must make a plain file-name prefix."""
    return bool(value) and all(ch.isalnum() or ch in "-_." for ch in value) and not value.startswith(".")


# ---------------------------------------------------------------------------
# the scene: nanobragg flags
# ---------------------------------------------------------------------------

def _path_flags() -> frozenset:
    """Flags whose value is an input file (they set a Config field named ``*_file``).

    Found by applying every one-value flag to a scratch Config, so flags added
    to the front end later (structure-factor files, say) are covered too.
    """
    from reference.config import Config
    from reference.flags import FLAGS, StrictNumbers

    probe = "__nanobragg_dataset_probe__"
    found = set()
    for flag in FLAGS:
        if flag.nvalues != 1:
            continue
        cfg = Config()
        try:
            flag.action(cfg, [probe], StrictNumbers(flag.names[0]))
        except Exception:       # a flag whose value is a number or a choice refuses the probe
            continue
        if any(value == probe and key.endswith("_file") for key, value in vars(cfg).items()):
            found.update(flag.names)
    return frozenset(found)


def _token(value) -> str | None:
    """A TOML scalar as a command-line token (numbers written so that they read back exactly)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return None


def _scene_flags(table, where, problems, folder, forbidden) -> list:
    """The [scene] table (or a sweep's ``scene``) as a list of :class:`Flag`."""
    from reference.flags import BY_NAME

    path_flags = _path_flags()
    flags, seen = [], {}
    for key, value in table.items():
        name = key if key.startswith("-") else "-" + key
        flag = BY_NAME.get(name)
        if flag is None:
            close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0].lstrip('-')}?)" if close else ""
            problems.add(where, f"unknown nanobragg flag '{key}'{hint}")
            continue
        canonical = flag.names[0]
        if canonical in seen:
            problems.add(where, f"'{key}' and '{seen[canonical]}' are the same flag ({canonical})")
            continue
        seen[canonical] = key
        if canonical in forbidden:
            problems.add(where, f"'{key}': {forbidden[canonical]}")
            continue
        if isinstance(value, bool):
            if flag.nvalues != 0:
                problems.add(where, f"'{key}' takes a value, got {value!r}")
                continue
            if value:
                flags.append(Flag(name, canonical, []))
            continue
        if flag.nvalues == 0:
            problems.add(where, f"'{key}' takes no value: write {key} = true")
            continue
        items = value if isinstance(value, list) else [value]
        tokens = [_token(item) for item in items]
        if any(t is None for t in tokens):
            problems.add(where, f"'{key}' must be a number, a string or a list of them, got {value!r}")
            continue
        if flag.nvalues == -6:
            wanted_ok, wanted = 1 <= len(tokens) <= 6, "1 to 6"
        elif canonical == "-misset" and len(tokens) == 1 and "rand" in tokens[0]:
            wanted_ok, wanted = True, "3"
        else:
            wanted_ok, wanted = len(tokens) == flag.nvalues, str(flag.nvalues)
        if not wanted_ok:
            problems.add(where, f"'{key}' takes {wanted} value{'s' if wanted != '1' else ''}, got {len(tokens)}")
            continue
        if name in path_flags:
            tokens = [os.path.abspath(os.path.join(folder, os.path.expanduser(tokens[0])))]
        flags.append(Flag(name, canonical, tokens))
    return flags


# ---------------------------------------------------------------------------
# the sweeps
# ---------------------------------------------------------------------------

ROTATION_KEYS = ("start", "osc", "images", "phisteps", "name", "scene")
STILLS_KEYS = ("shots", "name", "vary", "spectrum")
VARIATION_KEYS = ("distribution", "independent")
SPECTRUM_KEYS = ("lines", "bandwidth", "sase")


def _rotation(tables, problems, folder, forbidden) -> list:
    sweeps = []
    several = len(tables) > 1
    for n, raw in enumerate(tables, start=1):
        where = f"[[rotation]] number {n}" if several else "[rotation]"
        table = _table(raw, where, problems)
        if table is None:
            continue
        _unknown_keys(table, ROTATION_KEYS, where, problems)
        start = _number(table, "start", where, problems, default=0.0)
        osc = _number(table, "osc", where, problems, required=True, positive=True)
        images = _whole(table, "images", where, problems, required=True, minimum=1)
        phisteps = _whole(table, "phisteps", where, problems, minimum=1)
        name = _text(table, "name", where, problems, default=f"sweep{n}" if several else "image")
        if name is not None and not _file_name(name):
            problems.add(where, f"'name' must be a plain file-name prefix (letters, digits, - _ .), got '{name}'")
        extra = []
        if "scene" in table:
            sub = _table(table["scene"], where + " scene", problems)
            if sub is not None:
                extra = _scene_flags(sub, where + " scene", problems, folder, forbidden)
        sweeps.append(RotationSweep(start, osc, images, phisteps, name, extra))
    names = [s.name for s in sweeps]
    for name in sorted({x for x in names if x is not None and names.count(x) > 1}):
        problems.add("[[rotation]]", f"two sweeps are both named '{name}'")
    return sweeps


def _stills(table, problems) -> Stills | None:
    from tools.dataset.draws import Distribution

    where = "[stills]"
    table = _table(table, where, problems)
    if table is None:
        return None
    _unknown_keys(table, STILLS_KEYS, where, problems)
    shots = _whole(table, "shots", where, problems, required=True, minimum=1)
    name = _text(table, "name", where, problems, default="shot")
    if name is not None and not _file_name(name):
        problems.add(where, f"'name' must be a plain file-name prefix (letters, digits, - _ .), got '{name}'")
    vary = {}
    raw_vary = table.get("vary", {})
    if _table(raw_vary, "[stills.vary]", problems) is not None:
        _unknown_keys(raw_vary, tuple(VARIATIONS), "[stills.vary]", problems)
        for key, raw in raw_vary.items():
            if key not in VARIATIONS:
                continue
            here = f"[stills.vary.{key}]"
            sub = _table(raw, here, problems)
            if sub is None:
                continue
            params = {k: v for k, v in sub.items() if k not in VARIATION_KEYS}
            independent = _boolean(sub, "independent", here, problems)
            if independent and key not in ("cell", "crystal_size"):
                problems.add(here, "'independent' applies to cell and crystal_size only")
            if "distribution" not in sub:
                problems.add(here, "'distribution' is missing (normal, uniform, lognormal, gamma or constant)")
                continue
            try:
                distribution = Distribution.check(sub["distribution"], params)
            except InputError as exc:
                problems.add(here, str(exc))
                continue
            vary[key] = Variation(distribution, independent)
    spectrum = None
    if "spectrum" in table:
        here = "[stills.spectrum]"
        sub = _table(table["spectrum"], here, problems)
        if sub is not None:
            _unknown_keys(sub, SPECTRUM_KEYS, here, problems)
            lines = _whole(sub, "lines", here, problems, required=True, minimum=1)
            bandwidth = _number(sub, "bandwidth", here, problems, default=0.0, non_negative=True)
            sase = _boolean(sub, "sase", here, problems)
            if lines is not None and bandwidth is not None:
                spectrum = Spectrum(lines, bandwidth, sase)
    return Stills(shots, name, vary, spectrum)


def _check_variations(desc: Description, problems) -> None:
    """Variations need (or exclude) certain scene flags."""
    present = {f.canonical for f in desc.scene}
    for key in desc.stills.vary:
        rule = VARIATIONS[key]
        if "needs" in rule and rule["needs"] not in present:
            problems.add(f"[stills.vary.{key}]", f"varies {rule['what']}, so [scene] must give {rule['needs']}")
        for flag in rule.get("conflicts", ()):
            if flag in present:
                problems.add(f"[stills.vary.{key}]", f"varies {rule['what']}, which [scene] {flag} would override; "
                             f"remove {flag.lstrip('-')} from [scene]")
    if desc.stills.spectrum is not None:
        for flag in SPECTRUM_CONFLICTS:
            if flag in present:
                problems.add("[stills.spectrum]", f"a spectrum per shot is a source file, which replaces [scene] "
                             f"{flag}; remove {flag.lstrip('-')} from [scene]")


# ---------------------------------------------------------------------------
# the whole file
# ---------------------------------------------------------------------------

TOP_KEYS = ("dataset", "scene", "rotation", "stills", "detector_effects", "execution")
DATASET_KEYS = ("seed", "name", "format")
EXECUTION_KEYS = ("tile_pixels", "retries")


def _forbidden(kind: str) -> dict:
    why = {flag: "output files are the dataset tool's: choose them with --format" for flag in OUTPUT_FLAGS}
    sweep_flags = STILLS_FLAGS if kind == "stills" else ROTATION_FLAGS
    for flag in sweep_flags:
        why[flag] = (f"set by the [{kind}] table" if flag in ROTATION_FLAGS else
                     "stills take a random orientation per shot from the dataset seed")
    return why


def load(path) -> Description:
    """Read and check a description; raises :class:`DescriptionError` listing every problem."""
    problems = Problems(path)
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as exc:
        raise DescriptionError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DescriptionError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise DescriptionError([f"{path}: not valid TOML: {exc}"]) from None

    folder = os.path.dirname(os.path.abspath(path))
    desc = Description(path=str(path), folder=folder, text=text)
    _unknown_keys(data, TOP_KEYS, "", problems)

    settings = _table(data.get("dataset", {}), "[dataset]", problems) or {}
    _unknown_keys(settings, DATASET_KEYS, "[dataset]", problems)
    seed = _whole(settings, "seed", "[dataset]", problems, default=1, minimum=0)
    desc.seed = seed if seed is not None else 1
    desc.name = _text(settings, "name", "[dataset]", problems, default="") or ""
    desc.format = _text(settings, "format", "[dataset]", problems, choices=FORMATS)

    has_rotation, has_stills = "rotation" in data, "stills" in data
    if has_rotation == has_stills:
        problems.add("", "give exactly one of [rotation] (or [[rotation]]) and [stills]")
    kind = "stills" if has_stills and not has_rotation else "rotation"
    forbidden = _forbidden(kind)

    scene = _table(data.get("scene", {}), "[scene]", problems)
    if scene is not None:
        desc.scene = _scene_flags(scene, "[scene]", problems, folder, forbidden)
    if "scene" not in data:
        problems.add("", "[scene] is missing: it holds the nanobragg flags of every image")

    if has_rotation and not has_stills:
        raw = data["rotation"]
        desc.sweeps = _rotation(raw if isinstance(raw, list) else [raw], problems, folder, forbidden)
    elif has_stills and not has_rotation:
        desc.stills = _stills(data["stills"], problems)
        if desc.stills is not None:
            _check_variations(desc, problems)

    if "detector_effects" in data:
        effects = _table(data["detector_effects"], "[detector_effects]", problems)
        if effects is not None:
            _check_effects(effects, problems)
            desc.detector_effects = effects

    execution = _table(data.get("execution", {}), "[execution]", problems) or {}
    _unknown_keys(execution, EXECUTION_KEYS, "[execution]", problems)
    desc.tile_pixels = _whole(execution, "tile_pixels", "[execution]", problems, default=0, minimum=0) or 0
    retries = _whole(execution, "retries", "[execution]", problems, default=2, minimum=0)
    desc.retries = 2 if retries is None else retries

    if problems.lines:
        raise DescriptionError(problems.lines)
    return desc


def _check_effects(effects: dict, problems) -> None:
    """The [detector_effects] table goes to reference.noise, which checks its keys."""
    try:
        from reference.noise import DetectorEffects
    except ImportError as exc:
        problems.add("[detector_effects]", f"detector effects need reference.noise, which cannot be imported ({exc})")
        return
    try:
        DetectorEffects.from_mapping(dict(effects))
    except InputError as exc:
        problems.add("[detector_effects]", str(exc))
