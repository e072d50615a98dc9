r"""Spectral normalization (Miyato et al. 2018, arXiv:1802.05957, Eq. 8 and Algorithm 1).

The kernel is divided by its largest singular value, estimated by power iteration whose vector
``u`` is carried from step to step as explicit state (as :class:`jnorm.BatchStats` is for batch
norm). Kernels use flax's layout, output features last: a ``[..., O]`` kernel (``Dense``
``[I, O]``, ``Conv`` ``[kh, kw, I, O]``) is viewed as the matrix ``W`` of shape
``[prod(...), O]``, as :class:`flax.linen.SpectralNorm` does, so ``u`` has ``O`` entries and
the layer's output is ``x @ W / sigma``.

Compared with ``flax.linen.SpectralNorm``, on the same iteration (so the two agree given the
same ``u``):

* :func:`spectral_norm_init` gives the *exact* top singular vector (one SVD at
  initialisation), so ``sigma`` is exact from the first step; flax starts from a random ``u``
  and one iteration, under-estimating ``sigma`` (the normalized kernel's spectral norm is then
  above 1) for the first steps of training;
* the iteration runs in at least float32 for half-precision kernels;
* the math is a function with explicit state, usable without flax; ``sigma`` is returned (and
  kept in ``batch_stats`` by :class:`jnorm.linen.SpectralNorm`, under flax's variable names).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jnorm._checks import as_kernel, as_positive_int, check_nonnegative
from jnorm._stats import accumulation_dtype
from jnorm._typing import DTypeLike

__all__ = ["spectral_norm", "spectral_norm_init"]


def _matrix(kernel: Any, name: str) -> tuple[jax.Array, jax.Array]:
    kernel = as_kernel(kernel, layer=name)
    acc = accumulation_dtype(kernel.dtype)
    return kernel, kernel.reshape(-1, kernel.shape[-1]).astype(acc)


def _l2_normalize(v: jax.Array, epsilon: jax.Array) -> jax.Array:
    """``v / max(||v||, epsilon)`` (PyTorch's ``F.normalize``), the norm computed on ``v``
    scaled by its largest entry so tiny kernels neither underflow nor meet ``epsilon``."""
    big = jnp.max(jnp.abs(v))
    safe = jnp.where(big > 0, big, jnp.ones_like(big))
    norm = big * jnp.sqrt(jnp.sum(jnp.square(v / safe)))
    return v / jnp.maximum(norm, epsilon)


def spectral_norm_init(kernel: jax.Array) -> jax.Array:
    r"""The power-iteration state that makes :func:`spectral_norm` exact at once: the right
    singular vector of the largest singular value of ``W = kernel.reshape(-1, O)`` (one SVD,
    in at least float32).

    Shapes: ``kernel: [..., O]``; returns ``u: [O]`` (unit norm; float32, or float64 for a
    float64 kernel).

    Examples:
      >>> import jax.numpy as jnp, jnorm
      >>> u = jnorm.spectral_norm_init(jnp.array([[3.0, 0.0], [0.0, 1.0]]))
      >>> [abs(round(v, 6)) for v in u.tolist()]
      [1.0, 0.0]
    """
    _, w = _matrix(kernel, "spectral_norm_init")
    _, _, vh = jnp.linalg.svd(w, full_matrices=False)
    return vh[0]


def spectral_norm(
    kernel: jax.Array,
    u: jax.Array,
    *,
    n_steps: int = 1,
    epsilon: float = 1e-12,
    dtype: DTypeLike | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Spectral normalization (Miyato et al. 2018, arXiv:1802.05957, Eq. 8, Algorithm 1).

    .. math::  v_t = \frac{W u_{t-1}}{\lVert W u_{t-1} \rVert}, \quad
               u_t = \frac{W^\top v_t}{\lVert W^\top v_t \rVert}\ (t = 1..n), \qquad
               \sigma = v_n^\top W u_n, \qquad \bar W = W / \sigma

    with ``W = kernel.reshape(-1, O)`` (flax's layout, ``[fan-in, O]``; the paper's matrix is
    its transpose, so its ``u`` is this ``u``), each vector divided by ``max(||z||, epsilon)``
    (PyTorch's rule; flax's ``sqrt(sum z^2 + epsilon)`` misjudges kernels below ~1e-6) and
    ``n = n_steps``. ``n_steps=0`` uses ``u`` as it is (``v_0 = W u / ||W u||``, so
    ``sigma = ||W u||``: PyTorch's evaluation mode). As in the paper, ``u`` and ``v`` are
    constants for differentiation (``stop_gradient``): the gradient is that of ``W / (v^T W u)``,
    which at convergence is the gradient of ``W / sigma_max(W)``. A zero kernel is returned
    unchanged (``sigma = 0`` is not divided by, as in flax).

    Carry ``new_u`` to the next training step; start it with :func:`spectral_norm_init`
    (exact) or a random unit vector (flax's start, ``sigma`` then needs some steps to converge).

    Shapes: ``kernel: [..., O]``; ``u: [O]``. Returns ``(kernel / sigma, new_u, sigma)``: the
    normalized kernel in ``kernel``'s shape and dtype (``dtype`` overrides), ``new_u: [O]`` and
    the scalar ``sigma``, both in at least float32.

    Examples:
      >>> import jax, jax.numpy as jnp, jnorm
      >>> w = jax.random.normal(jax.random.key(0), (3, 3, 4, 8))  # a conv kernel
      >>> u = jnorm.spectral_norm_init(w)
      >>> w_sn, u, sigma = jnorm.spectral_norm(w, u)
      >>> exact = jnp.linalg.svd(w.reshape(-1, 8), compute_uv=False)[0]
      >>> bool(jnp.allclose(sigma, exact, rtol=1e-5)), w_sn.shape, u.shape
      (True, (3, 3, 4, 8), (8,))
    """
    kernel, w = _matrix(kernel, "spectral_norm")
    n_steps = as_positive_int(n_steps, "n_steps", minimum=0, layer="spectral_norm")
    check_nonnegative(epsilon, "epsilon", layer="spectral_norm")
    u = jnp.asarray(u)
    out_features = kernel.shape[-1]
    if u.shape != (out_features,):
        raise ValueError(
            f"spectral_norm: `u` has shape {u.shape}; expected ({out_features},), one entry per "
            f"output feature (the kernel's last axis). Create it with "
            "jnorm.spectral_norm_init(kernel)."
        )
    eps = jnp.asarray(epsilon, w.dtype)
    u = jax.lax.stop_gradient(u.astype(w.dtype))
    w_const = jax.lax.stop_gradient(w)
    v = _l2_normalize(w_const @ u, eps)
    for t in range(int(n_steps)):
        u = _l2_normalize(w_const.T @ v, eps)
        if t < n_steps - 1:
            v = _l2_normalize(w_const @ u, eps)
    u = jax.lax.stop_gradient(u)
    v = jax.lax.stop_gradient(v)
    sigma = v @ (w @ u)
    w_sn = w / jnp.where(sigma != 0, sigma, jnp.ones((), sigma.dtype))
    out = w_sn.reshape(kernel.shape).astype(kernel.dtype if dtype is None else dtype)
    return out, u, sigma
