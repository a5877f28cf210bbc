"""Resampling a BEiT relative-position table to a new patch grid, the reference's way.

The reference (BEiT's ``interpolate_pos_embed``, used by X²-VLM's ``models/beit2.py``
whenever a checkpoint is loaded at another image size) does, per head:

1. places the old table's ``2g-1`` offsets per axis not at ``-(g-1) .. g-1`` but on a
   geometric progression ``0, ±1, ±(1+q), ±(1+q+q²), ...`` whose ratio ``q`` is found by
   bisection in ``[1.01, 1.5]`` so the last offset reaches ``g' - 1`` (the new grid's
   largest offset): offsets near 0 keep their values, the far ones are stretched;
2. fits an interpolating bicubic spline through those samples (scipy's
   ``interp2d(kind='cubic')``, i.e. FITPACK ``regrid`` with ``s=0``: the tensor-product
   *not-a-knot* cubic spline) and evaluates it at the integer offsets
   ``-(g'-1) .. g'-1``, clamping any point outside the samples to the border as FITPACK
   does.

``interp2d`` is gone from current scipy, so step 2 is done here without scipy: a
not-a-knot cubic spline is linear in its samples, so one ``(n_new, n_old)`` matrix per
axis, ``W``, gives every head's table as ``W @ Z @ W.T``. The test suite checks it
against a transcription of the reference's procedure on scipy's ``RectBivariateSpline``
(its documented replacement for ``interp2d`` on grids).
"""
from __future__ import annotations

import torch

# The reference's bisection bounds and stopping width for the progression's ratio.
_Q_LOW, _Q_HIGH, _Q_TOL = 1.01, 1.5, 1e-6


def geometric_offsets(old_side: int, new_side: int) -> list[float]:
    """The reference's sample positions ``(old_side,)`` for a table of ``old_side``
    offsets per axis resized to ``new_side`` (both odd): symmetric, 0 in the middle."""
    half_old, half_new = old_side // 2, new_side // 2

    def reach(q: float) -> float:  # 1 + q + ... + q^(half_old - 1)
        return (1.0 - q ** half_old) / (1.0 - q)

    low, high = _Q_LOW, _Q_HIGH
    q = low
    # The reference keeps the last midpoint it tried (not the final bracket's centre).
    while high - low > _Q_TOL:
        q = (low + high) / 2.0
        if reach(q) > half_new:
            high = q
        else:
            low = q
    steps, cur = [], 1.0
    for i in range(half_old):
        steps.append(cur)
        cur += q ** (i + 1)
    return [-s for s in reversed(steps)] + [0.0] + steps


def not_a_knot_matrix(nodes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(len(targets), len(nodes))`` matrix ``W`` with ``W @ y`` = the not-a-knot cubic
    spline through ``(nodes, y)`` evaluated at ``targets`` (float64).

    Targets outside ``[nodes[0], nodes[-1]]`` are clamped to the border (FITPACK's rule).
    Three nodes give the interpolating parabola, one node a constant (FITPACK itself
    refuses fewer than four; those grids are too small to matter in practice).
    """
    x = nodes.to(torch.float64)
    t = targets.to(torch.float64).clamp(x[0], x[-1])
    n = x.numel()
    if n == 1:
        return torch.ones(t.numel(), 1, dtype=torch.float64)
    h = x[1:] - x[:-1]                                   # (n-1,)
    # Second derivatives M = C @ y: interior rows are the usual continuity equations,
    # the first and last say the third derivative does not jump at x[1] and x[n-2].
    a = torch.zeros(n, n, dtype=torch.float64)
    b = torch.zeros(n, n, dtype=torch.float64)
    for i in range(1, n - 1):
        a[i, i - 1], a[i, i], a[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        b[i, i - 1], b[i, i], b[i, i + 1] = 6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]
    if n == 3:  # one cubic piece through 3 points is underdetermined: take the parabola
        a[0, 0], a[0, 1] = 1.0, -1.0
        a[2, 1], a[2, 2] = 1.0, -1.0
    else:
        a[0, 0], a[0, 1], a[0, 2] = h[1], -(h[0] + h[1]), h[0]
        a[-1, -3], a[-1, -2], a[-1, -1] = h[-1], -(h[-2] + h[-1]), h[-2]
    c = torch.linalg.solve(a, b)                         # (n, n): M = c @ y
    seg = (torch.searchsorted(x, t, right=True) - 1).clamp(0, n - 2)
    lo, hi, hs = x[seg], x[seg + 1], h[seg]
    u, v = hi - t, t - lo                                # distances to the segment ends
    w_m_lo = (u ** 3 / hs - hs * u) / 6                  # weight of M[seg]
    w_m_hi = (v ** 3 / hs - hs * v) / 6                  # weight of M[seg + 1]
    w = w_m_lo[:, None] * c[seg] + w_m_hi[:, None] * c[seg + 1]
    rows = torch.arange(t.numel())
    w[rows, seg] += u / hs
    w[rows, seg + 1] += v / hs
    return w


def resize_offsets_reference(grid: torch.Tensor, new_side: int) -> torch.Tensor:
    """``(H, S, S)`` offset tables -> ``(H, S', S')`` by the reference's procedure
    (float64 inside, the input's dtype out)."""
    old_side = grid.shape[-1]
    nodes = torch.tensor(geometric_offsets(old_side, new_side), dtype=torch.float64)
    half = new_side // 2
    targets = torch.arange(-half, half + 1, dtype=torch.float64)
    w = not_a_knot_matrix(nodes, targets)                # (S', S)
    out = w @ grid.to(torch.float64) @ w.T
    return out.to(grid.dtype)
