"""Branches that stay branches under `jax.vmap`."""

from __future__ import annotations

import equinox.internal as eqxi
import jax


def rare_cond(pred, rare, common, *operands):
    """`jax.lax.cond(pred, rare, common, *operands)` that, under `jax.vmap`, runs
    `rare` only when `pred` holds for some element of the batch.

    JAX batches a `lax.cond` whose predicate is batched into a `select` of both
    branches, evaluated for every element in every call. The solver's branches are
    mostly rare and costly (an update of the sliding set, a first stage evaluated again,
    a dense fallback): batched that way, one vmapped run of the default call took 12
    times one unbatched run. Here an outer `lax.cond` on Equinox's `unvmap_any(pred)`
    (the predicate reduced over the batch, unbatched) skips `rare` for the whole batch
    when no element needs it; when some do, the inner `lax.cond` selects per element.
    Unbatched, the outer predicate is `pred` and the result is `lax.cond`'s. `common`
    is traced twice: put the cheap branch there."""
    return jax.lax.cond(
        eqxi.unvmap_any(pred),
        lambda *ops: jax.lax.cond(pred, rare, common, *ops),
        common,
        *operands,
    )
