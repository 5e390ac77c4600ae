"""The default adjoint of `gradient_flow`: reverse and forward mode from one solve."""

from __future__ import annotations

import functools
import warnings

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.interpreters import ad


class ForwardOrReverse(diffrax.AbstractAdjoint):
    """A Diffrax adjoint under which both reverse mode (`jax.grad`, `jax.vjp`) and
    forward mode (`jax.jvp`, `jax.jacfwd`) work, whatever `jax.jit` or `jax.vmap`
    stands between the transform and the solve.

    Diffrax's `RecursiveCheckpointAdjoint` is a custom VJP, which JAX cannot
    differentiate in forward mode; `ForwardMode` is a plain loop, which JAX cannot
    transpose; and JAX has no rule that is both a custom JVP and a custom VJP. Neither
    Diffrax nor JAX offers the combination, so it is built here: the solve is a custom
    JVP whose tangent is a linear primitive (Equinox's primitive helpers, as Lineax
    builds its linear solve) that evaluates as `ForwardMode`'s JVP and transposes to
    `RecursiveCheckpointAdjoint`'s VJP, from residuals that the primal solve stores.

    Reverse mode therefore costs what `RecursiveCheckpointAdjoint` costs. Forward
    mode costs one solve more than `ForwardMode` (the solve that stores the
    residuals also gives the primal); `gradient_flow` passes `ForwardMode` itself when
    it sees the forward-mode transform directly around the call.

    The solve whose derivative is taken runs the solver's and the step-size
    controller's `for_derivatives()` where they have one (`SlidingReLU`: steps with
    crossings sized for the derivative's error too; `EventController`: no retries
    just past crossings); the value returned with the derivative comes from that
    solve.

    Second derivatives (a derivative of this derivative) are not supported: they
    raise.

    **Arguments:**

    - `checkpoints`: as for `diffrax.RecursiveCheckpointAdjoint`: reverse mode stores
      this many solver states (default `None`: Diffrax's choice from `max_steps`,
      `floor(sqrt(2 max_steps))`, 447 at `gradient_flow`'s default; a state holds
      the `n x h` arrays of the pairs, about 1 MB for 60 MNIST digits and `h = 50`).
      Fewer checkpoints recompute more steps. `checkpoints` equal to `gradient_flow`'s
      `max_steps` stores every step: the backward pass then never recomputes forward
      and skips what the steps compute for the primal only, at the memory of
      `max_steps` solver states, allocated up front (where the default number
      already holds every step of a solve, that gains nothing measurable: docs
      page *Differentiating the flow*, *Cost*).
    """

    checkpoints: int | None = None

    def loop(self, **kwargs):
        # Closures (save functions, norms) become pytrees, so that every array they
        # hold is an explicit input of the custom rule, not a constant of it.
        kwargs = eqxi.closure_to_pytree(kwargs)
        diff, rest = eqx.partition(kwargs, eqx.is_inexact_array)
        nondiff, static = eqx.partition(rest, eqx.is_array)
        reverse = diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)
        out_static = []

        def run(adjoint, diff, nondiff, derivatives=False):
            """The inexact and the other arrays of the final state; with
            `derivatives`, of the solve whose derivative is taken (`for_derivatives`)."""
            kwargs = eqx.combine(diff, nondiff, static)
            if derivatives:
                # A solver whose differentiated form locates events that it does
                # not (`derivative_defect`: "switch") would need another state and
                # controller than this solve's: reported, not switched. (Behind
                # `gradient_flow` its guard on the inputs reports it first.)
                if derivative_defect(kwargs["solver"]) == "switch":
                    raise ValueError(_defect_message("switch", kwargs["solver"]))
                kwargs = dict(
                    kwargs,
                    solver=for_derivatives(kwargs["solver"]),
                    stepsize_controller=for_derivatives(kwargs["stepsize_controller"]),
                )
            state = adjoint.loop(**kwargs)
            dynamic, state_static = eqx.partition(state, eqx.is_array)
            out_static[:] = [state_static]
            return eqx.partition(dynamic, eqx.is_inexact_array)

        @eqx.filter_custom_jvp
        def solve(diff, nondiff):
            return run(reverse, diff, nondiff)

        @solve.def_jvp
        def solve_jvp(primals, tangents):
            diff, nondiff = primals
            # Only the inputs with a tangent are differentiated (those with a
            # symbolic zero, `None`, such as the data when only the weights are, are
            # not); the tangents are already `None` wherever `pert` is.
            t_pert = tangents[0]
            perturbed = jtu.tree_map(
                lambda t: t is not None, t_pert, is_leaf=lambda x: x is None
            )
            pert, unpert = eqx.partition(diff, perturbed)
            run_d = functools.partial(run, derivatives=True)
            inexact, vjp_fn, other = jax.vjp(
                lambda p: run_d(reverse, eqx.combine(p, unpert), nondiff),
                pert,
                has_aux=True,
            )
            avals = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), inexact)
            t_inexact = eqxi.filter_primitive_bind(
                _tangent_p, run_d, avals, pert, (unpert, nondiff), t_pert, vjp_fn
            )
            return (inexact, other), (t_inexact, jtu.tree_map(lambda _: None, other))

        inexact, other = solve(diff, nondiff)
        return eqx.combine(inexact, other, out_static[0])


def for_derivatives(part):
    """`part.for_derivatives()` where the solver or step-size controller `part` has
    it (what to use in a solve that is differentiated), else `part`."""
    method = getattr(part, "for_derivatives", None)
    return part if method is None else method()


def derivative_defect(solver) -> str | None:
    """What is wrong with a derivative through `solver` as it steps: `"frozen"` for a
    solver without `for_derivatives` (Diffrax's and the regular-field solvers:
    `"regular"`, `"tsit5"`, ...), which differentiates each step with its
    activation pattern frozen and misses the jump term of every kink crossing;
    `"switch"` where `for_derivatives()` locates events that `solver` does not
    (`SlidingReLU(crossings="land")`, `solver="sliding"`), which only a call that
    sees the transform can switch to; `None` where it is right."""
    if getattr(solver, "for_derivatives", None) is None:
        return "frozen"
    if getattr(solver, "crossings", None) != getattr(
        solver.for_derivatives(), "crossings", None
    ):
        return "switch"
    return None


_FROZEN = (
    "gradient_flow: the derivative through {} is taken with each step's activation "
    "pattern frozen and misses the jump term of every kink crossing (on the "
    "one-neuron problem of the docs, of the wrong sign); the default solver carries "
    "them (docs page Differentiating the flow)"
)
_SWITCH = (
    "gradient_flow: a derivative through SlidingReLU(crossings={!r}) "
    "(solver='sliding' is crossings='land') needs its kink crossings located, which "
    "only a call that sees the transform can switch to; here the transform stands "
    "behind an outer jax.jit or jax.vmap. Put it directly around the call "
    "(jax.jit(jax.grad(f)) rather than jax.grad(jax.jit(f))), or use the default "
    "solver"
)


def _defect_message(kind: str, solver) -> str:
    """The report of `derivative_defect`'s `kind` for `solver`."""
    if kind == "frozen":
        return _FROZEN.format(type(solver).__name__)
    return _SWITCH.format(solver.crossings)


def solver_for_derivatives(solver, stacklevel=3):
    """The solver of a solve that is differentiated (by a transform that the call
    sees): `solver.for_derivatives()` where it has one, and a `RuntimeWarning`
    where the derivative misses the jump terms (`derivative_defect`: `"frozen"`)."""
    if derivative_defect(solver) == "frozen":
        warnings.warn(
            _defect_message("frozen", solver), RuntimeWarning, stacklevel=stacklevel
        )
    return for_derivatives(solver)


def guard_derivatives(solver, inputs):
    """`inputs` (the inexact arrays among them) through an identity whose derivative
    rule reports a derivative through `solver` that would be wrong
    (`derivative_defect`): a `RuntimeWarning` for `"frozen"`, a `ValueError` for
    `"switch"`. For a call that does not see the transform (behind an outer
    `jax.jit` or `jax.vmap`): the rule runs wherever JAX differentiates the solve,
    in either mode, whatever the adjoint. Costs nothing when nothing is
    differentiated, and returns `inputs` unchanged where the derivative is right."""
    kind = derivative_defect(solver)
    if kind is None:
        return inputs
    guard = functools.partial(_guard, (kind, _defect_message(kind, solver)))
    return jax.tree.map(lambda x: guard(x) if eqx.is_inexact_array(x) else x, inputs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _guard(report, x):
    del report
    return x


@_guard.defjvp
def _guard_jvp(report, primals, tangents):
    kind, message = report
    if kind == "frozen":
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    else:
        raise ValueError(message)
    return primals[0], tangents[0]


def _tangent_impl(run, avals, pert, const, t_pert, vjp_fn):
    del avals, vjp_fn
    unpert, nondiff = const
    _, (t_inexact, _) = jax.jvp(
        lambda p: run(diffrax.ForwardMode(), eqx.combine(p, unpert), nondiff),
        (pert,),
        (t_pert,),
    )
    return t_inexact


def _tangent_abstract_eval(run, avals, pert, const, t_pert, vjp_fn):
    return jtu.tree_map(lambda x: jax.core.ShapedArray(x.shape, x.dtype), avals)


def _tangent_jvp(primals, tangents):
    raise NotImplementedError(
        "gradient_flow: a derivative of a derivative through the flow is not "
        "supported (the default adjoint differentiates once, in either mode)"
    )


def _tangent_transpose(inputs, cts_out):
    run, avals, pert, const, t_pert, vjp_fn = inputs
    # Under `jax.vmap` (`jax.grad(jax.vmap(f))`) Equinox's batched primitive passes
    # the symbolic-zero cotangents across its `vmap` as `None`, after its own
    # materialisation of zeros: zeros of the outputs' shapes here (`vjp_fn` takes
    # the whole tree; the `None` of the output's partition stay `None`).
    cts_out = jtu.tree_map(
        lambda ct, aval: (
            jnp.zeros(aval.shape, aval.dtype) if ct is None and aval is not None else ct
        ),
        cts_out,
        avals,
        is_leaf=lambda x: x is None,
    )
    (ct_pert,) = vjp_fn(cts_out)
    none = lambda tree: jtu.tree_map(lambda _: None, tree)  # noqa: E731
    return (none(run), none(avals), none(pert), none(const), ct_pert, none(vjp_fn))


def _literals_as_arrays(transpose):
    """JAX passes the inputs that are literals of the jaxpr (Python scalars, JAX's
    typed scalars) to a transpose rule as such, and Equinox's wrapper counts only
    arrays as inputs: they go back to arrays first."""

    def wrapper(cts_out, *dynamic, **params):
        dynamic = [
            x if eqx.is_array(x) or isinstance(x, ad.UndefinedPrimal) else jnp.asarray(x)
            for x in dynamic
        ]
        return transpose(cts_out, *dynamic, **params)

    return wrapper


_tangent_p = eqxi.create_vprim(
    "gradient_flow_tangent",
    eqxi.filter_primitive_def(_tangent_impl),
    eqxi.filter_primitive_def(_tangent_abstract_eval),
    eqxi.filter_primitive_jvp(_tangent_jvp),
    _literals_as_arrays(
        eqxi.filter_primitive_transpose(materialise_zeros=True)(_tangent_transpose)
    ),
)
