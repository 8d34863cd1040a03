"""Structure factors of the unit cell: the dense F(h,k,l) grid.

The grid comes from an HKL text file, an MTZ or mmCIF reflection file or a
coordinate model (:mod:`reference.reflections`), and is then cached in
``Fdump.bin``, byte-compatible with the C program; or from an earlier run's
``Fdump.bin``; or is empty, in which case every reflection takes
``-default_F``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from reference import fileio, reflections


@dataclass
class StructureFactors:
    values: np.ndarray        # (h_range+1, k_range+1, l_range+1), last slot padding
    mins: tuple               # (h_min, k_min, l_min)
    maxs: tuple               # (h_max, k_max, l_max)
    count: int                # 0 when no grid: every F is default_F


def _from_table(table, count):
    return StructureFactors(np.ascontiguousarray(table.values, dtype=np.float64),
                            (table.h_min, table.k_min, table.l_min),
                            (table.h_max, table.k_max, table.l_max), count)


def skip_cache_write(*args, **kwargs) -> None:
    """A ``stage`` for :func:`load_structure_factors` that drops the Fdump cache write: for
    library callers (the Simulator, the dataset tool) that must write no file."""


def load_structure_factors(cfg, log, stage=None) -> StructureFactors:
    """Read -hkl (writing the Fdump cache) or reuse an earlier Fdump.

    ``stage(writer, path, *args, warning=...)``, when given, takes the cache
    write (the command line writes it with its other outputs, at the end and
    only when the run succeeds); without it the cache is written at once.
    Either way a cache that cannot be written is a warning, as in C.
    """
    if cfg.hkl_file is None:
        if os.path.exists(cfg.dump_file):
            log("reading Fs from %s" % cfg.dump_file)
            table = fileio.read_fdump(cfg.dump_file, c_parity=cfg.c_parity)
            return _from_table(table, table.count)
        return StructureFactors(np.zeros((1, 1, 1)), (0, 0, 0), (0, 0, 0), 0)

    if reflections.source_kind(cfg.hkl_file, cfg.hkl_from_model) != "text":
        table = reflections.load_table(cfg, log)        # MTZ, mmCIF or a coordinate model
    else:
        log("counting entries in %s" % cfg.hkl_file)
        # -c_parity reads the file exactly as C's two fscanf() passes do
        table = fileio.read_hkl(cfg.hkl_file, c_parity=cfg.c_parity)
        for warning in table.warnings:
            log(warning)
    if cfg.default_F != 0.0:
        log("initializing to default_F = %g:" % cfg.default_F)
        fileio.fill_default(table, cfg.default_F)
        log("done initializing:")
    if reflections.source_kind(cfg.hkl_file, cfg.hkl_from_model) == "text":
        log("re-reading %s" % cfg.hkl_file)
    warning = "WARNING: unable to open dump file: %s" % cfg.dump_file
    if stage is not None:
        if _writable(cfg.dump_file):
            log("writing dump file for next time: %s" % cfg.dump_file)
            stage(fileio.write_fdump, cfg.dump_file, table, warning=warning)
        else:
            log(warning)
        return _from_table(table, table.count)
    try:
        fileio.write_fdump(cfg.dump_file, table)
        log("writing dump file for next time: %s" % cfg.dump_file)
    except fileio.InputError:
        log(warning)
    return _from_table(table, table.count)


def _writable(path) -> bool:
    """Whether a file could be written at ``path`` (through a symbolic link, to its target)."""
    try:
        fileio.check_writable(os.path.realpath(path))
    except fileio.InputError:
        return False
    return True
