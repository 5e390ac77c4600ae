"""Derivatives attached to values computed without them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def with_tangent(value, fn, diff: tuple, const: tuple = (), *, add: bool = True):
    """`value`, whose derivative gets `jvp(fn)` along the derivatives of `diff` added
    (`fn(*diff, *const)`; the derivatives of `const` are ignored), or, with
    `add=False`, replaced by it, without calling `fn` when nothing is differentiated
    (a custom JVP rule). `fn` must close over static values only: arrays go in `diff`
    or `const`."""

    @jax.custom_jvp
    def restore(value, diff, const):
        return value

    @restore.defjvp
    def restore_jvp(primals, tangents):
        value, diff, const = primals
        t_value, t_diff, _ = tangents
        _, extra = jax.jvp(lambda *d: fn(*d, *const), diff, t_diff)
        return value, jax.tree.map(jnp.add, t_value, extra) if add else extra

    return restore(value, diff, const)
