r"""Filippov sliding on ReLU kinks: the active-set algebra of `SlidingReLU`.

The flow of the papers is the differential inclusion `d theta/dt in -dL(theta)`
(Clarke subdifferential). With `z_ij = <x_i, w_j>`, `r_i = -dl/df(x_i)` and
`c_ij = <r_i, v_j>` it reads (NeurIPS 2025, App. C.1)

    dw_j/dt = sum_i s_ij c_ij x_i,      dv_j/dt = sum_i r_i relu(z_ij),

with `s_ij = relu'(z_ij)` off the kink and any `s_ij in [leak, 1]` on it. Only the
`w`-equation depends on the choice. The solution computed here is the one that gradient
descent converges to as its step shrinks: a pair `(i, j)` whose two one-sided
velocities both point at its boundary `z_ij = 0` *slides* on it, with the `s_ij` that
keeps `dz_ij/dt = 0` (Filippov's convention). For a neuron `j` with sliding set `S_j`
this is a projection,

    dw_j/dt = (I - P_j) a_j,    a_j = sum_{i not in S_j} s_ij c_ij x_i,

where `P_j` projects onto `span{x_i : i in S_j}`; the sliding weights are
`s_ij = eta_ij / c_ij` with `eta = -G^{-1} X_S a_j`, `G = X_S X_S^T`. A pair is held while
its `s_ij` lies in `[leak, 1]` and `c_ij < 0` (an attracting boundary); it leaves to the
inactive side when `s_ij < leak` and to the active side when `s_ij > 1`.

The sliding set is part of the solver state: Diffrax commits a new solver state only
when a step is accepted, so the mode changes only between accepted steps.

Here: the field under a sliding set (`evaluate`), the update of the set at the start
of a step (`update_mode`), and the treatment of transversal crossings inside a step
(`kink_correction`, `start_crossings`). The solver is `_sliding.SlidingReLU`.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._autodiff import with_tangent
from ._batching import rare_cond
from ._crossing import (
    GATHERED,
    gather_present,
    gathering_pays,
    jointly_turned_back,
    transversal_approach,
)
from ._dataset import Dataset, transposed
from ._loss import AbstractLoss


class Field(eqx.Module):
    """The flow's quantities at one state, for a fixed sliding set."""

    dW: Float[Array, "D h"]  # projected w-velocity (the vector field)
    dV: Float[Array, "K h"]
    Z: Float[Array, "n h"]  # preactivations z_ij
    C: Float[Array, "n h"]  # c_ij = <r_i, v_j>
    A: Float[Array, "D h"]  # a_j: w-velocity of the non-sliding pairs, unprojected


class Mode(eqx.Module):
    """A sliding set in the form the vector field uses it."""

    mask: Bool[Array, "n h"]  # (i, j) slides
    xs: Float[Array, "h m D"]  # X_{S_j}, zero rows for empty slots
    ginv: Float[Array, "h m m"]  # G_j^{-1} on the used slots, zero elsewhere
    # slots on one line through the origin (`collinear`); None: weights not tied
    lines: Float[Array, "h m m"] | None = None


class SlidingState(eqx.Module):
    """Solver state of `SlidingReLU`: the sliding set and the last field evaluation.

    Counters are cumulative over accepted steps (Diffrax keeps the old state when a
    step is rejected).
    """

    idx: Int[Array, "h m"]  # sliding sample indices per neuron, -1 = empty slot
    ginv: Float[Array, "h m m"]  # inverse Gram matrices of the slots of `idx`
    lines: Float[Array, "h m m"]  # their slots on one line (`collinear`)
    field: Field  # at the current state, with the sliding set `idx` (FSAL)
    positive: Bool[Array, "n h"]  # z_ij > 0 at the start of the last accepted step
    entries: Int[Array, ""]
    exits: Int[Array, ""]
    overflow: Int[Array, ""]
    max_pairs: Int[Array, ""]
    max_per_neuron: Int[Array, ""]  # most sliding pairs of one neuron at a time
    # most pairs in one step held on their kink by the sliding samples of their
    # neuron (`held_on_kink`): 0 on generic data
    dependent: Int[Array, ""]
    mode_changes: Int[Array, ""]  # accepted steps whose sliding set changed
    started: Int[Array, ""]  # crossings started at the beginning of a step
    zdot: Float[Array, "n h"]  # <x_i, dw_j/dt> at the current state (`"locate"` only)
    located: Int[Array, ""]  # crossings located inside accepted steps (`"locate"`)
    started_entries: Int[Array, ""]  # entries started at the beginning of a step
    # smallest |dz_ij/dt| / (||x_i|| ||dw_j/dt||) at a located event (`"locate"`)
    transversality: Float[Array, ""]
    # the latest event time of each neuron, and the smallest time between two events
    # of one neuron (`"locate"`)
    last_event: Float[Array, " h"]
    event_gap: Float[Array, ""]
    # smallest |z_ij| / (||x_i|| ||w_j||) where a pair turned back towards its side
    # inside a step without crossing (`"locate"`)
    touch: Float[Array, ""]
    fresh: Bool[Array, ""]  # no step accepted yet: `field` is the one of `init`
    # the time of each neuron's first crossing corrected inside the last accepted
    # step, with its derivative, inf where none (`correct_crossings` only)
    switch_time: Float[Array, " h"]


def nonzero(dt: Array) -> Array:
    """`dt`, or 1 where it is 0, to divide by. Under `vmap`, Diffrax keeps stepping the
    runs that already reached `t1` with steps of length 0 and discards their results;
    a division by such a `dt` is discarded too, but its infinite derivative would turn
    the batch's derivatives into NaN."""
    return jnp.where(dt == 0, jnp.ones_like(dt), dt)


# A slot sample whose part outside the span of the earlier slots of its neuron has a
# squared norm below `DEPENDENT * eps` of its own is treated as dependent on them
# (float64: an angle of about 5e-7 to that span; float32: about 1e-2).
DEPENDENT = 1e3


def masked_inverse(G: Float[Array, "h m m"], used: Bool[Array, "h m"]) -> Array:
    """Generalized inverse of each neuron's Gram matrix restricted to its used slots.

    Empty slots get an identity block so that the batched inverse is well posed, then
    are zeroed. A used slot whose sample depends linearly on the earlier used slots of
    its neuron (a repeated sample, or one within rounding of their span) gets a zero
    row and column: the inverse is that of the independent slots, so the projection
    `project` is onto the span of all of them, exactly, and the coefficient `eta` it
    gives the dependent pair is 0. The box tests of the sliding weights do not read
    that split for samples on one line (copies, a sample and its negative): they tie
    those weights as the flow does (`tied_weights`). See `spd_inverse`.
    """
    outer = used[:, :, None] & used[:, None, :]
    m = G.shape[-1]
    eye = jnp.eye(m, dtype=G.dtype)
    Gm = jnp.where(outer, G, 0.0) + jnp.where(used[:, :, None], 0.0, 1.0) * eye[None]
    # A slot that no neuron uses has a zero row and column and a unit pivot: its sweep
    # would change nothing but its own diagonal entry, which is zeroed here anyway.
    inv, independent = spd_inverse(Gm, active=jnp.any(used, axis=0))
    keep = independent & used
    return jnp.where(keep[:, :, None] & keep[:, None, :], inv, 0.0)


def spd_inverse(
    A: Float[Array, "h m m"], active: Bool[Array, " m"] | None = None
) -> tuple[Array, Array]:
    """Inverses of a batch of symmetric positive semidefinite matrices, by Gauss-Jordan
    sweeps on the diagonal pivots in order (no row exchanges: a positive pivot stays
    positive, and a dependent one is skipped), and which pivots were swept.

    A pivot that has fallen to `DEPENDENT * eps` of its diagonal entry (the
    row's sample lies in the span of the rows swept before it, to rounding) is not
    swept: the result is the inverse of the block of the swept pivots (read it there
    only, the second output marks them). Sweeping such a pivot, or adding a ridge to
    make it sweepable, amplifies the rounding of the others by the inverse of that
    ratio: with three equal samples sliding on one neuron, the projected field came
    out noisy at 1e-4 of its size, and the error control took ten times the steps
    for each decade of tolerance.

    Written out in `jax.numpy` because LAPACK's pivoted factorisations, called as
    custom calls inside the integration loop, are far slower there than outside it.
    The sweeps are `m` rank-one updates of the whole batch, in a `fori_loop` (unrolled
    they run faster but compile several times slower). Pivots outside `active` (if
    given) are left as they are and not marked swept. Their sweeps are skipped
    (`rare_cond`), not computed and discarded: most slots of a small problem are
    empty, and batched, the sweeps of the empty slots took 40% of a step.
    """
    m = A.shape[-1]
    idx = jnp.arange(m)
    diag = jnp.diagonal(A, axis1=-2, axis2=-1)
    floor = DEPENDENT * jnp.finfo(A.dtype).eps * diag

    def sweep(k, carry):
        A, swept = carry
        col = jnp.take(A, k, axis=-1)
        d = jnp.take(col, k, axis=-1)[..., None]
        ok = d > jnp.take(floor, k, axis=-1)[..., None]
        d = jnp.where(ok, d, 1.0)
        u = col / d
        on = idx == k
        B = A - col[..., :, None] * u[..., None, :]
        B = jnp.where(on[:, None], u[..., None, :], B)
        B = jnp.where(on[None, :], u[..., :, None], B)
        B = jnp.where(on[:, None] & on[None, :], -1.0 / d[..., None], B)
        return jnp.where(ok[..., None], B, A), swept | (ok & on[None, :])

    def body(k, carry):
        if active is None:
            return sweep(k, carry)
        return rare_cond(active[k], lambda *c: sweep(k, c), lambda *c: c, *carry)

    # After sweeping every pivot, the swept block holds -A^{-1} of that block.
    start = (A, jnp.zeros(A.shape[:-1], bool))
    out, swept = jax.lax.fori_loop(0, m, body, start)
    return -out, swept


def collinear(G: Float[Array, "h m m"], used: Bool[Array, "h m"]) -> Array:
    """Each neuron's used slots that lie on one line through the origin, from their
    Gram matrix: `L[j, r, b] = kappa` where `x_b = kappa x_r` and `r` is the first
    used slot on that line (`L[j, b, b] = 1` for a slot alone on its line), else 0.

    Two samples are on one line when `G_rr G_bb - G_rb^2` (the squared area they
    span) is within `DEPENDENT * eps` of `G_rr G_bb`.
    """
    m = G.shape[-1]
    d = jnp.diagonal(G, axis1=-2, axis2=-1)
    outer = used[:, :, None] & used[:, None, :]
    dd = d[:, :, None] * d[:, None, :]
    line = outer & (dd - G * G <= DEPENDENT * jnp.finfo(G.dtype).eps * dd)
    first = jnp.argmax(line, axis=1)  # h x m: the first slot on each slot's line
    rep = (jnp.arange(m)[None, :, None] == first[:, None, :]) & used[:, None, :]
    rep = jax.lax.stop_gradient(rep)
    return jnp.where(rep, G / jnp.where(d > 0, d, 1.0)[:, :, None], 0.0)


def tied_weights(eta: Array, cs: Array, lines: Array | None, leak: float) -> Array:
    """The coefficients `eta` of the sliding pairs (`h x m`, with `s = eta / c` the
    sliding weights) with the weights of samples on one line tied as the flow ties
    them.

    The projection fixes only the sum of `eta x` over the slots; where samples are
    dependent, `eta` is one solution among many, and whether the pairs stay in their
    box `[leak, 1]` depends on which. For samples on one line (`x_b = kappa_b x_r`)
    the pairs' `z` are proportional, so only two regions meet at their common kink
    and the Filippov weights are those of one convex combination of them: `s_b = s_r`
    where `kappa_b > 0` (copies, scaled copies) and `s_b = 1 + leak - s_r` where
    `kappa_b < 0` (a sample and its negative). The line's total `sum kappa_b eta_b`
    is kept, which fixes `s_r`. A pair alone on its line keeps its `eta`.

    (With the split of the pivoted inverse, which gives a dependent pair `eta = 0`,
    one copy carried its group's whole weight and left the set while the group was
    inside its box (thousands of retried exits on data with copies), and a sample and
    its negative sliding on one neuron got weight 0 on the negative, so the other's
    weight left its box though a split inside it existed: the pairs left and
    re-entered sliding at every step, and on the orthogonally separable set of the
    docs with every sample's negative added the default call stopped at `max_steps`
    near `t = 0.3`.)
    """
    if lines is None:
        return eta
    on = (lines != 0).astype(eta.dtype)
    lined = jnp.sum(on, axis=-1) > 1  # first slots of lines with other used slots

    def tie(eta, cs, lines):
        total = jnp.einsum("jrb,jb->jr", lines, eta)
        den = jnp.einsum("jrb,jb->jr", jnp.abs(lines), cs)
        off = (1.0 + leak) * jnp.einsum("jrb,jb->jr", jnp.minimum(lines, 0.0), cs)
        ok = den != 0
        s_r = jnp.where(ok, (total - off) / jnp.where(ok, den, 1.0), 0.0)
        pos = (lines > 0).astype(eta.dtype)
        neg = (lines < 0).astype(eta.dtype)
        s = jnp.einsum("jrb,jr->jb", pos, s_r) + jnp.einsum(
            "jrb,jr->jb", neg, 1.0 + leak - s_r
        )
        # Tied: on a line with other used slots (a slot alone keeps its `eta` to the
        # bit).
        tied = jnp.einsum("jrb,jr->jb", on, (ok & lined).astype(eta.dtype))
        return jnp.where(tied > 0, cs * s, eta)

    # On data in general position no two used slots share a line: `eta` is kept as it
    # is, and the products above (a large part of a batched step) are skipped.
    return rare_cond(jnp.any(lined), tie, lambda *_: eta, eta, cs, lines)


# `|z_ij|` within this many `eps` of `||x_i|| ||w_j||` is zero to rounding (here and
# for the pairs on their kink at the start, `gradient_flow`).
ON_KINK = 64
# Held pairs outside the sliding set checked for lying on a line with a slot, per
# step (a fixed size keeps the check `O(size m D)`; more are rare, and not counted).
HELD_PAIRS = 16


def held_on_kink(
    Z: Array,
    W: Array,
    x: Array,
    mode: Mode,
    idx: Array,
    old: Array,
    old_idx: Array,
) -> Array:
    """How many pairs lie on their neuron's kink because their sample depends
    linearly on the samples sliding there, without being on one line with one of
    them. Counted: pairs outside the sliding set whose `z_ij` is zero to rounding
    and whose sample lies in the span of the set's samples (not those that left the
    set at this step, nor those on one line with a sample of the old or the new set;
    at most `HELD_PAIRS` of them checked), and slots dependent on the earlier ones of
    their neuron (a zero row of `ginv`) that are not tied on a line.

    Generic data has none: a kink `<x, w_j> = 0` that holds `r` independent sliding
    samples holds another sample only if it lies in their span. Exactly degenerate
    data does (points of a lattice with a constant feature, where three samples lie
    in a plane through the origin). The split of the sliding weights among such
    samples is not fixed by the projection (the field is: it does not depend on the
    split), the side of one outside the set is the rounding of its `z_ij = 0`, and
    the Filippov flow through such a point need not be unique (on a 5 x 5 lattice
    with a constant feature, gradient descent itself jumps between solutions as its
    step shrinks). `gradient_flow` reports them (`sliding_dependent`) and warns.
    Copies and negatives of a sliding sample are not counted: their weights are tied
    (`tied_weights`).
    """
    Z, W, x, xs, ginv = jax.lax.stop_gradient((Z, W, x, mode.xs, mode.ginv))
    eps = jnp.finfo(Z.dtype).eps
    xn2 = jnp.sum(x * x, axis=1)
    wn = jnp.linalg.norm(W, axis=0)
    sliding = jnp.any(mode.mask, axis=0)
    pinned = (
        ~mode.mask
        & ~old
        & (jnp.abs(Z) <= ON_KINK * eps * jnp.sqrt(xn2)[:, None] * wn[None, :])
        & (xn2 > 0)[:, None]
        & sliding[None, :]
    )

    def check():
        rows, cols = jnp.nonzero(pinned, size=HELD_PAIRS, fill_value=-1)
        valid = rows >= 0
        rows, cols = jnp.maximum(rows, 0), jnp.maximum(cols, 0)
        xb = x[rows]
        # The slots of the pair's neuron in the new set, then in the old one (a copy
        # or negative of a pair that left at this step is on its kink too).
        m = ginv.shape[-1]
        old_rows = old_idx[cols]
        old_xs = jnp.where((old_rows >= 0)[..., None], x[jnp.maximum(old_rows, 0)], 0.0)
        xr = jnp.concatenate([xs[cols], old_xs], axis=1)
        used = jnp.concatenate([idx[cols], old_rows], axis=1) >= 0
        g = jnp.einsum("pmd,pd->pm", xr, xb)
        # In the span of the new set (the part outside it within rounding: a pair
        # that left sliding a step before, tangentially, is near its kink too, but
        # free).
        coef = jnp.einsum("pmk,pk->pm", ginv[cols], g[:, :m])
        outside = xb - jnp.einsum("pmd,pm->pd", xr[:, :m], coef)
        in_span = jnp.sum(outside * outside, axis=-1) <= DEPENDENT * eps * xn2[rows]
        dd = xn2[rows][:, None] * jnp.sum(xr * xr, axis=-1)
        on_line = used & (dd - g * g <= DEPENDENT * eps * dd)
        return jnp.sum(valid & in_span & ~jnp.any(on_line, axis=1), dtype=jnp.int32)

    # (A real branch: most steps have no pair on its kink to rounding.)
    count = rare_cond(jnp.any(pinned), check, lambda: jnp.zeros((), jnp.int32))
    if mode.lines is not None:
        ginv_diag = jnp.diagonal(mode.ginv, axis1=-2, axis2=-1)
        line_diag = jnp.diagonal(mode.lines, axis1=-2, axis2=-1)
        dependent = (idx >= 0) & (ginv_diag == 0) & (line_diag != 0)
        count = count + jnp.sum(dependent, dtype=jnp.int32)
    return count


SMALL_SLOTS = 2**18  # slot samples (`h m D` numbers) always allowed: 2 MB in float64


def default_slots(n: int, D: int, h: int) -> int:
    """Default slots per neuron (`max_sliding`) for `n` samples, `D` inputs and `h`
    neurons: 32 if the slot samples take at most `SMALL_SLOTS` numbers, else as many as
    keep them within an eighth of the data (`8 h m D <= n D`, so `m = n // (8 h)`),
    clipped to `[8, 32]`; never more than `n`.

    The slot samples `X_{S_j}` (`h x m x D`) are read twice in every gradient
    evaluation (the projection), next to the two products with the data, so their size
    relative to the data sets the solver's overhead over a plain gradient. Too few
    slots cost steps instead: a pair refused a slot chatters (counted in
    `sliding_overflow`). The docs page *Sliding* has the measurements.
    """
    if h * 32 * D <= SMALL_SLOTS:
        m = 32
    else:
        m = max(8, min(32, n // max(8 * h, 1)))
    return int(max(1, min(n, m)))


def slot_mask(idx: Int[Array, "h m"], n: int) -> Bool[Array, "n h"]:
    h = idx.shape[0]
    cols = jnp.broadcast_to(jnp.arange(h, dtype=idx.dtype)[:, None], idx.shape)
    rows = jnp.where(idx >= 0, idx, jnp.asarray(n, idx.dtype))  # dropped by the scatter
    return jnp.zeros((n, h), bool).at[rows, cols].set(True, mode="drop")


def project(A: Array, xs: Array, ginv: Array) -> Array:
    """`(I - P_j) a_j` for every neuron: `a_j + X_S^T eta_j`, `eta_j = -G^{-1} X_S a_j`."""
    eta = -jnp.einsum("jmk,jk->jm", ginv, jnp.einsum("jmd,dj->jm", xs, A))
    return A + jnp.einsum("jmd,jm->dj", xs, eta)


def evaluate(
    W: Array,
    V: Array,
    data: Dataset,
    mode: Mode,
    loss: AbstractLoss,
    leak: float,
    flip: Array | None = None,
    force: tuple[Array, Array] | None = None,
) -> Field:
    """One gradient evaluation: the sliding vector field and its by-products. `flip`
    (an `n x h` mask) puts those pairs on the other side of their kink than the sign
    of `z_ij` says; `force = (mask, side)` puts the pairs of `mask` on `side`."""
    x = data.x
    Z = x @ W
    positive = Z > 0
    if flip is not None:
        positive = positive != flip
    if force is not None:
        # Pairs that just left sliding: on the side of their exit, whatever the
        # rounding of `z_ij` (zero on the kink) says.
        positive = jnp.where(force[0], force[1], positive)
    H = jnp.where(positive, Z, leak * Z)
    slope = jnp.where(positive, 1.0, leak).astype(Z.dtype)
    return of_hidden(H, slope, Z, V, data, mode, loss)


def of_hidden(
    H: Array, slope: Array, Z: Array, V: Array, data: Dataset, mode: Mode, loss
) -> Field:
    """The field from the hidden activations `H` and the `w`-slopes `slope` (the
    part of `evaluate` after the activation pattern is decided)."""
    R = loss.residual(H @ V.T, data)
    C = R @ V
    dV = R.T @ H
    A = transposed(data) @ jnp.where(mode.mask, 0.0, C * slope)
    dW = project(A, mode.xs, mode.ginv)
    return Field(dW=dW, dV=dV, Z=Z, C=C, A=A)


def empty_mode(n: int, h: int, m: int, D: int, dtype) -> Mode:
    return Mode(
        mask=jnp.zeros((n, h), bool),
        xs=jnp.zeros((h, m, D), dtype),
        ginv=jnp.zeros((h, m, m), dtype),
        lines=jnp.zeros((h, m, m), dtype),
    )


def _in_box(eta: Array, cs: Array, leak: float, tol: float) -> Array:
    """Slots whose sliding weight `s = eta / c` lies in `[leak, 1]` (to `tol`) with
    `c < 0`: the test of the joint check, for entering and for staying."""
    s = eta / jnp.where(cs < 0, cs, -1.0)
    return (cs < 0) & (s >= leak - tol) & (s <= 1.0 + tol)


def candidates(state: SlidingState) -> tuple[Array, Array]:
    """The current sliding pairs (`n x h` mask) and the candidates to enter: pairs
    whose `z_ij` changed sign over the last accepted step with `c_ij < 0`."""
    f = state.field
    old = slot_mask(state.idx, f.Z.shape[0])
    cand = ((f.Z > 0) != state.positive) & ~old & (f.C < 0)
    return old, cand


def could_enter(
    f: Field, x: Array, leak: float, tol: float, zdot: Array | None = None
) -> Array:
    """Pairs `(i, j)` that pass a necessary condition for entering the sliding set of
    neuron `j` (joined to its current sliding pairs).

    Adding pair `i` to the sliding set `S_j` gives it the weight (Schur complement of
    the Gram matrix of `S_j + {i}`)

        s_ij = slope_ij - zdot_ij / (c_ij |x~_i|^2),

    where `zdot_ij = <x_i, dw_j/dt>` is the velocity of `z_ij` under the current field
    and `x~_i` is `x_i` minus its projection on `span{x_k : k in S_j}`. With `c_ij < 0`
    and `0 < |x~_i| <= |x_i|`, `s_ij in [leak, 1]` needs `zdot_ij` between `0` and
    `-(1 - leak) c_ij |x_i|^2` on the inactive side and between `(1 - leak) c_ij
    |x_i|^2` and `0` on the active side: the boundary must attract from the side the
    pair is on, and not too fast. A pair that crosses its kink transversally fails it,
    which spares the active-set update in most steps with crossings. One matrix
    product (`X dW`), unless `zdot` is given.
    """
    if zdot is None:
        zdot = x @ f.dW
    bound = (1.0 - leak) * jnp.abs(f.C) * jnp.sum(x * x, axis=1)[:, None]
    slack = tol * bound
    inactive = (zdot >= -slack) & (zdot <= bound + slack)
    active = (zdot <= slack) & (zdot >= -bound - slack)
    return jnp.where(f.Z > 0, active, inactive)


QP_SWEEPS = 64  # projected Gauss-Seidel sweeps of `update_mode`'s fallback


def update_mode(
    state: SlidingState,
    old: Array,
    cand: Array,
    x: Array,
    leak: float,
    iterations: int,
    tol: float,
) -> tuple[Array, Mode, Field, dict[str, Array]]:
    """Decide the sliding set at the start of a step, from the stored evaluation.

    Candidates to enter (`cand`, see `candidates`), together with the current sliding
    pairs (`old`), are checked jointly
    for `s_ij in [leak, 1]`, dropping the failures and re-checking (an active-set
    iteration for the neuron's box-constrained least-squares problem). Everything works
    on the `m x m` Gram matrices of the slots; no `n x n` matrix is formed.

    Returns the new slot indices, the mode, the first stage under that mode (from the
    stored evaluation: no new gradient evaluation), counters, and the pairs that left
    sliding to the active side (weight past 1 in the round that dropped them; an
    `n x h` mask). The first stage counts a pair that left by the rounding of its
    `z_ij`; `exit_sides` puts it on the side of its exit.
    """
    f = state.field
    n, h = f.Z.shape
    m = state.idx.shape[1]
    # Slots: the current sliding pairs keep theirs; candidates fill the free ones in
    # sample order (a rank by cumulative sums and one scatter, O(n h), where a sort of
    # all pairs by priority would cost more than the step on large data). Candidates
    # beyond the free slots stay regular this step (counted as `overflow`).
    rows = jnp.arange(h)[:, None]
    free = state.idx < 0
    free_rank = jnp.cumsum(free, axis=1) - 1
    slot_ids = jnp.broadcast_to(jnp.arange(m, dtype=state.idx.dtype), (h, m))
    free_pos = jnp.full((h, m), m, state.idx.dtype)
    free_pos = free_pos.at[rows, jnp.where(free, free_rank, m)].set(slot_ids, mode="drop")
    candT = cand.T
    crank = jnp.cumsum(candT, axis=1) - 1
    target = jnp.take_along_axis(free_pos, jnp.clip(crank, 0, m - 1), axis=1)
    target = jnp.where(candT & (crank < m), target, m)
    samples = jnp.broadcast_to(jnp.arange(n, dtype=state.idx.dtype), (h, n))
    idx = state.idx.at[rows, target].set(samples, mode="drop")
    slot = idx >= 0
    overflow = jnp.sum(cand) - (jnp.sum(slot) - jnp.sum(state.idx >= 0))
    idx = jnp.maximum(idx, 0)  # empty slots point at sample 0, masked by `slot`
    xs = jnp.where(slot[..., None], x[idx], 0.0)
    cs = jnp.take_along_axis(f.C.T, idx, axis=1)
    zs = jnp.take_along_axis(f.Z.T, idx, axis=1)
    slope = jnp.where(zs > 0, 1.0, leak).astype(zs.dtype)
    was = jnp.take_along_axis(old.T, idx, axis=1) & slot
    # a_j over all pairs (nothing excluded), from the stored a_j and the old slots.
    a_full = f.A + jnp.einsum("jmd,jm->dj", xs, jnp.where(was, cs * slope, 0.0))
    G = jnp.einsum("jmd,jkd->jmk", xs, xs)
    q_full = jnp.einsum("jmd,dj->jm", xs, a_full)

    # The set is a discrete decision: taken on values with their derivatives stopped
    # (a `while_loop` cannot be reverse-differentiated, and the set has no derivative);
    # the inverse of the chosen set is then formed outside the loop, differentiably.
    G_d, q_d, c_d, slope_d = jax.lax.stop_gradient((G, q_full, cs, slope))

    def weights(used, side, ginv):
        # A sliding pair that a round drops counts in the next rounds on the side it
        # leaves to (`side`: active past the weight 1, inactive below `leak`), not on
        # the side the rounding of its `z_ij = 0` puts it: counted on the wrong side,
        # a pair leaving to the active side moved its neighbours' weights by the whole
        # of its term and dropped them too (on MNIST, a weight of 0.64 read as 1.23).
        w = c_d * (slope_d - jnp.where(used, 0.0, side))
        q = q_d - jnp.einsum("jmk,jk->jm", G_d, w)
        return tied_weights(
            -jnp.einsum("jmk,jk->jm", ginv, q), c_d, collinear(G_d, used), leak
        )

    def check(used, side, ginv):
        eta = weights(used, side, ginv)
        kept = used & _in_box(eta, c_d, leak, tol)
        # (A dropped pair with `c < 0` has its weight outside `[leak, 1]`.)
        s = eta / jnp.where(c_d < 0, c_d, -1.0)
        gone = used & ~kept & was & (c_d < 0)
        side = jnp.where(gone, jnp.where(s > 1.0, 1.0, leak), side)
        return kept, side

    # Up to `iterations` rounds of (inverse, check), stopping at a fixed point: the
    # set a round keeps is the set it checked, so later rounds change nothing. Usually
    # one or two rounds.
    def body(carry):
        k, used, side, _ = carry
        kept, side = check(used, side, masked_inverse(G_d, used))
        done = jnp.all(kept == used)
        return k + 1, jnp.where(done, used, kept), side, done

    def more(carry):
        k, _, _, done = carry
        return ~done & (k < iterations)

    def rounds(used, side):
        start = (jnp.zeros((), jnp.int32), used, side, jnp.zeros((), bool))
        _, used, side, _ = jax.lax.while_loop(more, body, start)
        return used, side

    used, side = rounds(slot, slope_d)
    # The rounds drop every pair out of its box at once, and never take one back: a
    # neuron's decision can leave out a pair whose kink attracts from both sides
    # (rank-4 data: a pair reaching its kink next to a sliding one put both weights
    # out, -1.1 and 2.3; both were dropped, the first crossed where it should have
    # entered, and the solver retried steps ever closer to it). The weights solve a
    # box-constrained quadratic programme: minimise `eta G eta / 2 + b eta` with
    # `s = eta / c` in `[leak, 1]`, whose gradient `b + G eta` is the velocity of the
    # slots' `z` (up to positive factors). A pair left out whose `z` would move down
    # at `s = 1` and up at `s = leak` is attracted from both sides: where the rounds
    # left one, the programme is solved (projected Gauss-Seidel, from the rounds'
    # weights; Optimistix and Lineax have no bound-constrained solver) and the rounds
    # run again from its interior set.
    part = slot & (c_d < 0)
    lo = c_d * (1.0 + tol)
    hi = c_d * (leak - tol)
    b = q_d - jnp.einsum("jmk,jk->jm", G_d, c_d * slope_d)
    diag = jnp.diagonal(G_d, axis1=1, axis2=2)

    eta = jnp.where(used, weights(used, side, masked_inverse(G_d, used)), c_d * side)
    v = b + jnp.einsum("jmk,jk->jm", G_d, eta)
    # The velocity at either bound of the pair's own weight.
    v_up = v + diag * (c_d - eta)
    v_down = v + diag * (leak * c_d - eta)
    slack = tol * jnp.abs(c_d) * diag
    attracted = part & ~used & (v_up < -slack) & (v_down > slack)
    wrong = jnp.any(attracted, axis=1)

    def solved():
        inv_diag = 1.0 / jnp.where(diag > 0, diag, 1.0)

        def sweep(_, e):
            def one(k, e):
                g = b[:, k] + jnp.einsum("jm,jm->j", G_d[:, k, :], e)
                new = jnp.clip(e[:, k] - g * inv_diag[:, k], lo[:, k], hi[:, k])
                return e.at[:, k].set(jnp.where(part[:, k], new, e[:, k]))

            return jax.lax.fori_loop(0, m, one, e)

        e = jax.lax.fori_loop(
            0, QP_SWEEPS, sweep, jnp.where(part, jnp.clip(eta, lo, hi), eta)
        )
        inner = part & (e > lo) & (e < hi)
        # (Pairs at a bound: sliding pairs leave to it; candidates stay on their side.)
        side_qp = jnp.where(was & part & (e <= lo), 1.0, slope_d)
        side_qp = jnp.where(was & part & (e >= hi), leak, side_qp).astype(slope_d.dtype)
        used_qp, side_qp = rounds(inner, side_qp)
        pick = wrong[:, None]
        return jnp.where(pick, used_qp, used), jnp.where(pick, side_qp, side)

    used, side = rare_cond(jnp.any(wrong), solved, lambda: (used, side))
    ginv = masked_inverse(G, used)
    new_idx = jnp.where(used, idx, -1)
    mask = slot_mask(new_idx, n)
    mode = Mode(
        mask=mask,
        xs=jnp.where(used[..., None], xs, 0.0),
        ginv=ginv,
        lines=collinear(G, used),
    )
    A = a_full - jnp.einsum("jmd,jm->dj", mode.xs, jnp.where(used, cs * slope, 0.0))
    first = Field(dW=project(A, mode.xs, ginv), dV=f.dV, Z=f.Z, C=f.C, A=A)
    entries = jnp.sum(used & ~was)
    exits = jnp.sum(old) - jnp.sum(used & was)
    counters = dict(entries=entries, exits=exits, overflow=overflow)
    above = pairs_of(idx, slot & was & ~used & (c_d < 0) & (side == 1.0), n)
    return new_idx, mode, first, counters, above


def slots_of(idx: Int[Array, "h m"], x: Array) -> Array:
    """`X_{S_j}` of each neuron's slots, zero rows for empty slots."""
    return jnp.where((idx >= 0)[..., None], x[jnp.maximum(idx, 0)], 0.0)


def mode_holds(
    state: SlidingState, cand: Array, xs: Array, leak: float, tol: float
) -> Array:
    """Whether the sliding set stays as it is at the start of this step: no pair
    changed sign over the last step (no candidate to enter) and every sliding pair
    still has `s_ij in [leak, 1]` and `c_ij < 0` (none exits).

    The usual case by far; the stored Gram inverses and evaluation are then reused,
    and the active-set update (slot assignment, the Gram matrices of the slots and
    their factorisations) is skipped.
    """
    used = state.idx >= 0
    eta, cs = slot_weights(state.ginv, xs, state.lines, state.idx, state.field, leak)
    return ~jnp.any(cand) & jnp.all(_in_box(eta, cs, leak, tol) | ~used)


def slot_weights(ginv, xs, lines, idx, f: Field, leak: float) -> tuple[Array, Array]:
    """`(eta, c)` of each slot under a fixed sliding set: the coefficients of the
    projection (weights of samples on one line tied, `tied_weights`) and the slots'
    `c_ij`. `A` excludes the sliding pairs, so `X_S A` is the `q` of the active-set
    check."""
    cs = jnp.take_along_axis(f.C.T, jnp.maximum(idx, 0), axis=1)
    eta = -jnp.einsum("jmk,jk->jm", ginv, jnp.einsum("jmd,dj->jm", xs, f.A))
    return tied_weights(eta, cs, lines, leak), cs


def kink_correction(
    fields: list[Field],
    mode: Mode,
    x: Array,
    dt: Array,
    leak: float,
    tab: diffrax.ButcherTableau,
    error: str,
    started: Array | None = None,
) -> tuple[Array, Array]:
    """Jump correction for the pairs that cross their kink transversally in a step.

    In the `w`-equation the only discontinuous factor is the indicator `1[z_ij > 0]`
    of `s_ij`; `c_ij` and the `v`-equation are continuous. The Runge-Kutta combination
    integrates it as `sum_s b_s 1[z_ij(Y_s) > 0] c_ij(Y_s)`, a first-order quadrature
    of a step function. For each pair whose start-side velocity reaches `z_ij = 0`
    within the step, the crossing fraction `tau` is extrapolated from the start
    (`z_ij` is exactly linear between the first two stages of an explicit method, so
    its start velocity costs nothing), `c_ij` is interpolated linearly between the
    first and the last evaluated stage, and the difference between the exact integral
    of the indicator term under that model and the RK quadrature is added to `w_j`
    (projected like the field, so sliding constraints stay exact). Diffrax has no
    discontinuity handling inside a step, hence this by hand.

    `fields` are the evaluated stages except the last (first same as last) one.
    Returns the correction of `W(y1)` and of the error estimate (`error="smooth"`:
    the same correction with the embedded weights, so the estimate measures the
    smooth part; `"full"`: unchanged).
    """
    S = len(fields)  # stages used by y1 (the last, FSAL, stage has b = 0)
    b = np.asarray(tab.b_sol)
    f0 = fields[0]
    z0, c0 = f0.Z, f0.C
    a21 = float(np.asarray(tab.a_lower[0])[0])
    zdot = (fields[1].Z - z0) / (a21 * nonzero(dt))  # dz/dt at the start, exact
    on = z0 > 0
    toward = jnp.where(on, zdot < 0, zdot > 0)
    safe = jnp.where(toward, zdot, 1.0)
    tau = jnp.where(toward, -z0 / (safe * nonzero(dt)), jnp.inf)
    cross = toward & (tau < 1) & ~mode.mask
    if started is not None:  # started at the beginning of the step: nothing to correct
        cross = cross & ~started
    tau = jnp.clip(jnp.where(cross, tau, 0.0), 0.0, 1.0)
    c_last = float(np.asarray(tab.c)[S - 2])  # abscissa of fields[-1]
    slope_c = (fields[-1].C - c0) / c_last
    # exact integral over [0, 1] of 1[active] c(theta) under the linear model of c
    I_off = c0 * tau + slope_c * tau**2 / 2  # active before tau
    I_on = c0 * (1 - tau) + slope_c * (1 - tau**2) / 2  # active after tau
    exact = jnp.where(on, I_off, I_on)
    rk = sum(float(b[k]) * jnp.where(f.Z > 0, f.C, 0.0) for k, f in enumerate(fields))
    delta = jnp.where(cross, (1 - leak) * (exact - rk), 0.0)
    if error == "smooth":
        # The embedded solution's quadrature of the same term, with the last stage
        # (at the corrected y1) on the far side of the crossing at theta = 1.
        b_err = np.asarray(tab.b_error)
        e = sum(
            float(b_err[k]) * jnp.where(f.Z > 0, f.C, 0.0) for k, f in enumerate(fields)
        )
        e = e + float(b_err[S]) * jnp.where(on, 0.0, c0 + slope_c)
        both = x.T @ jnp.concatenate([delta, -(1 - leak) * jnp.where(cross, e, 0.0)], 1)
        h = delta.shape[1]
        dA, eA = both[:, :h], both[:, h:]
        return dt * project(dA, mode.xs, mode.ginv), dt * project(eA, mode.xs, mode.ginv)
    dA = x.T @ delta
    return dt * project(dA, mode.xs, mode.ginv), jnp.zeros_like(dA)


STARTED_PAIRS = 64  # started crossings per step handled as sparse rank-one updates


def pair_sum(mask: Array, coef: Array, x: Array, size: int = STARTED_PAIRS) -> Array:
    """`sum_{(i, j) in mask} coef_ij x_i e_j^T` for each of the `c` columns of `coef`
    (`n x h x c`): shape `c x D x h`.

    Started crossings are few per step (a handful among the `n h` pairs), so they are
    gathered and scattered (`O(size D)`) instead of a dense product with the data
    (`O(n D h)`); more than `size` pairs take the dense product.
    """
    n, h = mask.shape
    size = min(size, mask.size)
    c = coef.shape[-1]
    count = jnp.sum(mask)

    def sparse():
        i, j = jnp.nonzero(mask, size=size, fill_value=0)
        valid = jnp.arange(size) < count
        vals = jnp.where(valid[:, None], coef[i, j], 0.0)  # size x c
        update = vals.T[:, None, :] * x[i].T[None, :, :]  # c x D x size
        return jnp.zeros((c, x.shape[1], h), coef.dtype).at[:, :, j].add(update)

    def dense():
        return jnp.einsum("nd,nhc->cdh", x, jnp.where(mask[..., None], coef, 0.0))

    return rare_cond(count > size, dense, sparse)


class Started(eqx.Module):
    """Crossings started at the beginning of a step (see `start_crossings`)."""

    mask: Bool[Array, "n h"]
    near: Bool[Array, "n h"]  # z_ij > 0 at the start (the side being left)
    coef: Float[Array, "n h"]  # (near - far slope) c_ij on started pairs, else 0
    tau: Float[Array, "n h"]  # crossing fraction of the step on started pairs, else 0
    correction: Float[Array, "D h"]  # of y1: the near-side part, integrated exactly
    error: Float[Array, "D h"]  # of the error estimate: what the correction misses


def start_crossings(
    first: Field,
    mode: Mode,
    x: Array,
    dt: Array,
    leak: float,
    window: float,
    zdot: Array | None = None,
    only: Array | None = None,
) -> tuple[Field, Started]:
    """Evaluate the step on the far side of the kink for the pairs whose crossing is
    imminent, and integrate the part before the crossing exactly.

    A non-sliding pair whose start velocity `zdot_ij = <x_i, dw_j/dt>` reaches its
    kink within the fraction `window` of the step (at `tau dt`), and whose velocity on
    the far side (`zdot_ij -+ (1 - leak) c_ij |x_i|^2`, without the projection) keeps
    it going (a transversal crossing, not a sliding candidate), is treated as crossed
    from the start of the step: every stage sees the far side, and the near-side part
    `tau dt (1 -+ leak) c_ij x_i` (with `c_ij` frozen) is added to `y1`, so the
    crossing's local error is `O((tau dt)^2)` (`CrossingController` ends the previous
    step just before the crossing). `tau^2` times the jump goes to the error estimate.

    Costs one product `X dW` (unless `zdot` is given) and, in steps that start
    crossings, one sparse update. `only` (a mask) restricts the started pairs.
    """
    if zdot is None:
        zdot = x @ first.dW
    near, toward = transversal_approach(first.Z, zdot, first.C, x, leak)
    tau = jnp.where(
        toward, -first.Z / (jnp.where(toward, zdot, 1.0) * nonzero(dt)), jnp.inf
    )
    mask = toward & (tau < window) & ~mode.mask
    mask = mask & ~jointly_turned_back(mask, near, zdot, first.C, x, leak)
    if only is not None:
        mask = mask & only
    tau = jnp.where(mask, tau, 0.0)
    coef = jnp.where(mask, jnp.where(near, 1.0 - leak, leak - 1.0) * first.C, 0.0)
    D, h = first.A.shape

    def with_starts():
        stacked = jnp.stack([-coef, coef * tau, coef * tau * tau], axis=-1)
        flip, corr, err = pair_sum(mask, stacked, x)
        A = first.A + flip
        proj = lambda a: project(a, mode.xs, mode.ginv)  # noqa: E731
        return A, proj(A), dt * proj(corr), dt * proj(err)

    def without():
        zero = jnp.zeros((D, h), first.A.dtype)
        return first.A, first.dW, zero, zero

    A, dW, correction, error = rare_cond(jnp.any(mask), with_starts, without)
    first = Field(dW=dW, dV=first.dV, Z=first.Z, C=first.C, A=A)
    started = Started(
        mask=mask, near=near, coef=coef, tau=tau, correction=correction, error=error
    )
    return first, started


def started_second_order(
    started: Started,
    near_field: Field,
    W: Array,
    V: Array,
    data: Dataset,
    mode: Mode,
    loss: AbstractLoss,
    leak: float,
    zdot: Array,
    dt: Array,
) -> tuple[Array, Array]:
    r"""Zero `(dW, dV)` whose derivative completes that of a started crossing's shift
    to first order in `tau dt` (`with_tangent`: nothing is computed unless something
    is differentiated).

    A crossing of pair `p = (i, j)` at `t = s` after the step's start (`s = tau dt`)
    moves the start of the far-side flow to `phi_f(-s, phi_n(s, theta))`. Expanded at
    the step's start (`f_n`, `f_f` the near and far pieces of the field, `J` their
    Jacobians, `delta = f_n - f_f`), and with the crossing time to second order, that
    is `theta + s delta_p + s^2 / 2 M_p + O(s^3)` with

        M_p = -sigma zdot d f / d h_ij + (d coef / dt) x_i e_j - J_f delta_p
              - (zddot / zdot) delta_p,

    where `delta_p = coef x_i e_j` is the jump of the `w`-field, `sigma` the change of
    slope across the kink (the pieces also differ through `h_ij = slope z_ij`, which
    is first order in `s`), and `zdot`, `zddot` the near-side velocity and
    acceleration of `z_ij`. The solver adds `s delta_p` (`Started.correction`); the
    rest is second order in value and within the step's error budget, but its
    derivative, `s ds M_p`, is first order, and through `ds = -dz / zdot` it can be
    large: without it the derivatives of a flow with many started crossings were off
    by up to 2e-4 at the default tolerance (docs page *Differentiating the flow*).
    Pairs are treated one at a time (products `s_p s_q` of two started pairs are left
    out). Costs three Jacobian-vector products of the field, only in steps that start
    a crossing and only under differentiation.
    """
    num_classes = data.num_classes
    diff = (started.tau * dt,)
    const = (
        W,
        V,
        data.x,
        data.y,
        near_field.dW,
        near_field.dV,
        zdot,
        started.coef,
        started.mask,
        started.near,
        mode.mask,
        mode.xs,
        mode.ginv,
    )

    def fn(s, W, V, *rest):
        def none(*_):
            return jnp.zeros_like(W), jnp.zeros_like(V)

        mask = rest[6]
        return rare_cond(jnp.any(mask), terms, none, s, W, V, *rest)

    def terms(s, W, V, x, y, fdW, fdV, zdot, coef, mask, near, held, xs, ginv):
        d = Dataset(x, y, num_classes)
        m = Mode(held, xs, ginv)
        half = jnp.where(mask, 0.5 * s * s, 0.0)
        sigma = jnp.where(near, 1.0 - leak, leak - 1.0)
        # Near piece along the flow: the rate of `c_ij` and the acceleration of `z_ij`.
        _, rate = jax.jvp(lambda W, V: evaluate(W, V, d, m, loss, leak), (W, V), (fdW, fdV))
        zddot = x @ rate.dW
        safe = jnp.where(mask, zdot, 1.0)
        along = half * (sigma * rate.C - coef * zddot / safe)
        dW = project(pair_sum(mask, along[..., None], x)[0], xs, ginv)
        # The far piece along the jumps.
        jumps = project(pair_sum(mask, (half * coef)[..., None], x)[0], xs, ginv)
        _, far = jax.jvp(
            lambda W: evaluate(W, V, d, m, loss, leak, force=(mask, ~near)),
            (W,),
            (jumps,),
        )
        # The field's dependence on the hidden activations `h_ij`, with the slopes of
        # the far side (the pieces differ by `h_ij` at the `w`-slopes after the jump).
        Z = x @ W
        positive = Z > 0
        slope = jnp.where(positive != mask, 1.0, leak).astype(Z.dtype)

        hidden = jnp.where(mask, -sigma * zdot * half, 0.0)
        _, h = jax.jvp(
            lambda H: of_hidden(H, slope, Z, V, d, m, loss),
            (jnp.where(positive, Z, leak * Z),),
            (hidden,),
        )
        return dW - far.dW + h.dW, h.dV - far.dV

    return with_tangent((jnp.zeros_like(W), jnp.zeros_like(V)), fn, diff, const)


def unfinished_error(started: Started, z1: Array, mode: Mode, x: Array, dt: Array) -> Array:
    """Error estimate of a step for started pairs still on the near side at its end:
    they approached their kink without reaching it (on orthogonally separable data a
    pair ends on its boundary like that), so the whole step had the wrong field for
    them. Their jump over the whole step is added, so that the step is rejected and
    retried shorter, where the pair is no longer started."""
    unfinished = started.mask & ((z1 > 0) == started.near)
    D, h = started.correction.shape

    def error():
        coef = (started.coef * (1.0 - started.tau**2))[..., None]
        e = pair_sum(unfinished, coef, x)[0]
        return dt * project(e, mode.xs, mode.ginv)

    return rare_cond(
        jnp.any(unfinished), error, lambda: jnp.zeros((D, h), started.correction.dtype)
    )


def hermite_roots(
    z0: Array, z1: Array, m0: Array, m1: Array, iterations: int = 12
) -> Array:
    """The root in `[0, 1]` of each cubic Hermite interpolant `p` with `p(0) = z0`,
    `p(1) = z1`, `p'(0) = m0`, `p'(1) = m1`, for pairs whose `z0` and `z1` have
    opposite signs (elsewhere the result is meaningless).

    `z_ij = <x_i, w_j>` is linear in `W`, so the values and velocities of `z` at both
    ends of a step (`m = dt zdot`) give its cubic interpolant on the step without a new
    gradient evaluation. The root is found by the Illinois variant of regula falsi,
    bracketed by `[0, 1]` (elementwise, a fixed number of iterations: no data-dependent
    control flow, so it runs under `jit` and `vmap`), which converges superlinearly.
    """

    def p(t):
        return _hermite(t, z0, m0, z1, m1)

    a = jnp.zeros_like(z0)
    b = jnp.ones_like(z0)
    fa, fb = z0, z1
    side = jnp.zeros(z0.shape, jnp.int32)

    def body(_, carry):
        a, b, fa, fb, side = carry
        denom = fb - fa
        c = jnp.where(
            denom != 0, (a * fb - b * fa) / jnp.where(denom != 0, denom, 1.0), 0.5 * (a + b)
        )
        c = jnp.clip(c, a, b)
        fc = p(c)
        left = (fc > 0) == (fa > 0)  # the root lies in [c, b]
        # Illinois: halve the value of the end point kept twice in a row.
        a_new = jnp.where(left, c, a)
        b_new = jnp.where(left, b, c)
        fa_new = jnp.where(left, fc, jnp.where(side == -1, 0.5 * fa, fa))
        fb_new = jnp.where(left, jnp.where(side == 1, 0.5 * fb, fb), fc)
        side_new = jnp.where(left, 1, -1).astype(side.dtype)
        return a_new, b_new, fa_new, fb_new, side_new

    # Unrolled: the iterations are elementwise, and XLA fuses them into a few kernels
    # (as a loop, each iteration's dozen small kernels cost a fifth of a step, twice
    # over in reverse mode, on a small separable problem).
    a, b, fa, fb, _ = jax.lax.fori_loop(
        0, iterations, body, (a, b, fa, fb, side), unroll=True
    )
    denom = fb - fa
    return jnp.where(denom != 0, (a * fb - b * fa) / jnp.where(denom != 0, denom, 1.0), a)


def return_roots(z1: Array, m0: Array, m1: Array, above: Array) -> Array:
    """The time (fraction of the step) at which a pair that left its kink at the
    step's start, to the side `above` (the active side, else the inactive one), is
    back on its kink: the root in `(0, 1]` of its cubic Hermite interpolant `p` with
    `p(0) = 0`, `p'(0) = m0`, `p(1) = z1` (on the other side), `p'(1) = m1`.

    `p(t) = t q(t)` with `q(t) = m0 + b t + c t^2` quadratic (`b = 3 z1 - 2 m0 -
    m1`, `c = m0 + m1 - 2 z1`), so the root is `q`'s, in closed form (the stable
    quadratic formula; an iteration from `q(0) = 0`, a pair leaving at zero speed,
    would start at its other root). With `q` on the exit side at 0 and on the other
    at 1 it has one root in `(0, 1)`; leaving at zero speed, the larger of 0 and the
    other; `0` where `m0` points back (the pair returns at once)."""
    sign = jnp.where(above, 1.0, -1.0).astype(z1.dtype)
    q0 = jnp.maximum(sign * m0, 0.0)
    b = sign * (3.0 * z1 - 2.0 * m0 - m1)
    c = sign * (m0 + m1 - 2.0 * z1)
    disc = jnp.maximum(b * b - 4.0 * c * q0, 0.0)
    qq = -0.5 * (b + jnp.where(b >= 0, 1.0, -1.0) * jnp.sqrt(disc))
    r1 = qq / jnp.where(c != 0, c, 1.0)
    r1 = jnp.where(c != 0, r1, -1.0)
    r2 = q0 / jnp.where(qq != 0, qq, 1.0)
    r2 = jnp.where(qq != 0, r2, -1.0)
    ok1 = (r1 >= 0.0) & (r1 <= 1.0)
    ok2 = (r2 >= 0.0) & (r2 <= 1.0)
    root = jnp.maximum(jnp.where(ok1, r1, 0.0), jnp.where(ok2, r2, 0.0))
    return jax.lax.stop_gradient(root)


EVENT_PAIRS_IN = 256  # crossings inside a step whose times are moved jointly
SECOND_PAIRS = 32  # ... and with their shifts projected like the field


def slope_switch(Z0: Array, leak: float) -> Array:
    """What a crossing from the side of `Z0` adds to its pair's `w`-slope: the slope
    after minus the slope before (`1 - leak` upwards, `leak - 1` downwards)."""
    return jnp.where(Z0 > 0, leak - 1.0, 1.0 - leak)


def crossing_times(
    crossed,
    th,
    Z0,
    Z1,
    m0,
    m1,
    C0,
    C1,
    jsign,
    x,
    dt,
    projection=None,
    after=None,
    size=EVENT_PAIRS_IN,
):
    """The crossing times `th` (located on the near-side interpolant of each `z`)
    moved by the earlier crossings of the same neuron: each adds `G_k = +-(1 -
    leak) int_{t_k}^t c_k` (times `x_k`, projected like the field) to `w_j` from its
    time on, which moves `z_l` by `<x_l, G_k>`: Newton steps on the near-side cubic
    of each `z` plus its shift, on the gathered crossings (up to `size`; beyond that
    the times are left as located). Returns the times, the crossed pairs less those
    that the crossings before them hold back (see below) and those turned back at
    their kink (entries: at the moved time the far side, with the earlier crossings
    switched, pushes the pair back), the turned-back pairs, and `after(i, j, valid,
    t, gram)` of the gathered crossings (or zeros).

    Up to `SECOND_PAIRS` crossings in the step, `<x_l, x_k>` is projected like the
    field (`projection = (idx, ginv)`, the neurons' sliding slots: a sliding pair of
    the neuron changes the direction of `G_k`; on MNIST-60 a crossing 35% of a step
    after another of its neuron, whose neuron slid on a third sample, was placed
    3e-3 of the step late, for an error of 1.6 times the tolerance), from the
    products of the data with the gathered samples. Beyond that, without the
    projection. (The shifts' second-order part, through the field's response to
    the earlier crossings, was 1e-10 of the first-order one where measured: left
    out.)

    The times carry their derivatives by the implicit function theorem on the same
    equations, `F_l(t_l; state, t_k) = 0`: `dt_l = -(dF_l + sum_k dF_l/dt_k dt_k) /
    F_l'`, the earlier crossings' `dt_k` included (three sweeps, like the values).
    Through the step's correction (`inside_crossings`) they give each crossing's
    jump term, carried to the end of the step."""
    count = jnp.sum(crossed)
    size = min(size, crossed.size)
    small = min(SECOND_PAIRS, size)
    n = crossed.shape[0]

    def no_after():
        return jnp.zeros_like(Z0), jnp.zeros_like(Z0)

    def turned_back(slope, js, c, gram_ll):
        # Pairs that their own jump turns back at their crossing: the velocity on
        # the far side, `slope + s c <x_l, P x_l>` (`slope` in step fractions, with
        # the earlier crossings' shift where given), points back to the kink, and
        # the near side's points to it. They slide from there (both sides
        # attract).
        far = slope + dt * js * c * gram_ll
        return (slope != 0) & (jnp.sign(far) != jnp.sign(slope))

    def located():
        # (Beyond `size` crossings: the near-side roots and their derivatives, and
        # the own jumps unprojected.)
        slope = hermite_slope(th, Z0, m0, Z1, m1)
        c = C0 + (C1 - C0) * th
        turned = crossed & turned_back(slope, jsign, c, jnp.sum(x * x, axis=1)[:, None])
        return event_times(Z0, Z1, m0, m1, th), crossed & ~turned, turned, no_after()

    def shifted(size, exact):
        i, j = jnp.nonzero(crossed, size=size, fill_value=0)
        valid = jnp.arange(size) < count
        # Other crossings of the same neuron.
        same = (j[:, None] == j[None, :]) & valid[:, None] & valid[None, :]
        same = same & ~jnp.eye(size, dtype=bool)
        js = jsign[i, j]

        # (With the projection: the slots' samples and inverse Gram matrices.)
        proj = () if projection is None or not exact else tuple(projection)

        def gram_of(x, i, j, *proj):
            # `<x_l, P_j x_k>`: the products of the gathered samples, projected on
            # the neuron of `k` (`P_j` removes its sliding samples' span: `X_S^T
            # G^{-1} X_S`, from the same products with the slots' samples).
            if not exact:
                return x[i] @ x[i].T
            A = x @ x[i].T
            gram = A[i]
            if proj:
                idx, ginv = proj
                slots = jnp.where(idx[j] >= 0, idx[j], 0)  # (k, a)
                U = A[slots]  # (k, a, l): <x_{S_j_k, a}, x_l>
                w = jnp.take_along_axis(U, jnp.arange(size)[:, None, None], axis=2)[..., 0]
                gw = jnp.einsum("kab,kb->ka", ginv[j], w)
                gram = gram - jnp.einsum("kal,ka->lk", U, gw)
            return gram

        gram0 = jax.lax.stop_gradient(gram_of(x, i, j, *proj))

        def equations(t_other, t, Z0, Z1, m0, m1, C0, C1, gram, dt, i, j, same, js):
            # `F_l` (the near-side cubic of `z_l` plus the shift by the neuron's
            # crossings before it) at the times `t`, with those crossings at
            # `t_other`, and its slope in `t`. Which crossings come before which is
            # read from the values of `t` alone: crossings of one neuron at the same
            # instant (samples on one ray) do not shift each other, in value or
            # derivative.
            z0, z1, s0, s1 = Z0[i, j], Z1[i, j], m0[i, j], m1[i, j]
            t_value = jax.lax.stop_gradient(t)
            before = t_value[:, None] > t_value[None, :]
            K = jnp.where(same & before, gram, 0.0) * js[None, :]
            # `w_j` gains `int_{t_k}^t c_k` (times `+-(1 - leak) x_k`), `c_k` linear
            # in the step (frozen at `t_k`, a crossing 35% of a step after another
            # of its neuron was placed 1.1e-3 of the step early on the `ncjax run`
            # problem, for an error of 5.7 times the tolerance).
            c0, dc = C0[i, j][None, :], (C1[i, j] - C0[i, j])[None, :]
            tl, tk = t[:, None], t_other[None, :]
            dz = dt * jnp.sum(K * (c0 * (tl - tk) + 0.5 * dc * (tl * tl - tk * tk)), axis=1)
            f = _hermite(t, z0, s0, z1, s1) + dz
            slope = hermite_slope(t, z0, s0, z1, s1) + dt * jnp.sum(
                K * (c0 + dc * tl), axis=1
            )
            return f, slope

        # (The products formed once: the same in every sweep.)
        state = jax.lax.stop_gradient((Z0, Z1, m0, m1, C0, C1, gram0, dt))
        t = th[i, j]
        speed = hermite_slope(t, Z0[i, j], m0[i, j], Z1[i, j], m1[i, j])
        speed = jax.lax.stop_gradient(speed)

        def sweep(_, t):
            # A Newton step on the near-side cubic plus the shift: a shift of a
            # tenth of the step, taken along the slope at the near-side root alone,
            # left a crossing time off by 1% of the step (a relative error of 1.3e-7
            # in one MNIST-60 step).
            f, slope = equations(t, t, *state, i, j, same, js)
            ok = (slope != 0) & (jnp.sign(slope) == jnp.sign(speed))
            slope = jnp.where(ok, slope, jnp.where(speed != 0, speed, 1.0))
            return jnp.clip(t - f / slope, 0.0, 1.0)

        t = jax.lax.fori_loop(0, 3, sweep, jax.lax.stop_gradient(t))
        # (Scattered back with the unused entries dropped: `nonzero` pads with the
        # pair (0, 0), which may be a crossing itself.)
        i_out = jnp.where(valid, i, n)
        # Whether each pair is still across at the step's end with the shift by the
        # crossings before it: the near side's `z` crossed, but the earlier
        # crossings of its neuron may hold it back (its moved time leaves the step,
        # and the iteration above stops at 1). Such a pair does not cross in the
        # step; counted as crossed, its far-side Jacobian would act on the response
        # to the earlier crossings for the rest of the step (on the orthogonally
        # separable set, an error of 586 atol in one step).
        z0, z1 = state[0][i, j], state[1][i, j]
        earlier = (t[:, None] > t[None, :]).astype(t.dtype)
        c0, dc = C0[i, j][None, :], (C1[i, j] - C0[i, j])[None, :]
        tk = t[None, :]
        moved = c0 * (1.0 - tk) + 0.5 * dc * (1.0 - tk * tk)
        K = jnp.where(same, gram0, 0.0) * js[None, :]
        f1 = z1 + dt * jnp.sum(K * earlier * moved, axis=1)
        across = jax.lax.stop_gradient(valid & ((f1 > 0) != (z0 > 0)))
        # Pairs that reach their kink where the far side, with the crossings before
        # them switched, pushes them back: entries, not crossings (on MNIST-60 a
        # pair's own jump alone let it through, but a crossing of its neuron a
        # hundredth of a step earlier turned it back; it slid for half the step).
        _, slope = equations(t, t, *state, i, j, same, js)
        c = C0[i, j] + (C1[i, j] - C0[i, j]) * t
        turned = across & turned_back(slope, js, c, jnp.diagonal(gram0))
        turned = jnp.zeros_like(crossed).at[i_out, j].set(turned, mode="drop")
        across = crossed.at[i_out, j].set(across, mode="drop") & ~turned

        def tangent(Z0, Z1, m0, m1, C0, C1, x, dt, ginv, t, i, j, i_out, same, js, idx):
            # Only the derivative of this is used (`with_tangent`, which calls it
            # only when something is differentiated): the implicit function
            # theorem, swept three times so that the earlier crossings' derivatives
            # reach the later ones.
            args = (Z0, Z1, m0, m1, C0, C1, gram_of(x, i, j, *idx, *ginv), dt)
            _, slope = equations(t, t, *jax.lax.stop_gradient(args), i, j, same, js)
            slope = jnp.where(slope != 0, slope, 1.0)
            moved = jnp.zeros_like(t)
            for _ in range(3):
                f, _ = equations(t + moved, t, *args, i, j, same, js)
                moved = -f / slope
            return jnp.zeros_like(Z0).at[i_out, j].set(moved, mode="drop")

        th_moved = with_tangent(
            th.at[i_out, j].set(t, mode="drop"),
            tangent,
            (Z0, Z1, m0, m1, C0, C1, x, dt, proj[1:]),
            (*jax.lax.stop_gradient((t, i, j, i_out, same, js)), proj[:1]),
            add=False,
        )
        extra = no_after()
        if after is not None:
            extra = after(i, j, valid & across[i, j], th_moved[i, j], gram0, across)
        return th_moved, across, turned, extra

    return rare_cond(
        count <= small,
        lambda: shifted(small, True),
        lambda: rare_cond(count <= size, lambda: shifted(size, False), located),
    )


def interactions(
    i, j, valid, t, gram, jsign, C0, C1, Z0, Z1, m0, m1, slope, V, data, loss, dt
):
    r"""What `inside_crossings`' second-order part counts wrongly when one step holds
    several crossings: `(beta, dc)`, `n x h`, on the crossing pairs.

    That part takes the far-side Jacobian `J` (all the step's crossings switched)
    over the whole step. Between an earlier crossing `k` and a later one `l`, though,
    `l` is still on its near side: the flow's Jacobian there is `J - Delta J_l`, and
    the response to `delta_k(t) = G_k (t - t_k)` is off by `Delta J_l u_l`, `u_l =
    sum_k a_lk G_k`, `a_lk = (t_l - t_k)^2 dt^2 / 2` (second order in the step).
    Switching pair `l = (i, j)` multiplies its `z` by a slope changed by `s_l = +-(1
    - leak)` in the activation and in its `w`-term `c_l x_i`, so `Delta J_l u =
    s_l (<x_i, u_j> dF/dH_l + dc_l[u] x_i e_j)`: `beta_l = s_l <x_i, u_j>` (a
    direction in the activations, for the Jacobian-vector product at the step's
    end) and `dc_l[u]` (through the loss residual of the sample `i` alone: its
    outputs move by `sum_j' s'_ij' <x_i, u_j'> v_j'`, with the earlier crossings of
    the same sample adding their own `Delta H_k`). `gram`: `<x_l, P x_k>` of the
    gathered crossings, projected on the neuron of `k` (`crossing_times`).
    `t` are fractions of the step."""
    earlier = valid[:, None] & valid[None, :] & (t[None, :] < t[:, None])
    a = jnp.where(earlier, 0.5 * (dt * (t[:, None] - t[None, :])) ** 2, 0.0)
    js = jsign[i, j]
    # `G_k = g_k x_k` (per unit time) at the crossing's time.
    g = js * (C0[i, j] + (C1[i, j] - C0[i, j]) * t)
    same = j[:, None] == j[None, :]
    beta = js * jnp.sum(jnp.where(same, a * g[None, :] * gram, 0.0), axis=1)
    # The activations of sample `i_l` moved by the earlier crossings, per neuron.
    zdot = hermite_slope(t, Z0[i, j], m0[i, j], Z1[i, j], m1[i, j]) / nonzero(dt)
    own = (i[:, None] == i[None, :]) * (js * zdot)[None, :]
    coef = a * (slope[i][:, j] * g[None, :] * gram + own)
    dH = coef @ jax.nn.one_hot(j, slope.shape[1], dtype=coef.dtype)
    # `dc_l` from the residual of sample `i_l` at the step's end.
    H = slope[i] * Z1[i]
    scale = 1.0 / data.x.shape[0] if loss.reduction == "mean" else 1.0

    def residual(F):
        def total(F):
            return jnp.sum(loss.per_sample(F, data.y[i], data.num_classes))

        return -scale * jax.grad(total)(F)

    _, dR = jax.jvp(residual, (H @ V.T,), (dH @ V.T,))
    dc = jnp.sum(dR * V[:, j].T, axis=1)
    n = Z0.shape[0]
    i_out = jnp.where(valid, i, n)
    scatter = lambda v: jnp.zeros_like(Z0).at[i_out, j].set(v, mode="drop")
    return scatter(beta), scatter(dc)


# Three-point Gauss-Legendre nodes on [-1, 1] and their weights.
GAUSS3 = tuple(zip(*(a.tolist() for a in np.polynomial.legendre.leggauss(3))))


def inside_crossings(
    crossed: Bool[Array, "n h"],
    theta: Array,
    Z0: Array,
    Z1: Array,
    m0: Array,
    m1: Array,
    C0: Array,
    C1: Array,
    pattern: Bool[Array, "n h"],
    W1: Array,
    V1: Array,
    data: Dataset,
    mode: Mode,
    loss: AbstractLoss,
    leak: float,
    dt: Array,
    Cdot0: Array,
    Cdot1: Array,
    W0: Array,
    V0: Array,
    idx: Array,
    size: int = EVENT_PAIRS_IN,
) -> tuple[Array, ...]:
    r"""The transversal crossings located inside a step whose stages all took the
    activation pattern of its start: `(dW1, dW2, dV2, dV_direct, R, eW, eV, theta,
    crossed, turned)`, what they add to the step's end `y1` (the first-order part; the
    higher-order parts, by how they grow inside the step: four in `W`, three in `V`,
    and the activations' own part of `V`, with the loss residuals `R` at the step's
    ends that the dense output integrates it with), an estimate of the error left,
    the crossing times used, the crossings taken (less those that earlier ones
    held back or turned back: `crossing_times`), and the pairs turned back at their
    kink (entries, left to the step-size control).

    Past its crossing at `theta` a pair's `w`-term switches by the jump
    `G = +-(1 - leak) c_ij x_i` (projected like the field) and its activation by
    `Delta H = +-(1 - leak) z_ij`. The stages integrated the near-side field, smooth
    in the state, to the tableau's order; the difference `delta` between the flow and
    that solution obeys `delta' = sum G + (dF/dH) Delta H + J delta + ...` (`J` the
    far-side field's Jacobian), so, in powers of the step:

    - first order: `int_theta^1 G dt`, with `c_ij` on the cubic Hermite interpolant
      of its values and rates at the step's ends (`Cdot0`, `Cdot1`: `c_rate`);
    - second order: `int_theta^1 J(t) delta_1(t) + (dF/dH)(t) Delta H(t) dt`,
      `delta_1(t) = int_theta^t G`, with `J` and `dF/dH` linear between the step's
      ends: one Jacobian-vector product at each end (`W0, V0` and `W1, V1`), in
      directions from three-point Gauss-Legendre rules on `[theta, 1]` (exact on the
      interpolants of `c` and `z`); both taken a third of the way along the
      correction (`W + dW1 / 3`, `H - Delta H(1) / 3`), which adds the second
      derivatives of the field in `delta` and `Delta H`;
    - third order: the transport of the second-order part, `J int_theta^1
      delta_2`, one product more at `y1` (in the direction of the product at the
      start).

    Between two crossings of the step the later one is not yet switched: what the
    far-side Jacobian counts wrongly there is subtracted (`interactions`). Up to
    `size` crossings are moved and corrected jointly (`crossing_times`); the solver
    retries a step with more.

    What is left is fourth order in the step; the error estimate is the third-order
    part (what the correction to second order would leave)."""
    x, xt = data.x, transposed(data)
    jsign = slope_switch(Z0, leak)

    # (With their derivatives: see `crossing_times`.)
    def after(i, j, valid, t, gram, across):
        # (Between two crossings of the step the later one is not yet switched.)
        far = pattern != across
        slope = jnp.where(far, 1.0, leak).astype(W1.dtype)
        return interactions(
            i, j, valid, t, gram, jsign, C0, C1, Z0, Z1, m0, m1, slope, V1, data, loss, dt
        )

    th, crossed, turned, (beta, dc) = crossing_times(
        crossed,
        theta,
        Z0,
        Z1,
        m0,
        m1,
        C0,
        C1,
        jsign,
        x,
        dt,
        projection=(idx, mode.ginv),
        after=after,
        size=size,
    )
    rest = 1.0 - th

    def switched(coef):
        # The crossed pairs' switched `w`-terms with coefficients `coef` (times their
        # `c_ij`), projected like the field.
        return project(xt @ jnp.where(crossed, jsign * coef, 0.0), mode.xs, mode.ginv)

    # The second-order part `int_theta^1 J(t) delta(t) dt` (and the same for `Delta
    # H`), with the far-side Jacobian `J` linear between the ends of the step and
    # `delta(t) = int_theta^t G`: one Jacobian-vector product at each end, in the
    # directions `int_theta^1 G(s) (1 - s^2) / 2 ds` (at y1) and `int_theta^1 G(s)
    # (1 - s)^2 / 2 ds` (at y0), and `int s Delta H`, `int (1 - s) Delta H`. With `c`
    # and `z` on their cubic interpolants the integrands are polynomials of degree
    # five at most: three Gauss-Legendre points on `[theta, 1]` are exact.
    # The same rule gives the first-order part `int_theta^1 c` on the cubic.
    Ic = cW1 = cW0 = zH1 = zH0 = jnp.zeros_like(th)
    for xi, wq in GAUSS3:
        sq = th + 0.5 * rest * (1.0 + xi)
        w = 0.5 * rest * wq
        cq = _hermite(sq, C0, dt * Cdot0, C1, dt * Cdot1)
        zq = _hermite(sq, Z0, m0, Z1, m1)
        Ic = Ic + w * cq
        cW1 = cW1 + w * cq * 0.5 * (1.0 - sq * sq)
        cW0 = cW0 + w * cq * 0.5 * (1.0 - sq) ** 2
        zH1 = zH1 + w * zq * sq
        zH0 = zH0 + w * zq * (1.0 - sq)
    # The first-order part with `c` linear between the ends of the step (what the
    # dense output ramps in from each crossing's time), and the rest of it on the
    # cubic: the linear `c` leaves an error `c'' theta (1 - theta) dt^2 / 2` at the
    # crossing, over `(1 - theta) dt` (third order in the step, and the largest part
    # of the error for crossings late in a step). The rest is added to the
    # higher-order parts (ramped linearly in the dense output, exact at its ends).
    Ic_linear = rest * C0 + 0.5 * (C1 - C0) * (1.0 - th * th)
    dW1 = switched(Ic_linear * dt)
    extra = switched((Ic - Ic_linear) * dt)

    # The far-side pattern: the response to `delta` and `Delta H` includes that of
    # the switched terms themselves (their `c_ij` moves with the outputs).
    far = pattern != crossed
    slope = jnp.where(far, 1.0, leak).astype(W1.dtype)

    def far_field(W, V, dH):
        Z = x @ W
        H = jnp.where(far, Z, leak * Z) + dH
        f = of_hidden(H, slope, Z, V, data, mode, loss)
        # (And the loss residual, whose transpose takes the activations' part of
        # the `V`-products: `dV = R^T H`.)
        return f.dW, f.dV, loss.residual(H @ V.T, data)

    def tangent_in(cw, zh):
        return (
            switched(cw * dt * dt),
            jnp.zeros_like(V1),
            jnp.where(crossed, jsign * zh * dt, 0.0),
        )

    # The Jacobians are taken a third of the way along the correction at the end of
    # the step, `(W + dW1 / 3, H - Delta H(1) / 3)`: that adds the second derivatives
    # `(1/2) F''[delta, delta] - (1/2) F_HH[Delta H, Delta H]` (the field is
    # nonlinear in the state, and the near side's outputs are the far side's less
    # `Delta H`), integrated over the step (third order).
    sW = dW1 / 3.0
    sH = jnp.where(crossed, -jsign * Z1 / 3.0, 0.0)

    def at(W, V, tangents):
        # The far-side field's Jacobian-vector products at `(W, V)` (shifted) for a
        # stack of tangents `(dW, dV, dH)` (one linearization).
        (_, _, R), lin = jax.linearize(far_field, W + sW, V, sH)
        dW, dV, _ = jax.vmap(lin)(*tangents)
        return dW, dV, R

    # At y0: `J0 int (1 - s)^2 / 2 G` (with `Delta H`).
    tangent0 = tangent_in(cW0, zH0)
    pW, pV, R0 = at(W0, V0, tuple(a[None] for a in tangent0))
    pW, pV = pW[0], pV[0]
    # At y1: `J1 int (1 - s^2) / 2 G` (with `Delta H`), and the third-order
    # transport `J1 int_theta^1 delta_2`, `delta_2(t) = int_theta^t (J delta_1 + A
    # Delta H)`: its time integral is `p dt` with `p` the product at y0 just taken
    # (`J0` for `J1` there is fourth order). With it the step's error across a
    # crossing is fourth order in the step (third order without).
    dW1t, dV1t, dH1t = tangent_in(cW1, zH1)
    dH1t = dH1t - beta
    qW, qV, R1 = at(
        W1,
        V1,
        (
            jnp.stack([dW1t, dt * pW]),
            jnp.stack([dV1t, dt * pV]),
            jnp.stack([dH1t, jnp.zeros_like(dH1t)]),
        ),
    )
    # By how they grow inside the step (for the dense output): the products at y0
    # and at y1, the third-order transport, and the first-order part's rest.
    # The activations' own part of the `V`-products, `R^T Delta H` (with `R`
    # linear over the step), is kept apart: the dense output integrates it pair by
    # pair (on the `ncjax run` problem, with nineteen crossings in one step, the
    # ramped `V`-part was 6 times the tolerance off inside the step).
    direct0, direct1 = R0.T @ tangent0[2], R1.T @ (dH1t + beta)
    partsW = jnp.stack([pW, qW[0] - switched(dc), qW[1], extra])
    partsV = jnp.stack([pV - direct0, qV[0] - direct1, qV[1]])
    direct = direct0 + direct1
    # The error estimate: the third-order part (what the second-order correction
    # alone would leave), for the fourth-order remainder of the corrected step.
    return (
        dW1,
        partsW,
        partsV,
        direct,
        jnp.stack([R0, R1]),
        qW[1],
        qV[1],
        th,
        crossed,
        turned,
    )


def c_rate(
    Z: Array, zdot: Array, V: Array, dV: Array, pattern: Array, data, loss, leak: float
) -> Array:
    """`dc_ij/dt` along the flow with the activation pattern `pattern` held:
    `c = R V` with `R` the loss residual of the outputs `H V^T`, from `z`, its rate
    `zdot`, `V` and its rate `dV` (no new product with the data)."""
    slope = jnp.where(pattern, 1.0, leak).astype(Z.dtype)
    H = slope * Z
    F = H @ V.T
    Fdot = (slope * zdot) @ V.T + H @ dV.T
    R, Rdot = jax.jvp(lambda F: loss.residual(F, data), (F,), (Fdot,))
    return Rdot @ V + R @ dV


EVENT_PAIRS = 256  # located events per step whose roots are found on a gathered copy


def event_roots(
    event: Array,
    z0: Array,
    z1: Array,
    m0: Array,
    m1: Array,
    size: int = EVENT_PAIRS,
) -> Array:
    """`hermite_roots` of the pairs of `event` (an `n x h` mask), `0` elsewhere.

    A step holds a handful of events among its `n h` pairs, and the root iteration
    on all of them took a tenth of a step on MNIST: the event pairs are gathered
    (up to `size`, else all pairs are iterated), solved and scattered back. The
    same elementwise iteration either way. The roots have no derivative here (see
    `event_times`)."""
    z0, z1, m0, m1 = jax.lax.stop_gradient((z0, z1, m0, m1))
    size = min(size, event.size)
    count = jnp.sum(event)

    def sparse():
        i, j = jnp.nonzero(event, size=size, fill_value=0)
        roots = hermite_roots(z0[i, j], z1[i, j], m0[i, j], m1[i, j])
        roots = jnp.where(jnp.arange(size) < count, roots, 0.0)
        return jnp.zeros_like(z0).at[i, j].add(roots)

    def dense():
        return jnp.where(event, hermite_roots(z0, z1, m0, m1), 0.0)

    return rare_cond(count > size, dense, sparse)


class Located(eqx.Module):
    """The error estimate of a `SlidingReLU(crossings="locate")` step, with what its
    step-size controller (`EventController`) needs to end steps at kink events.

    Diffrax hands the solver's error estimate, and nothing else of a step, to the
    step-size controller; the located events travel with it.
    """

    model: object  # the error estimate of the parameters (a `TwoLayerReLU`)
    theta: Float[Array, "n h"]  # located event time as a fraction of the step, inf if none
    cost: Float[Array, "n h"]  # estimated error of leaving that event inside the step
    Z: Float[Array, "n h"]  # z_ij at the end of the step
    zdot: Float[Array, "n h"]  # dz_ij/dt at the end of the step
    zddot: Float[Array, "n h"]  # d^2z_ij/dt^2 at the end of the step (of the interpolant)
    C: Float[Array, "n h"]  # c_ij at the end of the step
    sliding: Float[Array, "n h"]  # 1 on the step's sliding pairs (float: Diffrax casts)
    restarted: Float[Array, ""]  # 1 if the step evaluated its first stage again
    inside: object  # the part of `model` from the crossings corrected inside the step
    theta_in: Float[Array, " 2"]  # first and last corrected crossing (fractions)


def with_derivatives(field: Field, W: Array, V: Array, data: Dataset, loss, leak) -> Field:
    """`field` (the regular field at `(W, V)`, as `init` stored it) with the
    derivatives of a fresh evaluation.

    Diffrax treats the solver state that `init` returns as not differentiable, so
    the derivatives the first stage of the first step (stored there, first same as
    last) carries are not to be relied on. They are replaced by those of `evaluate`
    at `(W, V)` (no sliding set), without evaluating it again when nothing is
    differentiated (`with_tangent`: Diffrax has no hook for a differentiable initial
    solver state).
    """
    n, h = field.Z.shape
    D = W.shape[0]
    num_classes = data.num_classes

    def fn(W, V, x, y):
        mode = empty_mode(n, h, 1, D, W.dtype)
        return evaluate(W, V, Dataset(x, y, num_classes), mode, loss, leak)

    return with_tangent(field, fn, (W, V, data.x), (data.y,), add=False)


def with_velocity_derivatives(zdot: Array, field: Field, x: Array) -> Array:
    """`zdot = X dW` (as `init` stored it) with the derivatives of `field` and `x`
    (see `with_derivatives`), computed only when something is differentiated."""
    return with_tangent(zdot, lambda dW, x: x @ dW, (field.dW, x), add=False)


def _hermite(t: Array, z0: Array, m0: Array, z1: Array, m1: Array) -> Array:
    """The cubic Hermite interpolant with `p(0) = z0`, `p(1) = z1`, `p'(0) = m0`,
    `p'(1) = m1`, at `t`."""
    t2 = t * t
    t3 = t2 * t
    return (
        (2 * t3 - 3 * t2 + 1) * z0
        + (t3 - 2 * t2 + t) * m0
        + (-2 * t3 + 3 * t2) * z1
        + (t3 - t2) * m1
    )


def hermite_slope(t: Array, z0: Array, m0: Array, z1: Array, m1: Array) -> Array:
    """The derivative in `t` of the cubic Hermite interpolant of `_hermite`."""
    t2 = t * t
    return (6 * t2 - 6 * t) * (z0 - z1) + (3 * t2 - 4 * t + 1) * m0 + (3 * t2 - 2 * t) * m1


def event_times(z0: Array, z1: Array, m0: Array, m1: Array, theta: Array) -> Array:
    """`theta` (roots of the cubic Hermite interpolants, as `hermite_roots` finds them)
    with the derivatives of the roots, by the implicit function theorem: one Newton
    step from the root, whose value it keeps (the bracketing iteration itself has no
    useful derivative)."""
    theta = jax.lax.stop_gradient(theta)
    p = _hermite(theta, z0, m0, z1, m1)
    dp = jax.lax.stop_gradient(hermite_slope(theta, z0, m0, z1, m1))
    step = p / jnp.where(dp != 0, dp, 1.0)
    return theta - (step - jax.lax.stop_gradient(step))


def event_gap(
    times: Float[Array, "n h"], last: Float[Array, " h"], size: int = 32
) -> tuple[Array, Array]:
    """`(gap, last)`: the smallest time between two events of one neuron among this
    step's events (`times`, `inf` where a pair has none) and the neuron's latest event
    before the step (`last`, `-inf` when none), and each neuron's latest event after
    it. Events of different neurons do not interact at first order (a crossing
    switches one term of its own neuron's equation); two events of one neuron at the
    same instant have no derivative (their order decides it). Only in steps with
    events: a step holds a handful, which are gathered (up to `size`) and compared
    pairwise; with more (up to `GATHERED`), they are gathered and sorted by neuron and
    time; with more still, one sort of the `n x h` times per neuron."""
    # (A sort of all `n x h` times in every step with events was a noticeable part of
    # an early step on MNIST: the alignment phase has events in almost every step.)
    finite = jnp.isfinite(times)
    count = jnp.sum(finite)
    size = min(size, times.size)

    def sparse():
        i, j = jnp.nonzero(finite, size=size, fill_value=0)
        valid = jnp.arange(size) < count
        t = jnp.where(valid, times[i, j], jnp.inf)
        same = (j[:, None] == j[None, :]) & valid[:, None] & valid[None, :]
        same = same & ~jnp.eye(size, dtype=bool)
        d = jnp.where(same, jnp.abs(t[:, None] - t[None, :]), jnp.inf)
        to_last = jnp.where(valid & jnp.isfinite(last[j]), jnp.abs(t - last[j]), jnp.inf)
        latest = last.at[j].max(jnp.where(valid, t, -jnp.inf))
        return jnp.minimum(jnp.min(d), jnp.min(to_last)), latest

    def dense():
        t = jnp.sort(jnp.concatenate([last[None, :], times]), axis=0)
        d = t[1:] - t[:-1]
        d = jnp.where(jnp.isfinite(t[1:]) & jnp.isfinite(t[:-1]), d, jnp.inf)
        latest = jnp.max(jnp.where(finite, times, -jnp.inf), axis=0)
        return jnp.min(d), jnp.maximum(last, latest)

    def gathered():
        # (The step's events and each neuron's latest before it, sorted by neuron,
        # then time: the same gaps as `dense`, between neighbours of one neuron.)
        h = times.shape[1]
        t, index, _ = gather_present(jnp.where(finite, times, jnp.inf))
        j = jnp.where(index < times.size, index % h, h)  # (`h`: the padding)
        jj, tt = jax.lax.sort(
            (
                jnp.concatenate([j, jnp.arange(h, dtype=j.dtype)]),
                jnp.concatenate([t, last]),
            ),
            num_keys=2,
        )
        d = tt[1:] - tt[:-1]
        d = jnp.where(
            (jj[1:] == jj[:-1]) & jnp.isfinite(tt[1:]) & jnp.isfinite(tt[:-1]), d, jnp.inf
        )
        latest = last.at[j].max(jnp.where(j < h, t, -jnp.inf), mode="drop")
        return jnp.min(d), latest

    def none():
        return jnp.full((), jnp.inf, times.dtype), last

    if gathering_pays(times.size):

        def many():
            return rare_cond(count > GATHERED, dense, gathered)

    else:
        many = dense

    branch = jnp.where(count == 0, 0, jnp.where(count <= size, 1, 2))
    return jax.lax.switch(branch, [none, sparse, many])


def closest_approach(
    z0: Array, z1: Array, m0: Array, m1: Array, pairs: Array, scale: Array
) -> Array:
    """The smallest `s z_ij(t) / scale_ij` (`s` the sign of `z_ij` at both ends) over
    the pairs (`pairs`) whose cubic interpolant (values `z0`, `z1`, slopes `m0`, `m1`
    over the step) moves toward the kink at the start and away from it at the end: the
    closest a pair comes to its kink when it turns back without crossing (`inf` if
    none). A touch (0) has no derivative: a perturbation makes it cross twice or not
    at all. Negative when the interpolant crosses and comes back inside the step (two
    crossings in one step, not located). The turning point is where the slope's
    linear interpolation vanishes, refined by one Newton step on the slope."""
    s = jnp.where(z0 > 0, 1.0, -1.0)
    turns = pairs & ((z0 > 0) == (z1 > 0)) & (s * m0 < 0) & (s * m1 > 0)
    denom = jnp.where(turns, m0 - m1, 1.0)
    t = jnp.where(turns, m0 / denom, 0.5)
    slope, curv = jax.jvp(
        lambda t: hermite_slope(t, z0, m0, z1, m1), (t,), (jnp.ones_like(t),)
    )
    t = jnp.clip(t - slope / jnp.where(curv * s > 0, curv, jnp.inf), 0.0, 1.0)
    value = s * _hermite(t, z0, m0, z1, m1)
    value = jnp.minimum(value, jnp.minimum(s * z0, s * z1))
    return jnp.min(jnp.where(turns, value / jnp.where(scale > 0, scale, 1.0), jnp.inf))


def shifted_first(
    first: Field,
    shift: Array,
    W: Array,
    V: Array,
    data: Dataset,
    mode: Mode,
    started: Started,
    loss,
    leak,
) -> Field:
    """The first stage `first` (at `W`, the started pairs switched to their far side)
    with the derivative of the far-side field at `W + shift`.

    The derivative of the stored first stage is wrong in two ways, each an error of
    first order in the step:

    - it is the near side's: `start_crossings` switched the started pairs' terms of
      the field, but in the outputs `f(x_i)` of their samples, and so in every `c_i.`,
      `w_j` still counts. The derivative is taken of the field evaluated with the
      started pairs on their far side (`evaluate(..., flip=)`), as the later stages
      (past the kink) are;
    - started crossings and entries shift the step's start by their near-side parts
      (`shift`, second order in `tau dt`), whose derivatives are the jump terms of the
      events. The first stage's value at `W + shift` differs at second order and is
      not recomputed, but its derivative includes `J(W) d shift`: without it, the
      jump terms would reach the first stage a step late.

    The value is kept; the derivative is replaced (`with_tangent`), and nothing is
    evaluated unless something is differentiated.
    """
    num_classes = data.num_classes

    def fn(W, V, x, d, xs, ginv, y, mask, smask):
        d_data = Dataset(x, y, num_classes)
        return evaluate(W + d, V, d_data, Mode(mask, xs, ginv), loss, leak, flip=smask)

    # The shift enters with no value, so `fn` is linearized at `W` itself.
    zero_shift = shift - jax.lax.stop_gradient(shift)
    diff = (W, V, data.x, zero_shift, mode.xs, mode.ginv)
    const = (data.y, mode.mask, started.mask)
    return with_tangent(first, fn, diff, const, add=False)


def exit_events(
    idx: Int[Array, "h m"],
    mode: Mode,
    start: Field,
    end: Field,
    x: Array,
    leak: float,
    tol: float,
    dt: Array,
    tau_started: Array,
    crossings: tuple[Array, Array, Array] | None = None,
) -> tuple[Array, Array]:
    """Exits from sliding inside a step: `(theta, cost)` as `n x h` arrays (`inf` and
    `0` where none).

    A sliding pair keeps its weight `s_ij = eta_ij / c_ij` in `[leak, 1]`; the solver
    decides an exit at the start of a step, once `s_ij` lies beyond a bound by more
    than `tol`. Within a step the set is held, so a pair whose weight passes that
    level inside the step is held on its kink past its exit. The weight is smooth
    while the set is fixed: the level is located on the linear interpolant of the
    violation `g = eta - (leak - tol) c` (below) or `(1 + tol) c - eta` (above),
    which has the sign of the distance past the level times `|c|` and no division by
    `c`. Leaving the exit inside the step holds the pair with the wrong weight for
    the rest of it: `w_j` is off by about `g(t1) (1 - theta) dt |x_i| / 2` (the
    weight's error grows linearly from the exit), the event's cost.

    A crossing started at the beginning of the step (at `tau_started` of it, per
    neuron) switches a term of its neuron's field, and with it the weights of the
    neuron's sliding pairs: a weight that the switch puts beyond its bound is an exit
    at the crossing's time, with the wrong weight held for the rest of the step.

    `crossings = (crossed, theta, amount)`: the transversal crossings corrected inside
    the step (`SlidingReLU(correct_crossings=True)`; `n x h`), their times and their
    switched terms `+-(1 - leak) c_ij` at them. Each moves the weights of its
    neuron's sliding pairs by a jump, `-G^{-1} X_S x_i` times its term, so the linear
    interpolant between the step's ends misplaces their exits: it put an exit at a
    crossing near the end of whatever step was tried (on MNIST-60, 30 retries in a
    row each shortened the step by 2.5%), or, once a retry ended just past the
    crossing, before it (11 retries and 11 short steps for one exit). And a weight
    can leave its box at one crossing and come back at a later one,
    inside the ends of the step: on MNIST-60 at `rtol 1e-11` a crossing at 15% of a
    step put a sliding pair out (to the inactive side), another at 95% put it back,
    and the pair, held on its kink for the step, left `1e-8` of its neuron behind
    (relative error 7e-8, 7e-9 after the next step). The violation just before and
    just after each crossing, the smooth part linear between the step's ends plus the
    jumps so far, locates such an exit at the crossing, or inside the stretch before it
    where the smooth part took the weight out first (weights tied on a line are taken
    untied here); on a neuron with such crossings, that is the exit
    (`exits_between_crossings`).
    """
    used = idx >= 0
    safe = jnp.maximum(idx, 0)
    lo0, hi0 = sliding_violations(mode, idx, start, leak, tol)
    lo1, hi1 = sliding_violations(mode, idx, end, leak, tol)

    def located(g0, g1):
        out = used & (g0 <= 0) & (g1 > 0)
        theta = jnp.where(out, g0 / jnp.where(out, g0 - g1, -1.0), jnp.inf)
        return out, theta, jnp.where(out, g1, 0.0)

    out_lo, theta_lo, g_lo = located(lo0, lo1)
    out_hi, theta_hi, g_hi = located(hi0, hi1)
    theta = jnp.minimum(theta_lo, theta_hi)
    g = jnp.where(theta_lo <= theta_hi, g_lo, g_hi)
    x_norm = jnp.linalg.norm(x, axis=1)[safe]  # h x m
    frac = jnp.where(jnp.isfinite(theta), theta, 1.0)
    cost = jnp.where(out_lo | out_hi, 0.5 * g * (1.0 - frac) * jnp.abs(dt) * x_norm, 0.0)
    if crossings is not None:
        # (Only in steps with a corrected crossing of a neuron that has a sliding
        # pair.)
        with_slots = jnp.any(used, axis=1)[None, :]
        theta_at, g_at = rare_cond(
            jnp.any(crossings[0] & with_slots),
            lambda: exits_between_crossings(mode, used, lo0, hi0, lo1, hi1, x, *crossings),
            lambda: (jnp.full_like(lo0, jnp.inf), jnp.zeros_like(lo0)),
        )
        # On a neuron with corrected crossings the step's ends alone mislead: the
        # linear interpolant of the violation between them takes the jumps for a
        # drift and puts an exit that a crossing brings about before that crossing
        # (on MNIST-60 a retry ending just past the crossing located its exit at 43%
        # of the step, was retried to end there, and the exit receded with every
        # step: 11 retries and 11 short steps for one exit). There the exit is the
        # one located between the crossings (the stretch after the last included),
        # whether earlier or later than the interpolant's.
        on_crossed = jnp.any(crossings[0], axis=0)[:, None] & used
        inside = on_crossed | (theta_at < theta)
        theta = jnp.where(inside, theta_at, theta)
        # (No exit there: `theta_at` inf and `g_at` 0, so no cost.)
        cost = jnp.where(
            inside, g_at * (1.0 - jnp.minimum(theta_at, 1.0)) * jnp.abs(dt) * x_norm, cost
        )
    # Put out by a crossing started in this step: held with the wrong weight from
    # the crossing on (the whole violation, not half of it).
    tau = tau_started[:, None]
    switched = used & (jnp.maximum(lo0, hi0) > 0) & (tau > 0)
    g_out = jnp.maximum(jnp.maximum(lo1, hi1), 0.0)
    theta = jnp.where(switched, jnp.broadcast_to(tau, theta.shape), theta)
    cost = jnp.where(switched, g_out * (1.0 - tau) * jnp.abs(dt) * x_norm, cost)
    n, h = start.Z.shape
    cols = jnp.broadcast_to(jnp.arange(h)[:, None], idx.shape)
    theta_nh = (
        jnp.full((n, h), jnp.inf, theta.dtype)
        .at[safe, cols]
        .min(jnp.where(used, theta, jnp.inf))
    )
    cost_nh = jnp.zeros((n, h), cost.dtype).at[safe, cols].add(jnp.where(used, cost, 0.0))
    return jax.lax.stop_gradient((theta_nh, cost_nh))


def exits_between_crossings(mode, used, lo0, hi0, lo1, hi1, x, crossed, theta, amount):
    """`(theta, g)` per slot (`h x m`; `inf`, 0 where none): the first time at which
    the slot's weight passes its level (`exit_events`), and the violation there: inside
    a stretch between the corrected crossings of the slot's neuron (on the linear
    interpolant there, the stretch from the last crossing to the step's end included)
    or at one of those crossings (just after it). The slots inside their box at the
    step's start only; on a neuron without crossings, the exit on the linear
    interpolant between the step's ends. A crossing of sample `i` moves `X_S A` by
    `X_S x_i` times its term `amount`, so `eta` by `-G^{-1} X_S x_i amount`; the
    crossings are taken in their order in the step (sorted per neuron) and their jumps
    summed."""
    P = jnp.einsum("jmd,nd->jmn", mode.xs, x)  # <x_{S_j a}, x_i>
    term = jnp.where(crossed, amount, 0.0).T  # h x n
    deta = -jnp.einsum("jab,jbn->jan", mode.ginv, P * term[:, None, :])  # h x m x n
    t_c = jnp.where(crossed, theta, jnp.inf).T  # h x n
    order = jnp.argsort(t_c, axis=1)
    t_sorted = jnp.take_along_axis(t_c, order, axis=1)[:, None, :]
    d_sorted = jnp.take_along_axis(deta, order[:, None, :], axis=2)
    # The step's end as a last "crossing" without a jump, so that the stretch after
    # the last crossing is searched too.
    h, m = lo0.shape
    t_sorted = jnp.concatenate([t_sorted, jnp.ones((h, 1, 1), t_sorted.dtype)], axis=2)
    d_sorted = jnp.concatenate([d_sorted, jnp.zeros((h, m, 1), d_sorted.dtype)], axis=2)
    cum = jnp.cumsum(d_sorted, axis=2)
    total = cum[:, :, -1]
    valid = jnp.isfinite(t_sorted)
    ts = jnp.where(valid, t_sorted, 0.0)
    # Just after each crossing: the smooth part (without the jumps) linear between
    # the step's ends, plus the jumps so far; just before it, less its own jump.
    lo_at = lo0[..., None] + ((lo1 - total) - lo0)[..., None] * ts + cum
    hi_at = hi0[..., None] + ((hi1 + total) - hi0)[..., None] * ts - cum
    lo_before, hi_before = lo_at - d_sorted, hi_at + d_sorted
    inside0 = used & (jnp.maximum(lo0, hi0) <= 0)
    # The start of each stretch between crossings (the step's start, then just after
    # each crossing).
    t_prev = jnp.concatenate([jnp.zeros_like(ts[..., :1]), ts[..., :-1]], axis=2)

    def first_out(g0, before, after):
        # A weight can leave its box inside a stretch, before the crossing that ends
        # it (and be brought back by that crossing, unseen at both ends of the step:
        # a sliding pair whose neuron drifted it out, put back by a crossing late in
        # the step, held on its kink in between: relative error 9e-6 in one step on
        # rank-4 data), or at a crossing's jump. The first of either, in time order.
        prev = jnp.concatenate([g0[..., None], after[..., :-1]], axis=2)
        in_stretch = valid & (prev <= 0) & (before > 0)
        frac = prev / jnp.where(in_stretch, prev - before, -1.0)
        theta = jnp.where(
            in_stretch,
            t_prev + (ts - t_prev) * frac,
            jnp.where(valid & (after > 0), ts, jnp.inf),
        )
        g = jnp.where(in_stretch, before, after)
        return theta, g

    th_lo, g_lo = first_out(lo0, lo_before, lo_at)
    th_hi, g_hi = first_out(hi0, hi_before, hi_at)
    use_lo = th_lo <= th_hi
    theta = jnp.where(use_lo, th_lo, th_hi)
    g = jnp.where(use_lo, g_lo, g_hi)
    out = inside0[..., None] & jnp.isfinite(theta)
    first = jnp.argmax(out, axis=2)[..., None]
    found = jnp.any(out, axis=2)
    theta_out = jnp.where(found, jnp.take_along_axis(theta, first, axis=2)[..., 0], jnp.inf)
    g_out = jnp.where(found, jnp.take_along_axis(g, first, axis=2)[..., 0], 0.0)
    return theta_out, g_out


def sliding_violations(mode: Mode, idx: Array, f: Field, leak: float, tol: float):
    """How far each slot's sliding weight `s = eta / c` lies beyond `[leak - tol, 1 +
    tol]`, times `|c|` (positive beyond, no division by `c`): below and above."""
    eta, cs = slot_weights(mode.ginv, mode.xs, mode.lines, idx, f, leak)
    return eta - (leak - tol) * cs, (1.0 + tol) * cs - eta


def exits_at_started_crossings(
    state: SlidingState,
    idx: Array,
    mode: Mode,
    before: Field,
    first: Field,
    started: Started,
    x: Array,
    dt: Array,
    leak: float,
    iterations: int,
    tol: float,
    window: float,
    zdot: Array,
):
    """Sliding pairs put out of their box by a crossing started in this step.

    A started crossing switches one term of its neuron's field at `tau dt` into the
    step, and with it the weights of the neuron's sliding pairs; a weight it puts
    beyond its bound is an exit at the crossing's time. The sliding set is decided
    again on the far-side field (`first`, the same active-set check as at the start
    of a step) and the crossings are started again under the new set.

    Returns `(idx, mode, first, started, exits, neurons, above)` (`neurons`: those
    with such an exit; `above`: exits to the active side); unchanged, with no exits,
    where no weight left its box (a `lax.cond`). The exit's near-side part is added
    by the caller (`exit_correction`), once the exiting pairs are on their side
    (`exit_sides`).
    """
    used = idx >= 0
    lo, hi = sliding_violations(mode, idx, first, leak, tol)
    tau_j = jnp.max(started.tau, axis=0)
    out = used & ((lo > 0) | (hi > 0)) & (tau_j[:, None] > 0)
    D, h = first.A.shape

    def redecide():
        flip = first.A - before.A
        pseudo = eqx.tree_at(lambda s: (s.idx, s.field), state, (idx, first))
        no = jnp.zeros_like(mode.mask)
        new_idx, new_mode, after, counters, dropped_above = update_mode(
            pseudo, mode.mask, no, x, leak, iterations, tol
        )
        # The near side under the new set: the far-side field less the flip.
        A_near = after.A - flip
        near = Field(
            dW=project(A_near, new_mode.xs, new_mode.ginv),
            dV=before.dV,
            Z=before.Z,
            C=before.C,
            A=A_near,
        )
        new_first, new_started = start_crossings(
            near, new_mode, x, dt, leak, window, zdot, only=started.mask
        )
        exits = counters["exits"].astype(jnp.int32)
        # The side of each exit: for the pairs out of their box on the far-side
        # field, the bound they passed; for neighbours the new set drops with them,
        # the side the check gave them.
        above = jnp.where(
            pairs_of(idx, out, first.Z.shape[0]),
            pairs_of(idx, out & (hi > 0), first.Z.shape[0]),
            dropped_above,
        )
        neurons = jnp.any(out, axis=1)
        return new_idx, new_mode, new_first, new_started, exits, neurons, above

    def keep():
        zero = jnp.zeros((), jnp.int32)
        no = jnp.zeros_like(mode.mask)
        return idx, mode, first, started, zero, jnp.zeros(h, bool), no

    return rare_cond(jnp.any(out), redecide, keep)


def pairs_of(idx: Array, values: Array, n: int) -> Array:
    """A per-slot boolean (`h x m`) as an `n x h` mask of pairs (empty slots: False)."""
    h = idx.shape[0]
    cols = jnp.broadcast_to(jnp.arange(h)[:, None], idx.shape)
    vals = jnp.where(idx >= 0, values, False)
    return jnp.zeros((n, h), bool).at[jnp.maximum(idx, 0), cols].max(vals)


def exit_sides(
    first: Field, mode: Mode, exiting: Array, above: Array, x: Array, leak: float
) -> Field:
    """`first` with the pairs that just left sliding (`exiting`) on the side of their
    exit (`above`: the active side, else the inactive one).

    A sliding pair sits on its kink with `z_ij` zero up to rounding, and the active-set
    update counts a pair that leaves by the sign of that rounding; a pair on the wrong
    side gets the wrong term `slope_ij c_ij x_i` for a stage, and so does the
    derivative there. One sparse update, only in steps with such a pair."""
    wrong = exiting & ((first.Z > 0) != above)

    def fix():
        right = jnp.where(above, 1.0, leak)
        used = jnp.where(first.Z > 0, 1.0, leak)
        coef = jnp.where(wrong, (right - used) * first.C, 0.0)
        A = first.A + pair_sum(wrong, coef[..., None], x)[0]
        return Field(
            dW=project(A, mode.xs, mode.ginv), dV=first.dV, Z=first.Z, C=first.C, A=A
        )

    return rare_cond(jnp.any(wrong), fix, lambda: first)
