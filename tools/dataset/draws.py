"""Random draws of a dataset: where every random number comes from, and the named distributions.

**Seeds.**  Every draw of image ``index`` (0-based, counted over the whole
dataset) comes from ``numpy.random.SeedSequence([seed, index])``, split into
fixed *slots* (its spawned children, one per purpose, see :data:`SLOTS`).  An
image's draws therefore depend only on the dataset seed and its index: not on
the number of workers, the order in which images are rendered, or which other
variations the description enables (each purpose has its own slot).

Dataset-level draws (the per-pixel calibration map of the detector, fixed over
the whole dataset) come from ``SeedSequence([seed], spawn_key=(DATASET_KEY,))``,
a stream no image uses.

**Distributions.**  A variation table names a distribution and its parameters:

============  ==========================  ==========================================
name          parameters                  draws
============  ==========================  ==========================================
constant      value                       always ``value``
normal        mean, sd                    Gaussian
uniform       low, high                   flat on [low, high)
lognormal     median, sigma               exp(Gaussian(ln median, sigma))
gamma         shape, scale                Gamma (mean shape x scale)
============  ==========================  ==========================================

A draw outside the quantity's valid range (a negative mosaic spread, say) is
drawn again from the same stream, so the distribution is truncated to the
valid range; :class:`Distribution` gives up after :data:`MAX_REDRAWS` tries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from reference.errors import InputError

# the spawned children of SeedSequence([seed, index]): one per purpose
SLOTS = ("orientation", "mosaic_seed", "cell", "crystal_size", "mosaic", "wavelength", "fluence",
         "spectrum", "noise")
DATASET_KEY = 100           # spawn key of the dataset-level stream (images use keys 0..len(SLOTS)-1)
MAX_REDRAWS = 1000
C_INT_MAX = 2**31 - 1

# name -> (parameters, in order)
DISTRIBUTIONS = {
    "constant": ("value",),
    "normal": ("mean", "sd"),
    "uniform": ("low", "high"),
    "lognormal": ("median", "sigma"),
    "gamma": ("shape", "scale"),
}


def image_streams(seed: int, index: int) -> dict:
    """One independent generator per purpose (see :data:`SLOTS`) for image ``index``."""
    children = np.random.SeedSequence([seed, index]).spawn(len(SLOTS))
    return {name: np.random.Generator(np.random.PCG64(child)) for name, child in zip(SLOTS, children)}


def dataset_stream(seed: int) -> np.random.Generator:
    """The generator of the dataset-level draws (the detector's calibration map)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed], spawn_key=(DATASET_KEY,))))


def seed_from(rng: np.random.Generator, high: int = C_INT_MAX) -> int:
    """A whole-number seed in [1, high] (what the nanobragg seed flags accept)."""
    return int(rng.integers(1, high, endpoint=True))


@dataclass(frozen=True)
class Distribution:
    """A named distribution with its parameters (see the module docstring)."""

    name: str
    params: dict

    @classmethod
    def check(cls, name, params: dict) -> "Distribution":
        """Validate; raises InputError with what is wrong (the caller adds where)."""
        if name not in DISTRIBUTIONS:
            raise InputError(f"unknown distribution '{name}' (known: {', '.join(DISTRIBUTIONS)})")
        wanted = DISTRIBUTIONS[name]
        for key in params:
            if key not in wanted:
                raise InputError(f"the {name} distribution takes {', '.join(wanted)}, not '{key}'")
        for key in wanted:
            if key not in params:
                raise InputError(f"the {name} distribution needs '{key}'")
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"'{key}' must be a finite number, got {value!r}")
        p = {k: float(v) for k, v in params.items()}
        if name == "normal" and p["sd"] < 0:
            raise InputError("'sd' must not be negative")
        if name == "uniform" and p["high"] < p["low"]:
            raise InputError("'high' must not be below 'low'")
        if name == "lognormal" and (p["median"] <= 0 or p["sigma"] < 0):
            raise InputError("'median' must be positive and 'sigma' not negative")
        if name == "gamma" and (p["shape"] <= 0 or p["scale"] <= 0):
            raise InputError("'shape' and 'scale' must be positive")
        return cls(name, p)

    def one(self, rng: np.random.Generator) -> float:
        p = self.params
        if self.name == "constant":
            return p["value"]
        if self.name == "normal":
            return float(rng.normal(p["mean"], p["sd"]))
        if self.name == "uniform":
            return float(rng.uniform(p["low"], p["high"]))
        if self.name == "lognormal":
            return float(math.exp(rng.normal(math.log(p["median"]), p["sigma"])))
        return float(rng.gamma(p["shape"], p["scale"]))

    def draw(self, rng: np.random.Generator, valid, what: str) -> float:
        """One draw for which ``valid(value)`` holds, redrawing (truncation) when it does not."""
        for _ in range(MAX_REDRAWS):
            value = self.one(rng)
            if valid(value):
                return value
        raise InputError(f"{what}: {MAX_REDRAWS} draws in a row from the {self.name} distribution "
                         f"{self.params} fell outside the valid range; change its parameters")
