"""Bit-exact emulation of the random-number generators used by nanoBragg.

nanoBragg draws random numbers in three places:

* the orientation of each mosaic domain (and a random crystal misset),
  built from a uniform deviate on a spherical cap;
* the Poisson photon-counting noise added to the final image;
* Gaussian deviates, used by the Poisson sampler for very bright pixels.

All of them are built on the "minimal standard" Park-Miller generator
with a Bays-Durham shuffle table (the classic ``ran1`` recipe).  The C
program keeps that generator's state in ``static`` variables; here the
state is an explicit array so that several independent streams can
coexist and the functions stay pure apart from mutating that array.

Floating point
--------------
The C code mixes ``float`` and ``double``.  On x86-64 (SSE arithmetic,
``FLT_EVAL_METHOD == 0``) a ``float op float`` expression is rounded to
single precision, an expression that involves a ``double`` literal is
evaluated in double precision, and every assignment to a ``float``
variable rounds to single precision.  To reproduce C bit for bit we
compute in double precision and round with :func:`numpy.float32`
exactly where C would round.  For ``+ - * /`` and ``sqrt`` of two
single-precision operands, rounding the exact-enough double result to
single precision gives the same answer as native single-precision
arithmetic, so this is not an approximation.

State layouts
-------------
Uniform stream (``np.int64`` array, length :data:`STREAM_SIZE` = 34)::

    [0]      idum  current Park-Miller value (C's ``*idum``)
    [1]      iy    last shuffled output (C's static ``iy``)
    [2:34]   iv    the 32-entry shuffle table (C's static ``iv``)

Sampler state (``np.float64`` array, length :data:`SAMPLER_SIZE` = 6)::

    [0] oldm  mean of the previous Poisson call (starts at -1)
    [1] g     cached exp(-mean) or log-normaliser (a float32 value)
    [2] sq    cached sqrt(2*mean)                 (a float32 value)
    [3] alxm  cached log(mean)                    (a float32 value)
    [4] iset  1 when a spare Gaussian deviate is waiting, else 0
    [5] gset  the spare Gaussian deviate          (a float32 value)

Shared shuffle table
--------------------
In C, ``idum`` belongs to each stream (the misset, mosaic and noise seeds
are separate variables) but ``iy`` and ``iv`` are ``static`` inside
``ran1``: one table for the whole program.  A stream whose ``idum`` is
non-positive reloads the table on its first draw, so the sharing is
invisible for the default seeds.  A *negative* command-line seed gives a
positive ``idum``, which does not reload a table that an earlier stream
has already loaded: that stream continues on the table the earlier one
left, with ``|seed|`` as its Park-Miller state.  (If no stream has drawn
yet, the empty table forces a load and C replaces the positive ``idum``
by 1.)  The streams run one after another, never interleaved, in the
order misset, mosaic domains, noise.  :func:`stream` emulates this with
one state array that every stream of a run shares (``-c_parity``); by
default each stream gets its own table (spec mode).
"""

import math

import numpy as np

# ---------------------------------------------------------------------------
# Compiled on first use
# ---------------------------------------------------------------------------
# The generators are compiled with Numba, but importing Numba costs a run that
# never draws (a torch render without mosaic domains, random misset or noise)
# about 0.2 s: the light workload of tools.benchmark with -engine torch took
# 1.25 s before and 1.01 s after (medians of 5 whole runs).  So the module
# marks them, and the first call of
# any one turns them all into Numba functions (cached on disk) at once: they
# call each other, and Numba needs each callee compiled-able when it types the
# caller.
_DEFERRED = []


class _Deferred:
    """A generator function not yet handed to Numba; calling it compiles the module's."""

    def __init__(self, func):
        self.py_func = func
        self.__name__, self.__doc__, self.__wrapped__ = func.__name__, func.__doc__, func

    def __call__(self, *args):
        _compile_all()
        return globals()[self.__name__](*args)


def compiled(func):
    """Decorator: ``func`` becomes a cached Numba function at the first call of any of them."""
    _DEFERRED.append(func.__name__)
    return _Deferred(func)


def _compile_all():
    from numba import njit
    module = globals()
    for name in _DEFERRED:
        if isinstance(module[name], _Deferred):
            module[name] = njit(cache=True)(module[name].py_func)

# ---------------------------------------------------------------------------
# Generator constants (Park & Miller 1988, Schrage factorisation).
# ---------------------------------------------------------------------------
IA = 16807                   # multiplier
IM = 2147483647              # modulus, 2**31 - 1
AM = 1.0 / IM                # scale from integer to (0, 1)
IQ = 127773                  # IM // IA
IR = 2836                    # IM % IA
NTAB = 32                    # shuffle-table length
NDIV = 1 + (IM - 1) // NTAB  # maps a generator value to a table slot
RNMX = 1.0 - 1.2e-7          # largest value ran1 may return (before float rounding)

STREAM_SIZE = 2 + NTAB
SAMPLER_SIZE = 6

# Indices into the sampler-state array.
_OLDM, _G, _SQ, _ALXM, _ISET, _GSET = 0, 1, 2, 3, 4, 5

# Lanczos-style coefficients for log-gamma (Numerical Recipes values).
_GAMMLN_COF = np.array([76.18009172947146, -86.50532032941677,
                        24.01409824083091, -1.231739572450155,
                        0.1208650973866179e-2, -0.5395239384953e-5])

_f32 = np.float32
_f64 = np.float64


# ---------------------------------------------------------------------------
# State constructors
# ---------------------------------------------------------------------------
def new_stream(idum):
    """Return a fresh uniform-stream state seeded with ``idum``.

    ``idum`` is the value the C program stores internally, i.e. the
    *negated* command-line seed: ``-seed 12345`` is ``idum = -12345``.
    A non-positive ``idum`` makes the first :func:`ran1` call load the
    shuffle table, exactly as in C.  The table is empty (``iy = 0``)
    so a positive ``idum`` also triggers loading, but C then replaces
    the seed by 1 (see :func:`ran1`).

    Plain Python (only Python calls it): a run that never draws, such as a
    torch render without mosaic domains or noise, then never calls a
    compiled function (the first call of one loads Numba's typing registries).
    """
    state = np.zeros(STREAM_SIZE, dtype=np.int64)
    state[0] = idum
    return state


def empty_table():
    """C's generator state before the first draw of the run: no table loaded.

    Pass the returned array as ``table`` to every :func:`stream` of one run
    to share the shuffle table between the streams as C does.
    """
    return np.zeros(STREAM_SIZE, dtype=np.int64)


def stream(idum, table=None):
    """Return the uniform-stream state for the C-internal seed ``idum``.

    With ``table=None`` the stream has a shuffle table of its own (what
    :func:`new_stream` gives).  Otherwise ``table`` is the state array that
    the run's earlier streams drew from (or :func:`empty_table`); its
    ``idum`` slot is set to ``idum`` and the same array is returned, so the
    new stream starts on the table the earlier streams left and its draws
    update that shared table in place, as C's static ``iy``/``iv`` do.
    """
    if table is None:
        return new_stream(idum)
    table[0] = idum
    return table


def stream_from_user_seed(seed):
    """Return a uniform-stream state for a command-line seed value.

    nanoBragg negates the number given after ``-seed``,
    ``-mosaic_seed`` or ``-misset_seed`` before using it, so
    ``stream_from_user_seed(12345)`` equals ``new_stream(-12345)``.
    """
    return new_stream(-int(seed))


@compiled
def new_sampler_state():
    """Return a fresh Poisson/Gaussian sampler state (no cached values)."""
    pstate = np.zeros(SAMPLER_SIZE, dtype=np.float64)
    pstate[_OLDM] = -1.0
    return pstate


# ---------------------------------------------------------------------------
# Uniform deviates
# ---------------------------------------------------------------------------
@compiled
def _park_miller_step(idum):
    """Advance the Park-Miller generator once: idum -> IA*idum mod IM.

    Schrage's trick keeps every intermediate below 2**31.  ``idum`` is
    positive here, so integer floor division equals C's truncation.
    """
    k = idum // IQ
    idum = IA * (idum - k * IQ) - IR * k
    if idum < 0:
        idum += IM
    return idum


@compiled
def _load_shuffle_table(state):
    """(Re)seed the stream: warm up the generator and fill the table.

    C's quirk is kept: a seed that is already positive (possible only
    when the table is empty) is replaced by 1 rather than used.
    """
    idum = state[0]
    if -idum < 1:
        idum = 1
    else:
        idum = -idum
    # Eight warm-up draws are discarded, the next 32 fill the table
    # from the top slot down.
    for j in range(NTAB + 7, -1, -1):
        idum = _park_miller_step(idum)
        if j < NTAB:
            state[2 + j] = idum
    state[0] = idum
    state[1] = state[2]


@compiled
def ran1(state):
    """Draw one uniform deviate in (0, 1) from the stream ``state``.

    Returns the single-precision value C's ``float ran1()`` returns,
    as a Python float.  ``state`` is updated in place.
    """
    if state[0] <= 0 or state[1] == 0:
        _load_shuffle_table(state)
    idum = _park_miller_step(state[0])
    # The previous output picks which table entry is released next,
    # which breaks up the serial correlation of the bare generator.
    j = state[1] // NDIV
    iy = state[2 + j]
    state[2 + j] = idum
    state[0] = idum
    state[1] = iy
    temp = _f32(AM * iy)
    # Keep the result strictly below 1 (AM*iy can round up to 1.0f).
    if temp > RNMX:
        return _f64(_f32(RNMX))
    return _f64(temp)


# ---------------------------------------------------------------------------
# Gaussian, log-gamma and Poisson deviates
# ---------------------------------------------------------------------------
@compiled
def gaussdev(state, pstate):
    """Draw a standard normal deviate (mean 0, rms 1), as float32 value.

    Polar Box-Muller: each accepted point in the unit disc yields two
    deviates; the second is kept in ``pstate`` for the next call.
    """
    if pstate[_ISET] != 0.0:
        pstate[_ISET] = 0.0
        return pstate[_GSET]
    while True:
        v1 = _f32(2.0 * ran1(state) - 1.0)
        v2 = _f32(2.0 * ran1(state) - 1.0)
        rsq = _f32(_f32(v1 * v1) + _f32(v2 * v2))
        if not (rsq >= 1.0 or rsq == 0.0):
            break
    fac = _f32(math.sqrt(-2.0 * math.log(_f64(rsq)) / _f64(rsq)))
    pstate[_GSET] = _f64(_f32(v1 * fac))
    pstate[_ISET] = 1.0
    return _f64(_f32(v2 * fac))


@compiled
def gammln(xx):
    """Natural log of the gamma function, ln(Gamma(xx)), for xx > 0.

    Like C, the argument is taken as float32 and the result is
    returned as a float32 value, but the series runs in double.
    """
    x = _f64(_f32(xx))
    y = x
    tmp = x + 5.5
    tmp -= (x + 0.5) * math.log(tmp)
    ser = 1.000000000190015
    for j in range(6):
        y += 1.0
        ser += _GAMMLN_COF[j] / y
    return _f64(_f32(-tmp + math.log(2.5066282746310005 * ser / x)))


@compiled
def _poisson_small(xm, state, pstate):
    """Poisson deviate for mean < 12 by multiplying uniform deviates.

    Counting how many uniforms can be multiplied before the product
    drops below exp(-mean) is the same as counting exponential
    inter-arrival times that fit in one unit of time.
    """
    if xm != pstate[_OLDM]:
        pstate[_OLDM] = xm
        pstate[_G] = _f64(_f32(math.exp(_f64(-xm))))
    g = _f32(pstate[_G])
    em = _f32(-1.0)
    t = _f32(1.0)
    while True:
        em = _f32(em + _f32(1.0))
        t = _f32(t * _f32(ran1(state)))
        if not (t > g):
            break
    return _f64(em)


@compiled
def _poisson_large(xm, state, pstate):
    """Poisson deviate for mean >= 12 by rejection from a Lorentzian.

    A Lorentzian centred on the mean and scaled by sqrt(2*mean) lies
    above the Poisson distribution everywhere (after the 0.9 factor),
    so accepting candidates with probability ratio t gives exact
    Poisson samples.
    """
    if xm != pstate[_OLDM]:
        pstate[_OLDM] = xm
        pstate[_SQ] = _f64(_f32(math.sqrt(2.0 * _f64(xm))))
        pstate[_ALXM] = _f64(_f32(math.log(_f64(xm))))
        lgam = _f32(gammln(xm + 1.0))
        pstate[_G] = _f64(_f32(_f32(xm * _f32(pstate[_ALXM])) - lgam))
    sq = _f32(pstate[_SQ])
    alxm = _f32(pstate[_ALXM])
    g = _f32(pstate[_G])
    while True:
        while True:
            y = _f32(math.tan(math.pi * ran1(state)))
            em = _f32(_f32(sq * y) + xm)
            if not (em < 0.0):   # there are no negative counts
                break
        em = _f32(np.floor(_f64(em)))
        # log of Poisson(em) relative to its normaliser, all in float32
        expo = _f32(_f32(_f32(em * alxm) - _f32(gammln(em + 1.0))) - g)
        t = _f32(0.9 * (1.0 + _f32(y * y)) * math.exp(_f64(expo)))
        if not (ran1(state) > t):
            break
    return _f64(em)


@compiled
def poidev(xm, state, pstate):
    """Draw a Poisson deviate with mean ``xm`` (photons), as float32 value.

    ``xm`` is first rounded to float32, as C's ``float xm`` parameter.
    Means above 1e6 use a Gaussian approximation (the rejection method
    becomes very slow there); a mean that is zero or negative gives 0.
    """
    xm = _f32(xm)
    if xm > 1.0e6:
        x = _f64(xm)
        return _f64(_f32(x + math.sqrt(x) * gaussdev(state, pstate)))
    if xm < 12.0:
        return _poisson_small(xm, state, pstate)
    return _poisson_large(xm, state, pstate)


# ---------------------------------------------------------------------------
# Random orientations
# ---------------------------------------------------------------------------
@compiled
def _powf(base, exponent):
    """Single-precision power, base**exponent, via the C library powf."""
    return _f32(base) ** _f32(exponent)


@compiled
def mosaic_angle(mosaicity, r3):
    """A domain's rotation angle, mosaicity * (1 - r3**2)**(1/3), in single precision as C.

    ``mosaicity`` (radians) and the result are rounded to float32 (C's
    float * powf); ``r3`` is the third uniform draw in [-1, 1].
    """
    return _f64(_f32(_f32(mosaicity) * _powf(1.0 - r3 * r3, 1.0 / 3.0)))


@compiled
def mosaic_rotation_umat(mosaicity, state):
    """Random rotation matrix for one mosaic domain.

    The rotation axis is uniform on the unit sphere and the rotation
    angle is ``mosaicity * (1 - r**2)**(1/3)`` for r uniform in
    [-1, 1], which fills a spherical cap of diameter ``mosaicity``
    uniformly.  ``mosaicity`` is in radians and is rounded to float32
    as in C; 90.0 ("radians") gives an essentially isotropic random
    orientation, which C uses for ``-misset random``.

    Returns the 3x3 matrix as a length-9 float64 array in row-major
    order (C's ``umat[0..8]``).  Draws three values from ``state``.
    """
    r1 = 2.0 * ran1(state) - 1.0
    r2 = 2.0 * ran1(state) - 1.0
    r3 = 2.0 * ran1(state) - 1.0

    xyrad = math.sqrt(1.0 - r2 * r2)
    rot = mosaic_angle(mosaicity, r3)

    # Unit rotation axis (v1, v2, v3).
    v1 = xyrad * math.sin(math.pi * r1)
    v2 = xyrad * math.cos(math.pi * r1)
    v3 = r2

    # Axis-angle (Rodrigues) matrix, written with the same grouping as
    # C so the double-precision rounding matches.
    c = math.cos(rot)
    omc = 1.0 - c
    s = math.sin(rot)
    omc_v1 = omc * v1
    omc_v1v2 = omc_v1 * v2
    omc_v1v3 = omc_v1 * v3
    omc_v2v3 = omc * v2 * v3
    s_v1 = s * v1
    s_v2 = s * v2
    s_v3 = s * v3

    umat = np.empty(9, dtype=np.float64)
    umat[0] = c + omc * (v1 * v1)
    umat[1] = omc_v1v2 - s_v3
    umat[2] = omc_v1v3 + s_v2
    umat[3] = omc_v1v2 + s_v3
    umat[4] = c + omc * (v2 * v2)
    umat[5] = omc_v2v3 - s_v1
    umat[6] = omc_v1v3 - s_v2
    umat[7] = omc_v2v3 + s_v1
    umat[8] = c + omc * (v3 * v3)
    return umat


@compiled
def _unit_rows(rows, norms):
    """Divide each row of the 3x3 ``rows`` by its length (when > 0)."""
    for i in range(3):
        norms[i] = math.sqrt(rows[i, 0] * rows[i, 0] + rows[i, 1] * rows[i, 1]
                             + rows[i, 2] * rows[i, 2])
        if norms[i] > 0:
            for k in range(3):
                rows[i, k] /= norms[i]


@compiled
def _unit_cross(a, b):
    """Cross product a x b scaled to unit length (left as is if zero)."""
    out = np.empty(3, dtype=np.float64)
    out[0] = a[1] * b[2] - a[2] * b[1]
    out[1] = a[2] * b[0] - a[0] * b[2]
    out[2] = a[0] * b[1] - a[1] * b[0]
    m = math.sqrt(out[0] * out[0] + out[1] * out[1] + out[2] * out[2])
    if m > 0:
        for k in range(3):
            out[k] /= m
    return out


@compiled
def _replace_missing_rows(u, norms):
    """Rebuild any zero-length row of ``u`` from the other two rows."""
    x_cross_y = _unit_cross(u[0], u[1])
    y_cross_z = _unit_cross(u[1], u[2])
    z_cross_x = _unit_cross(u[2], u[0])
    if norms[0] <= 0:
        u[0, :] = y_cross_z
    if norms[1] <= 0:
        u[1, :] = z_cross_x
    if norms[2] <= 0:
        u[2, :] = x_cross_y


@compiled
def umat2misset(umat):
    """Misset angles (rotx, roty, rotz) in radians of a rotation matrix.

    ``umat`` is a length-9 row-major rotation matrix.  The angles are
    such that rotating about x, then y, then z reproduces it.  Rows
    are renormalised and a missing (zero) row is rebuilt from the
    other two first, as the C routine does; in gimbal lock
    (|umat[6]| >= 1) rotx and roty are set to pi and pi/2.
    """
    u = np.empty((3, 3), dtype=np.float64)
    for i in range(3):
        for k in range(3):
            u[i, k] = umat[3 * i + k]
    norms = np.empty(3, dtype=np.float64)
    _unit_rows(u, norms)

    # If only one row survives, fill the others with the matching
    # identity rows (the conditions overlap on purpose, as in C).
    mx, my, mz = norms[0], norms[1], norms[2]
    if mx >= 0 and my <= 0 and mz <= 0:
        u[1, 0], u[1, 1], u[1, 2] = 0.0, 1.0, 0.0
        u[2, 0], u[2, 1], u[2, 2] = 0.0, 0.0, 1.0
    if mx <= 0 and my >= 0 and mz <= 0:
        u[0, 0], u[0, 1], u[0, 2] = 1.0, 0.0, 0.0
        u[2, 0], u[2, 1], u[2, 2] = 0.0, 0.0, 1.0
    if mx <= 0 and my <= 0 and mz >= 0:
        u[0, 0], u[0, 1], u[0, 2] = 1.0, 0.0, 0.0
        u[1, 0], u[1, 1], u[1, 2] = 0.0, 1.0, 0.0

    # Two passes, so a row rebuilt in the first pass can help rebuild
    # another one in the second.
    _replace_missing_rows(u, norms)
    _replace_missing_rows(u, norms)
    _unit_rows(u, np.empty(3, dtype=np.float64))

    out = np.empty(3, dtype=np.float64)
    uxx, uxy = u[0, 0], u[0, 1]
    uyx, uyy = u[1, 0], u[1, 1]
    uzx, uzy, uzz = u[2, 0], u[2, 1], u[2, 2]
    if uzx * uzx < 1.0:
        out[0] = math.atan2(uzy, uzz)
        out[1] = math.atan2(-uzx, math.sqrt(uzy * uzy + uzz * uzz))
        out[2] = math.atan2(uyx, uxx)
    else:
        out[0] = math.atan2(1.0, 1.0) * 4.0
        out[1] = math.atan2(1.0, 1.0) * 2.0
        out[2] = math.atan2(uxy, -uyy)
    return out


# ---------------------------------------------------------------------------
# Noise image
# ---------------------------------------------------------------------------
@compiled
def _c_double_to_uint16(value):
    """Convert a double to uint16 the way x86-64 GCC code does.

    The compiled C truncates to a 32-bit int (cvttsd2si) and stores the
    low 16 bits.  NaN and values outside the int32 range become
    0x80000000, whose low 16 bits are 0; negative values wrap.
    """
    if not (value > -2147483649.0 and value < 2147483648.0):
        return np.uint16(0)
    return np.uint16(np.int64(value) & 0xFFFF)


def noise_image(float_image, active, seed_c, adc_offset, table=None):
    """Photon-counting image with Poisson noise, as nanoBragg writes it.

    Parameters
    ----------
    float_image : float32 array (slow, fast)
        Expected photons per pixel.
    active : bool array (slow, fast)
        True inside the region of interest.  Every active pixel draws a
        Poisson deviate (masked pixels included, as in C); inactive
        pixels are skipped and stay 0.
    seed_c : int
        C-internal seed (the negated ``-seed`` value, e.g. -12345).
    adc_offset : float
        Constant added to every active pixel (ADU), C's ``-adc``.
    table : int64 array or None
        The generator state the run's earlier streams left (C's shared
        shuffle table, see :func:`stream`); it is copied, not changed.
        None gives the noise stream a table of its own.

    Returns
    -------
    (image, photons, overloads)
        ``image`` is uint16 (slow, fast); ``photons`` is the float64 sum
        of the Poisson deviates; ``overloads`` counts active pixels whose
        value exceeded 65535 and was clipped.
    """
    state = stream(seed_c, None if table is None else table.copy())
    return _noise_image(float_image, active, state, adc_offset)


@compiled
def _noise_image(float_image, active, state, adc_offset):
    """:func:`noise_image` drawing from the uniform-stream ``state``."""
    pstate = new_sampler_state()
    n_slow, n_fast = float_image.shape
    image = np.zeros((n_slow, n_fast), dtype=np.uint16)
    photons = 0.0
    overloads = 0
    for s in range(n_slow):          # raster order fixes the draw order
        for f in range(n_fast):
            if not active[s, f]:
                continue
            counts = poidev(float_image[s, f], state, pstate)
            photons += counts
            value = counts + adc_offset
            if value > 65535.0:
                value = 65535.0
                overloads += 1
            image[s, f] = _c_double_to_uint16(value)
    return image, photons, overloads
