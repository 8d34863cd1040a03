"""The plain simulation config that the command line fills and both engines read.

Every field holds what the user asked for, in the C program's internal units
(metres, radians, photons per square metre), with the C program's "not given"
sentinels (NaN or -1) so that the auto-selection rules in
:mod:`reference.scene` can run exactly as the C program runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NAN = math.nan

# Detector conventions and pivots, spelled as on the command line.
CONVENTIONS = ("custom", "adxv", "mosflm", "xds", "dials", "denzo")
PIVOTS = ("sample", "beam")
# Crystal shapes: the lattice transform used for F_latt.
SHAPES = ("square", "round", "gauss", "tophat")


@dataclass
class Config:
    """Everything a run needs, before any derived quantity is computed.

    Lengths are metres, angles radians, unless a field name says otherwise.
    """

    # --- input files -------------------------------------------------------
    hkl_file: str | None = None
    mat_file: str | None = None
    img_file: str | None = None
    mask_file: str | None = None
    source_file: str | None = None
    dump_file: str = "Fdump.bin"
    stol_file: str | None = None
    stol_file_mult: float = 1.0e10
    default_F: float = 0.0
    hkl_column: str | None = None        # MTZ/mmCIF column of -hkl (None: chosen by name)
    hkl_from_model: bool = False         # -model: hkl_file is a coordinate model
    model_dmin: float = 0.0              # resolution limit of a model's amplitudes, m (0: -dmin's)

    # --- crystal -----------------------------------------------------------
    user_cell: bool = False
    cell: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # A, A, A, rad, rad, rad
    misset: tuple | None = None          # (rotx, roty, rotz) radians
    misset_random: bool = False
    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    sample_x: float = 0.0
    sample_y: float = 0.0
    sample_z: float = 0.0
    density: float = 1.0e6
    molecular_weight: float = 18.0
    xtal_shape: str = "square"
    fudge: float = 1.0
    mosaic_spread: float = -1.0
    mosaic_domains: int = -1

    # --- beam --------------------------------------------------------------
    lambda0: float = 1.0e-10
    dispersion: float = 0.0
    dispstep: float = -1.0
    dispsteps: int = -1
    hdivrange: float = -1.0
    vdivrange: float = -1.0
    hdivstep: float = -1.0
    vdivstep: float = -1.0
    hdivsteps: int = -1
    vdivsteps: int = -1
    round_div: bool = True
    polarization: float = 0.0            # Kahn factor
    nopolar: bool = False
    fluence: float = 125932015286227086360700780544.0
    flux: float = 0.0
    exposure: float = 1.0
    beamsize: float = 1.0e-4
    coherent: bool = False

    # --- detector ----------------------------------------------------------
    pixel_size: float = 0.1e-3
    fpixels: int = 0
    spixels: int = 0
    detsize_f: float = 102.4e-3
    detsize_s: float = 102.4e-3
    distance: float = 100.0e-3
    close_distance: float = NAN
    curved_detector: bool = False
    point_pixel: bool = False
    detector_rotx: float = 0.0
    detector_roty: float = 0.0
    detector_rotz: float = 0.0
    detector_twotheta: float = 0.0
    detector_mu: float = -1.0
    detector_thick: float = 0.0
    detector_thickstep: float = -1.0
    detector_thicksteps: int = -1
    convention: str = "mosflm"
    pivot: str = "beam"
    beam_vector: list = field(default_factory=lambda: [1.0, 0.0, 0.0])
    fdet_vector: list = field(default_factory=lambda: [0.0, 0.0, 1.0])
    sdet_vector: list = field(default_factory=lambda: [0.0, -1.0, 0.0])
    odet_vector: list = field(default_factory=lambda: [1.0, 0.0, 0.0])
    polar_vector: list = field(default_factory=lambda: [0.0, 0.0, 1.0])
    spindle_vector: list = field(default_factory=lambda: [0.0, 0.0, 1.0])
    twotheta_axis: list = field(default_factory=lambda: [0.0, 1.0, 0.0])
    pix0_vector: list | None = None
    Xbeam: float = NAN
    Ybeam: float = NAN
    Xclose: float = NAN
    Yclose: float = NAN
    ORGX: float = NAN
    ORGY: float = NAN

    # --- sampling ----------------------------------------------------------
    phi0: float = 0.0
    osc: float = -1.0
    phistep: float = -1.0
    phisteps: int = -1
    dmin: float = 0.0
    oversample: int = -1
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    roi: list = field(default_factory=lambda: [-1, -1, -1, -1])  # xmin xmax ymin ymax
    interpolate: int = 2                 # 2 = auto, 1 = on, 0 = off

    # --- background --------------------------------------------------------
    water_size: float = 0.0

    # --- outputs -----------------------------------------------------------
    floatfile: str = "floatimage.bin"
    intfile: str = "intimage.img"
    pgmfile: str = "image.pgm"
    noisefile: str = "noiseimage.img"
    write_pgm: bool = True
    calculate_noise: bool = True
    intfile_scale: float = 0.0
    pgm_scale: float = 0.0
    adc_offset: float = 40.0
    printout: bool = False
    printout_pixel: tuple = (-1, -1)     # (fast, slow)
    progress: bool = True

    # --- random seeds (C-internal: stored negated) -------------------------
    seed: int | None = None              # None: from the clock, as C does
    mosaic_seed: int = -12345678
    misset_seed: int | None = None       # None: same as the clock seed

    # --- ours --------------------------------------------------------------
    engine: str = "numba"
    device: str = "cpu"
    dtype: str = "float64"
    c_parity: bool = False
    trace_pixel: tuple | None = None     # (slow, fast)
    memory_gb: float = 4.0
    # header values read from -img / -mask, applied before the flags
    header_twotheta: float | None = None
    mask_image: object = None            # uint16 (slow, fast) array from -mask
    header_notes: list = field(default_factory=list)   # lines to print when the run starts
    spelling_notes: list = field(default_factory=list)  # flags read under another spelling, for stderr
