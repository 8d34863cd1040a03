"""Lattice transforms F_latt of a finite crystal, with gradient-safe singular points.

All functions take tensors of fractional Miller indices, or of their offsets
from the nearest reciprocal-lattice node (any shape), and return tensors of
the same shape, dtype and device.  Three forms of the parallelepiped's
interference function live here:

* :func:`sincg`: the C program's ``sin(pi N h) / sin(pi h)`` on the whole
  index, for whole N in the geometry dtype (bit for bit as the reference);
* :func:`sincg_reduced` with a whole N: the same value from the offset
  ``delta = h - h0``, for low precision;
* :func:`interference`: ``sin(pi N delta) / sin(pi delta)`` for any real N,
  smooth in N, used whenever N is a free parameter (specs/physics.md,
  "Lattice factor for real N").

:func:`lattice_factor` is the kernel's stage: it picks the form.
"""

from __future__ import annotations

import math

import torch

SQUARE, ROUND, GAUSS, TOPHAT = 0, 1, 2, 3


def sincg(x: torch.Tensor, N) -> torch.Tensor:
    """sin(N x) / sin(x), the interference function of N unit cells.

    Equals N at x = 0 and is finite (with finite gradient) wherever sin(x) is
    near zero: there the operand is masked before the division (double
    ``where``), and the limit N cos(N x)/cos(x) is used, which is exact at
    every multiple of pi, not only at x = 0.
    """
    N = torch.as_tensor(N, dtype=x.dtype, device=x.device)
    s = torch.sin(x)
    tiny = torch.finfo(x.dtype).eps ** 0.5
    near = s.abs() < tiny
    safe_s = torch.where(near, torch.ones_like(s), s)
    ratio = torch.sin(N * x) / safe_s
    limit = N * torch.cos(N * x) / torch.cos(x)
    exact_zero = x == 0
    return torch.where(exact_zero, N.expand_as(x), torch.where(near, limit, ratio))


def interference(delta: torch.Tensor, N) -> torch.Tensor:
    """sin(pi N delta) / sin(pi delta): N cells' interference, for any real N.

    ``delta`` is the offset of the fractional index from its nearest node
    (|delta| <= 1/2); ``N`` a scalar tensor (it may require a gradient).
    For whole N this is C's ``sin(pi N h) / sin(pi h)`` times the sign
    (-1)^(h0 (N-1)), which F_latt^2 does not see; for real N it is the
    periodic continuation of the interference peak around every node,
    smooth in N (specs/physics.md).

    Near the node the quotient's gradient would be a difference of two
    large, nearly equal terms (and 0/0 at delta = 0), so there the Taylor
    series N [1 - (N^2-1) x^2/6 + (N^2-1)(3N^2-7) x^4/360], x = pi delta, is
    used instead, with the quotient's operand masked (double ``where``).
    The switch is at max(|N|, 2) |x| = eps^(1/8) (0.011 in float64, 0.14 in
    float32): below it the series' first neglected term, at most
    (N x)^6 / 5040 of the value for N >= 2 and 2e-3 x^6 below, is under the
    dtype's rounding; above it the quotient's cancellation costs at most
    ~eps / (N x)^2 of its gradient.
    """
    N = torch.as_tensor(N, dtype=delta.dtype, device=delta.device)
    x = math.pi * delta
    reach = torch.finfo(delta.dtype).eps ** 0.125
    near = (x * torch.clamp(N.abs(), min=2.0)).abs() < reach
    safe_x = torch.where(near, torch.ones_like(x), x)
    quotient = torch.sin(N * safe_x) / torch.sin(safe_x)
    x2, N2 = x * x, N * N
    series = N * (1.0 - (N2 - 1.0) * x2 / 6.0 * (1.0 - (3.0 * N2 - 7.0) * x2 / 60.0))
    return torch.where(near, series, quotient)


def sinc3(x: torch.Tensor, as_c: bool = False) -> torch.Tensor:
    """3 (sin x - x cos x) / x^3: the Fourier transform of a sphere, 1 at x = 0.

    ``as_c`` keeps C's closed form down to 0 (it cancels to 0 for tiny x);
    otherwise the Taylor series is used below |x| = 1e-3.
    """
    if as_c:
        # C's cancellation happens in double precision: reproduce it there, whatever the compute dtype
        # (in float32 the same closed form cancels far sooner, errors of 1e-4 next to a node)
        x64 = x.to(torch.float64)
        xs = torch.where(x64 == 0, torch.ones_like(x64), x64)
        value = torch.where(x64 == 0, torch.ones_like(x64), 3.0 * (torch.sin(xs) / xs - torch.cos(xs)) / (xs * xs))
        return value.to(x.dtype)
    if x.dtype == torch.float64:
        # as the reference: closed form down to 1e-3, where it is still exact to ~1e-10
        small = x.abs() < 1e-3
        x2 = x * x
        series = 1.0 - x2 / 10.0
    else:
        # lower precision cancels sooner: series (error < 6e-12) up to |x| = 0.5
        small = x.abs() < 0.5
        x2 = x * x
        series = 1.0 + x2 * (-1.0 / 10 + x2 * (1.0 / 280 + x2 * (-1.0 / 15120 + x2 / 1330560)))
    xs = torch.where(small, torch.ones_like(x), x)
    full = 3.0 * (torch.sin(xs) / xs - torch.cos(xs)) / (xs * xs)
    return torch.where(x == 0, torch.ones_like(x), torch.where(small, series, full))


def lattice_factor_direct(h, k, l, h0, k0, l0, shape: int, N, recip, fudge, c_sinc3: bool = False):
    """F_latt for fractional (h, k, l) near the nearest node (h0, k0, l0), as C computes it.

    ``N`` is a (3,) tensor (Na, Nb, Nc); ``recip`` is (3, 3) with rows a*, b*,
    c* in 1/Angstrom (used only by the round/Gaussian/top-hat shapes).  The
    square shape uses C's sincg of the whole index: right for whole N only.
    The other shapes depend on N through smooth polynomials and are valid for
    any real N (the top-hat is a step in N by construction).
    """
    Na, Nb, Nc = N[0], N[1], N[2]
    if shape == SQUARE:
        # C skips the factor for N <= 1 (sincg(x, 1) is 1 anyway)
        F = sincg(math.pi * h, Na) * sincg(math.pi * k, Nb) * sincg(math.pi * l, Nc)
        return F
    dh, dk, dl = h - h0, k - k0, l - l0
    if shape == ROUND:
        hrad_sqr = dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc
        arg = hrad_sqr * fudge
        safe = torch.where(arg > 0, arg, torch.ones_like(arg))
        r = torch.where(arg > 0, torch.sqrt(safe), torch.zeros_like(arg))
        return Na * Nb * Nc * 0.723601254558268 * sinc3(math.pi * r, c_sinc3)
    d = (dh[..., None] * recip[0] + dk[..., None] * recip[1] + dl[..., None] * recip[2])
    rad_star_sqr = (d * d).sum(-1) * Na * Na * Nb * Nb * Nc * Nc
    if shape == GAUSS:
        return Na * Nb * Nc * torch.exp(-(rad_star_sqr / 0.63 * fudge))
    return Na * Nb * Nc * (rad_star_sqr * fudge < 0.3969).to(h.dtype)


# Whole N up to this many cells take the Chebyshev form (chebyshev_interference): each
# further cell costs two multiply-adds over the tensor, against two sines, a division and
# the masking of delta = 0 for the quotient; the two cost the same near N = 16
# (tools/api_benchmark.py --chebyshev-max-n; the figures are in specs/engines.md).
CHEBYSHEV_MAX_N = 15


def chebyshev_interference(delta: torch.Tensor, N: int) -> torch.Tensor:
    """sin(pi N delta) / sin(pi delta) for a whole N >= 1, without a quotient.

    The interference function of N cells is the Chebyshev polynomial of the
    second kind U_{N-1}(cos x), x = pi delta.  The plain recurrence
    U_{k+1} = 2 cos(x) U_k - U_{k-1} loses accuracy next to a node, where
    cos(x) rounds to 1 (its error there grows as N^2 eps: in float32 1.9e-6
    of the peak at N = 10, 4.4e-6 at N = 16).  Written on the differences D_k = U_k - U_{k-1}
    with e = 2 (cos x - 1) = -4 sin^2(x / 2), which keeps its relative
    accuracy at small x (Reinsch's form),

        D_{k+1} = D_k + e U_k,    U_{k+1} = U_k + D_{k+1},    U_0 = D_0 = 1,

    it is as accurate as the quotient for |delta| <= 1/2 (in float32 within
    2.7e-7 of the peak up to N = 16, the quotient 2.5e-7: ``python -m
    tests.test_torch_speed_paths``).  Equals N at delta = 0 with no
    special case; differentiable in ``delta``.  Under ``torch.no_grad`` (or a
    ``delta`` without gradient) the recurrence runs in place.
    """
    if N == 1:
        return torch.ones_like(delta)
    in_place = not (torch.is_grad_enabled() and delta.requires_grad)
    x = (math.pi / 2.0) * delta
    q = x.sin_().square_() if in_place else torch.sin(x) ** 2          # sin^2(x / 2) = -e / 4
    U, D = torch.rsub(q, 2.0, alpha=4.0), torch.rsub(q, 1.0, alpha=4.0)   # U_1 = 2 cos x, D_1 = U_1 - U_0
    for _ in range(N - 2):
        if in_place:
            D.addcmul_(q, U, value=-4.0)
            U.add_(D)
        else:
            D = torch.addcmul(D, q, U, value=-4.0)
            U = U + D
    return U


def sincg_reduced(delta, n, N, N_int=None, signed=True):
    """sin(pi N h) / sin(pi h) for h = n + delta, n integer, |delta| <= 1/2.

    For integer N this equals (-1)^(n (N-1)) sin(pi N delta) / sin(pi delta),
    which keeps full relative accuracy in low precision: the arguments stay
    below pi N / 2 instead of growing with h.  ``N_int`` is N as a Python int
    when the caller knows it is whole (the command line's N always is);
    otherwise (N a free, real parameter) the value is :func:`interference`,
    without the sign.  Whole N up to ``CHEBYSHEV_MAX_N`` take
    :func:`chebyshev_interference`, larger ones the quotient.  ``signed``
    False leaves out the sign (-1)^(n (N-1)), for callers that only square
    the factor.
    """
    if N_int is None:
        return interference(delta, torch.as_tensor(N, device=delta.device).to(delta.dtype))
    if N_int <= CHEBYSHEV_MAX_N:
        ratio = chebyshev_interference(delta, N_int)
    else:
        s = torch.sin(math.pi * delta)
        zero = delta == 0
        safe = torch.where(zero, torch.ones_like(s), s)
        ratio = torch.where(zero, torch.full_like(delta, float(N_int)),
                            torch.sin((math.pi * N_int) * delta) / safe)
    if N_int % 2 == 1 or not signed:
        return ratio                       # (-1)^(n (N-1)) = 1 for odd N
    return torch.addcmul(ratio, ratio, _odd(n).to(ratio.dtype), value=-2.0)      # ratio (-1)^n


def _odd(n):
    """1.0 where the whole number n is odd, else 0.0; n may be a pair (coarse, fine) whose sum is meant."""
    if isinstance(n, tuple):
        coarse, fine = n                   # fine: small whole values, exact in its own dtype
        n = torch.remainder(coarse, 2.0).to(fine.dtype) + fine
    return torch.remainder(n, 2.0)


def lattice_factor_reduced(dh, dk, dl, h0, k0, l0, shape: int, N, recip, fudge, N_int=None, c_sinc3=False,
                           signed=True):
    """:func:`lattice_factor` from offsets (dh, dk, dl) to the nearest node (h0, k0, l0).

    The offsets are in the compute dtype; h0, k0, l0 in the (higher) geometry
    dtype.  ``N_int``: (Na, Nb, Nc) as Python ints when known to be whole.
    ``signed`` False: the square shape's factor up to its sign (see
    :func:`sincg_reduced`).
    """
    if shape == SQUARE:
        Ni = N_int if N_int is not None else (None, None, None)
        F = None
        for delta, node, axis in ((dh, h0, 0), (dk, k0, 1), (dl, l0, 2)):
            if Ni[axis] == 1:
                continue                   # one cell: the factor is exactly 1
            f = sincg_reduced(delta, node, N[axis], Ni[axis], signed)
            if F is None:
                F = f
            else:
                F = F.mul_(f) if not torch.is_grad_enabled() else F * f
        return torch.ones_like(dh) if F is None else F
    zero = torch.zeros_like(dh)
    return lattice_factor_direct(dh, dk, dl, zero, zero, zero, shape, N, recip, fudge, c_sinc3)


def lattice_factor(miller, cry, c_sinc3: bool = False, signed: bool = True):
    """Stage: F_latt of every evaluation, (P, T, S, K, F, M), in the compute dtype.

    ``miller`` holds the fractional indices ``hkl`` (or None), their nearest
    nodes ``nodes`` and the offsets ``offsets`` in the compute dtype (or
    None); ``cry`` the crystal (N, N_int, shape, recip, fudge); see
    :class:`torchsim.kernel.MillerIndices` and :class:`torchsim.kernel.Crystal`.

    The form:

    * whole N (``cry.N_int``) with the indices in the compute dtype: C's form
      on the whole index, bit for bit as the reference;
    * whole N with offsets (low precision): the signed reduced form, equal to
      C's up to rounding;
    * N a free parameter (``N_int`` None, or N requiring a gradient): the
      real-N form :func:`interference`, smooth in N; its dI/dN is finite
      everywhere (C's form would give the derivative of a pole).

    ``signed`` False allows the whole-N reduced form to leave out its sign
    (-1)^(n (N-1)): the image sees F_latt^2 only, and the sign costs three
    passes over the evaluations for an even N.
    """
    N_int = cry.N_int
    if torch.is_grad_enabled() and isinstance(cry.N, torch.Tensor) and cry.N.requires_grad:
        N_int = None                       # the exact whole-N paths carry no gradient in N
    if miller.offsets is None and N_int is not None:
        h, k, l = miller.hkl
        h0, k0, l0 = miller.nodes
        return lattice_factor_direct(h, k, l, h0, k0, l0, cry.shape, cry.N, cry.recip, cry.fudge, c_sinc3)
    dh, dk, dl = miller.node_offsets()
    h0, k0, l0 = miller.nodes
    return lattice_factor_reduced(dh, dk, dl, h0, k0, l0, cry.shape, cry.N, cry.recip, cry.fudge, N_int, c_sinc3,
                                  signed)
