"""Test problems with closed-form or independent references, shared by test files."""

import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import neuralcollapse_jax as nc


def crossing_problem():
    """One neuron, exponential loss, two positive points at an acute angle: `x_1` is
    active and pulls `w` towards itself, so `z_2 = <x_2, w>` rises through 0 and keeps
    rising (a transversal crossing). Reference: SciPy's DOP853 on each smooth piece,
    with the crossing located as an event."""
    X = np.array([[1.0, 0.0], [np.cos(1.2), np.sin(1.2)]])
    th0 = np.array([0.6, -0.45, 0.5])  # w, v; z = (0.6, -0.2)

    def piece(active):
        def f(t, th):
            z = X @ th[:2]
            h = np.where(active, z, 0.0)
            r = np.exp(-th[2] * h)
            return np.concatenate([X.T @ (r * th[2] * active), [np.sum(r * h)]])

        return f

    tight = dict(method="DOP853", rtol=1e-13, atol=1e-15)
    event = lambda t, th: (X @ th[:2])[1]  # noqa: E731
    event.terminal = True
    before, after = piece(np.array([1.0, 0.0])), piece(np.array([1.0, 1.0]))
    sol = solve_ivp(before, (0.0, 10.0), th0, events=event, **tight)
    tc, thc = sol.t_events[0][0], sol.y_events[0][0]

    def exact(t):
        if t <= tc:
            return solve_ivp(before, (0.0, t), th0, **tight).y[:, -1]
        return solve_ivp(after, (tc, t), thc, **tight).y[:, -1]

    model = nc.TwoLayerReLU(jnp.asarray(th0[:2])[:, None], jnp.asarray([[th0[2]]]))
    return nc.Dataset(X, np.array([1, 1]), 2), model, tc, exact
