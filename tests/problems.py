"""Test problems with closed-form or independent references, shared by test files."""

import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import neuralcollapse_jax as nc


def neuron_rates(X, y, active, th):
    """`(dw/dt, dv/dt)` of one neuron (`th = (w, v)`) under the sum exponential loss
    with labels `y` in {-1, +1}, the pairs of `active` (0 or 1 each) on their active
    side: one smooth piece of the flow, in NumPy."""
    w, v = th[:-1], th[-1]
    h = (X @ w) * active
    r = np.exp(-y * v * h)
    return v * X.T @ (y * r * active), np.sum(y * r * h)


def neuron_field(X, y, active, held=None):
    """`neuron_rates` as a SciPy right-hand side; with `held` (a sample index), the
    part of `dw/dt` along `x_held` projected out (that pair held on its kink)."""

    def f(t, th):
        a, dv = neuron_rates(X, y, active, th)
        if held is not None:
            a = a - X[held] * (X[held] @ a) / (X[held] @ X[held])
        return np.concatenate([a, [dv]])

    return f


def crossing_problem():
    """One neuron, exponential loss, two positive points at an acute angle: `x_1` is
    active and pulls `w` towards itself, so `z_2 = <x_2, w>` rises through 0 and keeps
    rising (a transversal crossing). Reference: SciPy's DOP853 on each smooth piece,
    with the crossing located as an event."""
    X = np.array([[1.0, 0.0], [np.cos(1.2), np.sin(1.2)]])
    th0 = np.array([0.6, -0.45, 0.5])  # w, v; z = (0.6, -0.2)

    def piece(active):
        return neuron_field(X, np.ones(2), active)

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


def _residual(F, y, K, loss):
    if loss == "exponential":
        s = np.where(y == 1, 1.0, -1.0)[:, None]
        return -s * np.exp(-s * F)
    P = np.exp(F - F.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    return P - np.eye(K)[y]


def scipy_flow(W0, V0, X, y, K, T, loss="cross_entropy", rtol=1e-12, atol=1e-14):
    """The flow `d theta/dt = -grad L` (sum loss, `relu'(0) = 0`) to `T`, written
    independently of the package: NumPy gradients and SciPy's DOP853 on each smooth
    piece, every kink crossing located as an event and the piece restarted there.
    Raises if a pair would slide (its kink attracts from both sides), which this
    reference does not integrate. Returns the flat `(W, V)` at `T`."""
    W0, V0, X = (np.asarray(a, dtype=float) for a in (W0, V0, X))
    y = np.asarray(y)
    D, h = W0.shape
    n = X.shape[0]

    def field(u, pattern):
        W, V = u[: D * h].reshape(D, h), u[D * h :].reshape(V0.shape)
        H = np.where(pattern, X @ W, 0.0)
        R = _residual(H @ V.T, y, K, loss)
        return -np.concatenate([(X.T @ ((R @ V) * pattern)).ravel(), (R.T @ H).ravel()])

    th = np.concatenate([W0.ravel(), V0.ravel()])
    t = 0.0
    pattern = (X @ W0) > 0
    while t < T:
        events = []
        for i in range(n):
            for j in range(h):
                e = lambda s, u, i=i, j=j: X[i] @ u[: D * h].reshape(D, h)[:, j]  # noqa: E731
                e.terminal = True
                e.direction = -1.0 if pattern[i, j] else 1.0
                events.append(e)
        current = pattern.copy()
        sol = solve_ivp(
            lambda s, u: field(u, current),
            (t, T),
            th,
            method="DOP853",
            rtol=rtol,
            atol=atol,
            events=events,
        )
        th, t = sol.y[:, -1], sol.t[-1]
        if sol.status != 1:
            break
        # Every pair at its kink now (samples on one ray cross together) switches.
        Z = X @ th[: D * h].reshape(D, h)
        scale = np.linalg.norm(X, axis=1)[:, None] * np.linalg.norm(
            th[: D * h].reshape(D, h), axis=0
        )
        zdot_old = X @ field(th, current)[: D * h].reshape(D, h)
        at = (np.abs(Z) <= 1e-9 * scale) & np.where(current, zdot_old < 0, zdot_old > 0)
        pattern = np.where(at, ~current, current)
        zdot = X @ field(th, pattern)[: D * h].reshape(D, h)
        if np.any(at & ((zdot > 0) != pattern)):
            raise RuntimeError(f"a pair would slide at t = {t:.6g}")
    return th
