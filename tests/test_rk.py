"""`UnrolledERK`: the same method as Diffrax's explicit Runge-Kutta solvers."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import neuralcollapse_jax as nc
from neuralcollapse_jax import UnrolledERK


def _linear_forced():
    """`y' = A y + sin(t) b`, closed form by the variation of constants."""
    A = jnp.array([[-1.0, 2.0], [-2.0, -1.0]])
    b = jnp.array([1.0, 0.5])
    y0 = jnp.array([1.0, -1.0])

    def exact(t):
        # y(t) = e^{At} y0 + int_0^t e^{A(t-s)} b sin(s) ds; with the real 4x4 system
        # z = (y, u, w), u' = w, w' = -u (u = sin, w = cos), y' = A y + b u.
        M = jnp.zeros((4, 4)).at[:2, :2].set(A).at[:2, 2].set(b)
        M = M.at[2, 3].set(1.0).at[3, 2].set(-1.0)
        z0 = jnp.concatenate([y0, jnp.array([0.0, 1.0])])
        return (jax.scipy.linalg.expm(M * t) @ z0)[:2]

    term = diffrax.ODETerm(lambda t, y, args: A @ y + jnp.sin(t) * b)
    return term, y0, exact


@pytest.mark.parametrize(
    "inner,order",
    [
        (diffrax.Tsit5(), 5),
        pytest.param(diffrax.Dopri5(), 5, marks=pytest.mark.slow),
        pytest.param(diffrax.Bosh3(), 3, marks=pytest.mark.slow),
    ],
)
def test_order_against_closed_form(inner, order):
    term, y0, exact = _linear_forced()
    errs = []
    for n in (20, 40):
        sol = diffrax.diffeqsolve(
            term,
            UnrolledERK(inner),
            0.0,
            2.0,
            2.0 / n,
            y0,
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        errs.append(float(jnp.max(jnp.abs(sol.ys[-1] - exact(2.0)))))
    rate = np.log2(errs[0] / errs[1])
    assert abs(rate - order) < 0.6, (errs, rate)


@pytest.mark.parametrize(
    "inner",
    [
        diffrax.Tsit5(),
        pytest.param(diffrax.Dopri5(), marks=pytest.mark.slow),
        pytest.param(diffrax.Bosh3(), marks=pytest.mark.slow),
    ],
)
def test_same_steps_and_values_as_diffrax(inner):
    """Adaptive steps, error estimate and dense output as Diffrax's own solver: the
    same accepted/rejected steps and the same saved values to round-off."""
    term, y0, exact = _linear_forced()
    ts = jnp.linspace(0.0, 5.0, 17)  # interior saves use the dense interpolation
    out = []
    for solver in (inner, UnrolledERK(inner)):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            5.0,
            None,
            y0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-9),
        )
        out.append(sol)
    a, b = out
    assert int(a.stats["num_steps"]) == int(b.stats["num_steps"])
    assert int(a.stats["num_rejected_steps"]) == int(b.stats["num_rejected_steps"])
    np.testing.assert_allclose(b.ys, a.ys, rtol=1e-12, atol=1e-13)
    ref = jax.vmap(exact)(ts)
    assert float(jnp.max(jnp.abs(b.ys - ref))) < 1e-5


def test_the_regular_solver_is_unrolled_tsit5():
    """`solver="regular"` (the regular field, without events) is the unrolled Tsit5
    and solves the flow as Diffrax's own Tsit5 does."""
    data = nc.datasets.orthogonally_separable(
        jax.random.key(0), 3, (4, 5, 6), 12, mu_s=0.5, mu_d=0.2, norm_range=(0.5, 1.5)
    )
    model = nc.TwoLayerReLU.init(jax.random.key(3), data.dim, 8, 3, 1e-2)
    ts = jnp.array([0.0, 0.5, 2.0, 5.0])
    kw = dict(t1=5.0, saveat=ts, rtol=1e-9)
    a = nc.gradient_flow(model, data, solver=diffrax.Tsit5(), **kw)
    b = nc.gradient_flow(model, data, solver="regular", **kw)
    assert isinstance(nc.resolve_solver("regular"), UnrolledERK)
    # The ReLU kinks make accept/reject decisions sensitive to round-off, so the step
    # sequences may part; both solve the flow to its tolerance (rtol 1e-9).
    assert abs(int(a.stats["num_steps"]) - int(b.stats["num_steps"])) <= 0.1 * int(
        a.stats["num_steps"]
    )
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-7)
    err = np.linalg.norm(np.asarray(b.final.W - a.final.W)) / np.linalg.norm(a.final.W)
    assert err < 1e-6


def test_rejects_implicit_solvers():
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        UnrolledERK(diffrax.Kvaerno5())
