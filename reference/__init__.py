"""Reference engine: a loop-faithful Numba port of James Holton's nanoBragg.

Also owns the front end both engines share: command-line parsing into a
:class:`~reference.config.Config` and the file formats in
:mod:`reference.fileio`.  Importing this package never imports torch.
"""

from reference.config import Config
from reference.errors import InputError

# the version when the package is not installed (keep it equal to pyproject.toml's)
__version__ = "0.1.0"

__all__ = ["Config", "InputError", "parse_args", "build_scene", "render"]


def parse_args(tokens):
    """Command-line tokens (without the program name) to a :class:`Config`."""
    from reference.cli import parse_args as _parse
    return _parse(tokens)


def build_scene(cfg, echo=False):
    """Derive geometry, crystal and sources from a config."""
    from reference.scene import build_scene as _build
    return _build(cfg, echo=echo)


def render(scene, progress=False):
    """Float image (photons per pixel, float32 slow x fast) of a scene."""
    from reference.render import render as _render
    return _render(scene, progress=progress).image
