r"""Whitening batch norm: features normalized *jointly*, not one at a time.

Batch norm standardises each feature on its own ("it scales each feature independently instead
of normalizing layer inputs and outputs jointly", Ioffe & Szegedy 2015, Sec. 3). The joint
version decorrelates the features as well: with the centred batch ``X_c`` (``m`` rows, ``d``
features) and its covariance ``Sigma``, it applies the *whitening matrix*
``U = Sigma^{-1/2}``, so the output has identity covariance:

.. math::  \hat X = X_c U^\top, \qquad \frac{1}{m} \hat X^\top \hat X = I \quad (\epsilon = 0).

Two ways to get ``Sigma^{-1/2}``:

* **ZCA** (decorrelated batch norm, Huang et al. 2018, arXiv:1804.08450, Algorithm 1 and
  Eq. 5-6): ``Sigma = D Lambda D^T``, ``U = D Lambda^{-1/2} D^T``. ZCA (rather than PCA) is the
  whitening that changes the data least, which the paper shows avoids "stochastic axis
  swapping".
* **IterNorm** (Huang et al. 2019, arXiv:1904.03441, Algorithm 1, Eq. 4-6): ``T`` Newton-Schulz
  iterations on the trace-normalized covariance, only matrix products, no eigendecomposition:
  ``Sigma_N = Sigma / tr(Sigma)``, ``P_0 = I``, ``P_k = (3 P_{k-1} - P_{k-1}^3 Sigma_N) / 2``,
  ``U = P_T / sqrt(tr(Sigma))``. It converges to the ZCA matrix as ``T`` grows; a small ``T``
  whitens only partially, which the paper finds regularises well (default ``T = 5``).

Features are split into groups of ``group_size`` (the papers' ``G``); each group is whitened
separately, which bounds the cost at ``O(d G^2)`` and improves conditioning.

The mean comes from :func:`jnorm._stats.shifted_moments` (the exact corrected two-pass kernel; the
centred data is ``(x - shift) - mean_shifted``), the running mean and whitening matrix are
updated by :func:`jnorm.update_batch_stats` (elementwise, so a matrix takes the place of the
variance), and the learned affine step is :func:`jnorm.normalize`. What is new here is only
the cross-moment ``X_c^T X_c / m`` and the inverse square root.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jnorm._axes import feature_param, one_axis, resolve_groups
from jnorm._checks import (
    as_input,
    as_positive_int,
    check_dtype,
    check_epsilon,
    check_momentum,
    check_state,
    check_training,
)
from jnorm._normalize import normalize, output_dtype
from jnorm._state import BatchStats, update_batch_stats
from jnorm._stats import shifted_moments
from jnorm._typing import Axes, DTypeLike

__all__ = ["WhiteningStats", "decorrelated_batch_norm", "iter_norm", "whitening_matrix"]

_HIGHEST = lax.Precision.HIGHEST


class WhiteningStats(NamedTuple):
    """Running statistics of whitening batch norm: mean and whitening matrix per group.

    A pytree (``NamedTuple``). ``C`` is the number of features, ``G`` the group size and
    ``K = C / G`` the number of groups; feature ``c`` is entry ``c % G`` of group ``c // G``.

    Attributes:
      mean: running mean.
      whitening: running whitening matrices ``U`` (``Sigma^{-1/2}``) of each group; eval mode
        computes ``(x - mean) U^T``.
      count: number of updates so far (saturating int32), as in :class:`jnorm.BatchStats`.

    Examples:
      >>> import jnorm
      >>> s = jnorm.WhiteningStats.init(6, group_size=3)
      >>> s.mean.shape, s.whitening.shape, int(s.count)
      ((6,), (2, 3, 3), 0)
    """

    mean: jax.Array  # shape=(C,), dtype=float32
    whitening: jax.Array  # shape=(K, G, G), dtype=float32; identity at init
    count: jax.Array  # shape=(), dtype=int32

    @classmethod
    def init(
        cls, num_features: int, *, group_size: int | None = None, dtype: DTypeLike = jnp.float32
    ) -> WhiteningStats:
        """Fresh statistics: mean 0, identity whitening matrices, count 0."""
        num_features = as_positive_int(num_features, "num_features",
                                           layer="WhiteningStats.init")
        check_dtype(dtype, layer="WhiteningStats.init", floating=True)
        g = _group_size(int(num_features), group_size, layer="WhiteningStats.init")
        eye = jnp.broadcast_to(jnp.eye(g, dtype=dtype), (num_features // g, g, g))
        return cls(jnp.zeros((num_features,), dtype), eye, jnp.zeros((), jnp.int32))


def _group_size(channels: int, group_size: int | None, *, layer: str) -> int:
    """Features whitened together: all (None) or `group_size`, which must divide them."""
    if group_size is None:
        return channels
    return channels // resolve_groups(channels, None, group_size, layer=layer)


def whitening_matrix(
    cov: jax.Array, *, method: str = "zca", iterations: int = 5
) -> jax.Array:
    r"""The whitening matrix ``U ~ Sigma^{-1/2}`` of (a batch of) covariance matrices.

    ``method="zca"``: ``U = D \Lambda^{-1/2} D^T`` from ``Sigma = D \Lambda D^T`` (Huang et al.
    2018, Eq. 6). ``method="newton_schulz"``: IterNorm's ``T = iterations`` steps (Huang et al.
    2019, Algorithm 1): ``P_k = (3 P_{k-1} - P_{k-1}^3 Sigma_N) / 2`` with
    ``Sigma_N = Sigma / tr(Sigma)``, then ``U = P_T / sqrt(tr(Sigma))``. The iterates are
    computed in the coupled Newton-Schulz form (``Y_0 = Sigma_N``, ``Z_0 = I``,
    ``T = (3I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``), whose ``Z_k`` equals ``P_k`` in exact
    arithmetic but which stays stable for any number of iterations.

    Shapes: ``cov: [..., G, G]`` symmetric positive semi-definite (add epsilon before); returns
    the same shape. With ``"zca"``, eigenvalues below eigh's rounding level
    (``G * eps * lambda_max``) are raised to it, so a singular covariance gives a finite ``U``.

    Accuracy. Measure ``U`` by the covariance it leaves, ``C = U Sigma U^T`` (``I`` for exact
    ZCA). With ``d = G``, eigenvalues ``lambda_1 >= ... >= lambda_d > 0`` of ``Sigma``,
    ``kappa = lambda_1 / lambda_d``, ``s = lambda_d / tr(Sigma) >= 1 / (1 + (d - 1) kappa)`` and
    ``u`` the unit roundoff of the dtype (``2^-24`` in float32), to first order in ``u``:

    .. math::  \|C - I\|_2 \;\le\; \tau_T(s) + c\, d\, u / s,
               \qquad \tau_T(s) = 1 - e_T^2, \quad e_0 = \sqrt{s}, \quad
               e_{k+1} = \tfrac{1}{2} e_k (3 - e_k^2),

    ``c`` a small constant (the tests hold ``c = 1``).

    * Truncation (exact arithmetic): ``P_T`` is a polynomial in ``Sigma_N``, so on each
      eigenvector ``e = sqrt(s_i) p_T(s_i)`` follows the scalar map above and ``C`` has the
      eigenvalues ``e_T(s_i)^2``. The map increases on ``[0, 1]``: the smallest eigenvalue is the
      worst, hence ``tau_T(s)`` (0 for ZCA). As ``1 - e_{k+1} = (1 - e_k)^2 (2 + e_k) / 2``, ``e``
      grows by 1.5x per step while small, then the error squares each step: about
      ``ln(1/s) / (2 ln 1.5) + 4`` steps reach float32 accuracy (``s = 3e-5``: 17).
    * Rounding: the coupled form is stable (Higham, *Functions of Matrices*, 2008, ch. 6): a
      rounding error is not amplified by later steps. The errors of the early steps, each at
      most ``~d u`` relative to ``||Sigma_N|| <= 1`` (a ``d``-term product, in any summation
      order, with or without FMA), act as a perturbation ``Delta`` of ``Sigma_N``, which moves
      ``C`` by ``||Sigma_N^{-1/2} Delta Sigma_N^{-1/2}|| <= ||Delta|| / s``. That is the floor of
      any backward-stable whitening, ZCA by ``eigh`` included (same form): once converged, the
      error does not shrink with more steps. In float32 with ``kappa = 1.5e4, d = 6``
      (``u / s = 1.8e-3``), ``C`` levels off at a few ``1e-4`` from identity whatever the
      method; the exact level depends on the CPU's summation order, the bound does not.

    ``tests/core/test_extra_methods.py`` checks the bound against the same iteration in float64 and
    exact ZCA for ``d`` in {4, 16}, ``kappa`` up to 1e5 and ``T`` in {3, 8, 30}, also with
    products summed in other orders.

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> cov = jnp.array([[4.0, 0.0], [0.0, 9.0]])
      >>> [[round(v, 4) for v in row] for row in jnorm.whitening_matrix(cov).tolist()]
      [[0.5, 0.0], [0.0, 0.3333]]
      >>> import numpy as np  # kappa = 1e4, d = 3: converged, within d u / s of white
      >>> q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
      >>> c = ((q * [1.0, 1e-2, 1e-4]) @ q.T).astype(np.float32)
      >>> u = np.asarray(jnorm.whitening_matrix(jnp.asarray(c), method="newton_schulz",
      ...                                       iterations=30), float)
      >>> c = c.astype(float)  # the float32 matrix whitened, exactly
      >>> s = np.linalg.eigvalsh(c)[0] / np.trace(c)
      >>> bool(np.linalg.norm(u @ c @ u.T - np.eye(3), 2) <= 3 * 2.0**-24 / s)
      True
    """
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(
            f"whitening_matrix: `cov` must be [..., G, G] square matrices, got shape "
            f"{cov.shape}. Pass covariance matrices."
        )
    if method == "zca":
        lam, d = jnp.linalg.eigh(cov)
        # eigh's eigenvalues are accurate to about G * eps * lambda_max: for a singular
        # covariance (fewer rows than features) they come out slightly negative or ~0 even with
        # epsilon on the diagonal. Floored there (and at the smallest normal number), U stays
        # finite; the directions concerned hold no data.
        info = jnp.finfo(lam.dtype)
        floor = cov.shape[-1] * info.eps * jnp.max(jnp.abs(lam), axis=-1, keepdims=True)
        inv_sqrt = lax.rsqrt(jnp.maximum(lam, jnp.maximum(floor, info.tiny)))
        return jnp.einsum("...ik,...k,...jk->...ij", d, inv_sqrt, d, precision=_HIGHEST)
    if method == "newton_schulz":
        iterations = as_positive_int(iterations, "iterations", layer="whitening_matrix")
        trace = jnp.trace(cov, axis1=-2, axis2=-1)[..., None, None]
        cov_n = cov / trace
        eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)

        def step(carry: tuple[jax.Array, jax.Array], _: Any) -> tuple[Any, None]:
            # Coupled form: Z_k = P_k and Y_k = Sigma_N P_k in exact arithmetic, so
            # Z_{k+1} = (3 Z_k - Z_k^3 Sigma_N) / 2 is the paper's step; written this way
            # rounding errors do not grow (the uncoupled form diverges after ~10 steps).
            y, z = carry
            t = 1.5 * eye - 0.5 * jnp.matmul(z, y, precision=_HIGHEST)
            y = jnp.matmul(y, t, precision=_HIGHEST)
            return (y, jnp.matmul(t, z, precision=_HIGHEST)), None

        (_, p), _ = lax.scan(step, (cov_n, eye), None, length=int(iterations))
        return p * lax.rsqrt(trace)
    raise ValueError(
        f"whitening_matrix: `method` must be 'zca' or 'newton_schulz', got {method!r}."
    )


def _whitening_norm(
    x: jax.Array,
    state: WhiteningStats,
    scale: jax.Array | None,
    bias: jax.Array | None,
    *,
    training: bool,
    method: str,
    iterations: int,
    group_size: int | None,
    feature_axes: Axes,
    momentum: float | None,
    epsilon: float,
    dtype: DTypeLike | None,
    name: str,
    skip_nonfinite: bool = False,
) -> tuple[jax.Array, WhiteningStats]:
    x = as_input(x, layer=name)
    if x.ndim < 2:
        raise ValueError(
            f"{name}: `x` must have a batch axis and a feature axis, got shape {x.shape}. "
            "Pass at least (N, C)."
        )
    check_training(training, layer=name)
    ch = one_axis(feature_axes, x.ndim, "feature_axes")
    c = x.shape[ch]
    g = _group_size(c, group_size, layer=name)
    k = c // g
    check_state(
        state, WhiteningStats, {"mean": (c,), "whitening": (k, g, g)},
        init=f"WhiteningStats.init({c}, group_size={group_size})", layer=name,
    )
    check_momentum(momentum, layer=name)
    check_epsilon(epsilon, layer=name)
    check_dtype(dtype, layer=name)
    if method == "newton_schulz":
        as_positive_int(iterations, "iterations", layer=name)
    out = output_dtype(x.dtype, dtype)
    xm = jnp.moveaxis(x, ch, -1)
    moved_shape = xm.shape
    x2 = xm.reshape(-1, c)  # [M, C]
    if training and x2.shape[0] < 2:
        raise ValueError(
            f"{name} in training needs at least 2 rows per feature, got an input of shape "
            f"{x.shape}. Use a larger batch or training=False."
        )
    if training:
        m = shifted_moments(x2, (0,))
        acc = m.shift.dtype
        xc = (x2.astype(acc) - m.shift) - m.mean_shifted  # [M, C] centred
        xg = xc.reshape(-1, k, g)
        n = m.count[0, 0]
        cov = jnp.einsum("mki,mkj->kij", xg, xg, precision=_HIGHEST) / n
        cov = cov + jnp.asarray(epsilon, acc) * jnp.eye(g, dtype=acc)[None]
        u = whitening_matrix(cov, method=method, iterations=iterations)
        batch_mean = m.mean[0]
        new = update_batch_stats(
            # update_batch_stats is elementwise: the whitening matrix takes the variance's place.
            BatchStats(state.mean, state.whitening, state.count),
            batch_mean,
            u,
            n,
            momentum=momentum,
        )
        new_state = WhiteningStats(new.mean, new.var, new.count)
        if skip_nonfinite:
            # Per group: its mean and whitening matrix are written only if all are finite.
            ok = jnp.all(jnp.isfinite(batch_mean.reshape(k, g)), axis=1) & jnp.all(
                jnp.isfinite(u), axis=(1, 2)
            )
            new_state = WhiteningStats(
                jnp.where(jnp.repeat(ok, g), new.mean, state.mean),
                jnp.where(ok[:, None, None], new.var, state.whitening),
                jnp.where(jnp.any(ok), new.count, state.count),
            )
    else:
        acc = jnp.promote_types(x.dtype, jnp.float32)
        xg = (x2.astype(acc) - state.mean.astype(acc)[None]).reshape(-1, k, g)
        u = state.whitening.astype(acc)
        new_state = state
    xw = jnp.einsum("mkj,kij->mki", xg, u, precision=_HIGHEST).reshape(moved_shape)
    xw = jnp.moveaxis(xw, -1, ch)
    # The learned affine step a * x_hat + b, by the one affine kernel (mean 0, variance 1).
    y = normalize(
        xw, jnp.zeros((), acc), jnp.ones((), acc),
        feature_param(scale, x.shape, (ch,), name="scale"),
        feature_param(bias, x.shape, (ch,), name="bias"),
        epsilon=0.0, dtype=out,
    )
    return y, new_state


def decorrelated_batch_norm(
    x: jax.Array,
    state: WhiteningStats,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    training: bool,
    group_size: int | None = None,
    feature_axes: Axes = -1,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    dtype: DTypeLike | None = None,
    skip_nonfinite: bool = False,
) -> tuple[jax.Array, WhiteningStats]:
    r"""Decorrelated batch norm with ZCA whitening (Huang et al. 2018, arXiv:1804.08450).

    Algorithm 1 of the paper, per group of ``G = group_size`` features:

    .. math::  \mu = \tfrac{1}{m} X 1, \quad X_c = X - \mu 1^\top, \quad
               \Sigma = \tfrac{1}{m} X_c X_c^\top + \epsilon I, \quad
               \Sigma = D \Lambda D^\top, \quad U = D \Lambda^{-1/2} D^\top, \quad
               \hat X = U X_c,

    then ``y = a * x_hat + b`` per feature. The batch's rows are every position of every
    example: all axes but ``feature_axes`` (for ``(N, H, W, C)`` that is ``m = N H W``). Training
    updates the running mean and whitening matrix with ``momentum`` (flax's convention, as in
    :func:`jnorm.batch_norm`); eval computes ``U_run (x - mu_run)``.

    With ``group_size=1`` this is batch norm (``U = (sigma^2 + eps)^{-1/2}``). Derivatives go
    through ``jnp.linalg.eigh``: they are exact when the covariance's eigenvalues are distinct
    (use ``epsilon``, groups and batches larger than ``G``; :func:`iter_norm` avoids the issue).

    Shapes: ``x: [N, ..., C]`` (features on ``feature_axes``); ``state``: ``WhiteningStats.init(C,
    group_size=G)``; ``scale``, ``bias``: ``[C]``. Returns ``(y, new_state)``, ``y`` like ``x``.

    Args:
      x: input.
      state: running statistics.
      scale, bias: optional per-feature gain and offset.
      training: Python bool: batch statistics (and update) or running statistics.
      group_size: features whitened together, dividing ``C``; None: all ``C`` together.
      feature_axes: the feature axis, one axis.
      momentum: weight of the old running value, or None for a cumulative average.
      epsilon: added to the covariance's diagonal.
      dtype: output dtype (default ``x``'s).
      skip_nonfinite: keep the running statistics of a group whose batch mean or whitening
        matrix is NaN or infinite (as in :func:`jnorm.batch_norm`).

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> x = jax.random.normal(jax.random.key(0), (256, 3)) @ jnp.array(
      ...     [[1.0, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 2.0]])
      >>> y, state = jnorm.decorrelated_batch_norm(
      ...     x, jnorm.WhiteningStats.init(3), training=True, epsilon=0.0)
      >>> bool(jnp.allclose(jnp.cov(y.T, bias=True), jnp.eye(3), atol=1e-4))
      True
    """
    return _whitening_norm(
        x, state, scale, bias, training=training, method="zca", iterations=1,
        group_size=group_size, feature_axes=feature_axes, momentum=momentum, epsilon=epsilon,
        dtype=dtype,
        name="decorrelated_batch_norm", skip_nonfinite=skip_nonfinite,
    )


def iter_norm(
    x: jax.Array,
    state: WhiteningStats,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    training: bool,
    iterations: int = 5,
    group_size: int | None = None,
    feature_axes: Axes = -1,
    momentum: float | None = 0.99,
    epsilon: float = 1e-5,
    dtype: DTypeLike | None = None,
    skip_nonfinite: bool = False,
) -> tuple[jax.Array, WhiteningStats]:
    r"""Iterative normalization, IterNorm (Huang et al. 2019, arXiv:1904.03441).

    Whitening by Newton-Schulz iterations (Algorithm 1 of the paper), per group of ``G``:

    .. math::  \Sigma = \tfrac{1}{m} X_c X_c^\top + \epsilon I, \quad
               \Sigma_N = \Sigma / \mathrm{tr}(\Sigma), \quad P_0 = I, \quad
               P_k = \tfrac{1}{2}(3 P_{k-1} - P_{k-1}^3 \Sigma_N), \quad
               \hat X = \frac{P_T}{\sqrt{\mathrm{tr}(\Sigma)}} X_c,

    then ``y = a * x_hat + b``. Only matrix products: no eigendecomposition, stable gradients,
    cheap on accelerators. ``P_T`` tends to ``Sigma_N^{-1/2}`` (the ZCA matrix of
    :func:`decorrelated_batch_norm`) as ``T = iterations`` grows; the paper uses ``T = 5`` and
    ``G = 64`` and finds the partial whitening of small ``T`` generalises better. Running
    statistics, shapes and arguments as in :func:`decorrelated_batch_norm`.

    Accuracy: the covariance of the whitened batch, ``C = cov(x_hat)``, is within

    .. math::  \|C - I\|_2 \;\le\; \tau_T(s) + (d + \sqrt{m})\, u / s

    of identity, with ``s = lambda_min / tr(Sigma) >= 1 / (1 + (d - 1) kappa)`` for the ``d = G``
    features of a group, ``m`` rows, ``u`` the unit roundoff and ``tau_T`` the truncation error
    derived in :func:`whitening_matrix` (0 when converged). ``d u / s`` is the iteration's
    rounding; ``sqrt(m) u / s`` that of forming ``Sigma`` from ``m`` rows in float32 (the
    typical error of an ``m``-term sum in any order; ``m u`` at worst), which ZCA shares. So
    float32 whitening of an ill-conditioned group (``kappa = 1.5e4``: ``u / s = 1.8e-3``) is
    white only to ~``1e-4 .. 1e-3``; use ``epsilon``, smaller groups or float64 inputs for more.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> x = jax.random.normal(jax.random.key(0), (512, 4))
      >>> y, _ = jnorm.iter_norm(x, jnorm.WhiteningStats.init(4), training=True, iterations=20)
      >>> bool(jnp.allclose(jnp.cov(y.T, bias=True), jnp.eye(4), atol=1e-3))
      True
    """
    return _whitening_norm(
        x, state, scale, bias, training=training, method="newton_schulz",
        iterations=iterations, group_size=group_size, feature_axes=feature_axes, momentum=momentum,
        epsilon=epsilon, dtype=dtype, name="iter_norm", skip_nonfinite=skip_nonfinite,
    )

