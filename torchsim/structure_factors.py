"""Structure factors F_cell: nearest reflection or tricubic interpolation.

The dense grid ``Fhkl`` has shape (h_range+1, k_range+1, l_range+1) and is
indexed by (h - h_min, k - k_min, l - l_min), as in :mod:`reference.fileio`.
Miller-index tensors may have any shape; results have the same shape.
"""

from __future__ import annotations

import torch


def padded_table(Fhkl, hkl_min, hkl_max, default_F):
    """The table's entries for hkl_min..hkl_max with one layer of ``default_F`` around them, flattened.

    Any Miller index clamped to [min - 1, max + 1] on each axis then reads
    the table inside the range and default_F anywhere outside it: one
    gather and no mask.  Differentiable in ``Fhkl``.
    """
    n = [hkl_max[i] - hkl_min[i] + 1 for i in range(3)]
    inner = Fhkl[:n[0], :n[1], :n[2]]
    return torch.nn.functional.pad(inner, (1, 1, 1, 1, 1, 1), value=float(default_F)).reshape(-1)


def padded_index(nodes, hkl_min, hkl_max):
    """Flat index (int32) into :func:`padded_table` of the nodes (h0, k0, l0).

    Each node is a whole-valued tensor, or a pair (coarse, fine) whose sum is
    meant (a small geometry-dtype tensor and a full one of small whole values,
    see :class:`torchsim.kernel.MillerIndices`).  The index is formed in the
    nodes' float dtype where that holds it exactly (below 2^24 entries in
    float32, else float64); a NaN node reads default_F, as C's range test
    fails for it.
    """
    sizes = [hkl_max[i] - hkl_min[i] + 3 for i in range(3)]          # with the padding
    total = sizes[0] * sizes[1] * sizes[2]
    flat = None
    with torch.no_grad():                 # whole numbers: no gradient flows through an index
        for axis, node in enumerate(nodes):
            low, top = hkl_min[axis] - 1, sizes[axis] - 1
            if isinstance(node, tuple):
                coarse, fine = node
                # far outside the table stays far outside; near it the sum is exact in fine's dtype
                base = torch.clamp(coarse - low, -2.0 ** 20, 2.0 ** 20).to(fine.dtype)
                i = (fine + base).clamp_(0, top)        # (the full tensor first: its layout is kept)
            else:
                i = (node - low).clamp_(0, top)
            if i.dtype == torch.float32 and total >= 2 ** 24 or not i.is_floating_point():
                i = i.to(torch.float64)
            flat = i if flat is None else flat.mul_(sizes[axis]).add_(i)
        # clamp keeps NaN: a NaN node reads the border (default_F); no infinity is left to map
        return flat.nan_to_num_(0.0).to(torch.int32 if total < 2 ** 31 else torch.int64)


def take(table, index):
    """``table[index]`` for a 1-D table, gathered in ``index``'s memory order (one contiguous pass)."""
    order = sorted(range(index.dim()), key=lambda d: -index.stride(d))
    in_memory = index.permute(order).contiguous()       # a view when index is dense
    values = table.index_select(0, in_memory.reshape(-1)).view(in_memory.shape)
    return values.permute([order.index(d) for d in range(index.dim())])


def nearest_F(h0, k0, l0, Fhkl, hkl_min, hkl_max, default_F, has_table: bool):
    """F of the nearest reflection (whole-valued tensors or (coarse, fine) pairs h0, k0, l0), default_F outside."""
    default = torch.as_tensor(default_F, dtype=Fhkl.dtype, device=Fhkl.device)
    if not has_table:
        shape = (h0[1] if isinstance(h0, tuple) else h0).shape
        return default.expand(shape)
    table = padded_table(Fhkl, hkl_min, hkl_max, default_F)
    return take(table, padded_index((h0, k0, l0), hkl_min, hkl_max))


def outside_interpolation_grid(h, k, l, hkl_min, hkl_max):
    """C's conservative test that the 4x4x4 neighbourhood may leave the table."""
    rng = [hkl_max[i] - hkl_min[i] + 1 for i in range(3)]
    out = torch.zeros_like(h, dtype=torch.bool)
    for x, i in ((h, 0), (k, 1), (l, 2)):
        out = out | ((x - hkl_min[i] + 3) > rng[i]) | ((x - 2) < hkl_min[i])
    return out


def _lagrange_weights(x, x0):
    """Weights of the cubic Lagrange polynomial through x0-1, x0, x0+1, x0+2 at x.

    Returns a list of 4 tensors shaped as x.  Written as C writes it, node by node.
    """
    nodes = [x0 - 1.0, x0, x0 + 1.0, x0 + 2.0]
    offsets = [x - node for node in nodes]          # each difference once (the same values as node by node)
    weights = []
    for i in range(4):
        num = None
        den = torch.ones_like(x0)
        for j in range(4):
            if j != i:
                num = offsets[j] if num is None else num * offsets[j]
                den = den * (nodes[i] - nodes[j])
        weights.append(num / den)
    return weights


def tricubic_F(h, k, l, Fhkl, hkl_min, valid):
    """Tricubic Lagrange interpolation of F around (h, k, l).

    Indices come from the (possibly higher-precision) dtype of ``h``; the
    weights are computed in the dtype of ``Fhkl`` from the offsets to the
    grid node below, which loses nothing in lower precision.  ``valid`` marks
    entries whose neighbourhood lies inside the table; other entries read
    some neighbourhood inside the table and must be replaced by the caller.

    The 4 x 4 x 4 neighbourhood is read as 64 gathers from the flattened
    table, each one contiguous pass over the evaluations, and summed along
    l, then k, then h: a gather of (..., 4, 4, 4) blocks and sums over
    trailing dimensions of 4 run many times slower on a CPU.
    """
    # (a table shorter than 4 along an axis has no valid neighbourhood; padding keeps every read inside)
    short = [max(0, 4 - n) for n in Fhkl.shape]
    table = torch.nn.functional.pad(Fhkl, (0, short[2], 0, short[1], 0, short[0])) if any(short) else Fhkl
    sizes = table.shape
    strides = (sizes[1] * sizes[2], sizes[2], 1)
    flat = table.reshape(-1)
    weights, first = [], None
    for x, lo, n, stride in zip((h, k, l), hkl_min, sizes, strides):
        below = torch.floor(x)
        weights.append(_lagrange_weights((x - below).to(Fhkl.dtype), torch.zeros((), dtype=Fhkl.dtype,
                                                                                 device=Fhkl.device)))
        with torch.no_grad():         # whole numbers: no gradient flows through an index
            # the neighbourhood's first node, kept inside the table (a valid entry never moves)
            i = (below - (lo + 1)).nan_to_num_(0.0).clamp_(0, n - 4)
            first = i * stride if first is None else first.add_(i, alpha=stride)
    first = first.to(torch.int32 if flat.numel() < 2 ** 31 else torch.int64)
    wh, wk, wl = weights

    def weighted_sum(terms, w):
        """sum_i terms(i) w[i], in place when no gradient is recorded."""
        total = terms(0) * w[0]
        for i in range(1, 4):
            if torch.is_grad_enabled():
                total = total + terms(i) * w[i]
            else:
                total.addcmul_(terms(i), w[i])
        return total

    # the entry (a, b, c) steps from the first node: a view of the table that starts there
    entry = lambda a, b, c: take(flat[a * strides[0] + b * strides[1] + c:], first)  # noqa: E731
    return weighted_sum(lambda a: weighted_sum(lambda b: weighted_sum(lambda c: entry(a, b, c), wl), wk), wh)


def structure_factor(hkl, nodes, sf, use_interp=None):
    """Stage: F_cell of every evaluation, (P, T, S, K, F, M).

    ``hkl``: fractional (h, k, l) (needed only for interpolation); ``nodes``:
    the nearest nodes (h0, k0, l0) as whole-valued tensors or (coarse, fine)
    pairs (needed only with a table); ``sf``: the :class:`torchsim.kernel.Factors`; ``use_interp``:
    where interpolation is wanted (the parity cut), with ``sf.interpolate``.

    Without a table every reflection has the amplitude default_F: returns
    None (the caller multiplies by the constant).  With one, the nearest
    node's entry (default_F outside the table), or under interpolation the
    tricubic value wherever the 4x4x4 neighbourhood lies inside the table.
    Returns (F_cell or None, the out-of-grid mask or None without
    interpolation).
    """
    F_near = None
    if sf.has_table:
        h0, k0, l0 = nodes
        F_near = nearest_F(h0, k0, l0, sf.Fhkl, sf.hkl_min, sf.hkl_max, sf.default_F, True)
    if not sf.interpolate:
        return F_near, None
    h, k, l = hkl
    off_grid = outside_interpolation_grid(h, k, l, sf.hkl_min, sf.hkl_max)
    interp_ok = use_interp & ~off_grid
    F_interp = tricubic_F(h, k, l, sf.Fhkl, sf.hkl_min, interp_ok)
    return torch.where(interp_ok, F_interp, F_near), off_grid
