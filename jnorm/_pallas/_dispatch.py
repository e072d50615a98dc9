"""Which program computes a row norm's forward value: the fused Pallas kernel or XLA.

Three questions, each answered where the answer is known:

* **Can the kernel be imported?** Only asked where it could run (a GPU backend exists, or
  ``implementation="pallas"``): ``jax.experimental.pallas`` is imported on first use, and if
  that fails the automatic choice warns once and keeps XLA.
* **Which platform runs the computation?** Not ``jax.default_backend()``: a computation placed
  on the CPU of a GPU host lowers for the CPU. :func:`jax.lax.platform_dependent` stages both
  programs and the lowering keeps the one for its platform: the compiled kernel for CUDA
  (and ROCm when requested), XLA (automatic) or Pallas' interpret mode (requested) elsewhere.
* **How is the input sharded?** Pallas calls need every operand whole on a device. Rows split
  over explicit mesh axes run the kernel per shard (:func:`jax.shard_map`: each row's
  statistics are local); a split last axis, or axes the partitioner shards (``Auto``), keep
  XLA in the automatic choice, and ``implementation="pallas"`` refuses a split last axis
  (:func:`jnorm._pallas._support.unsupported`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jnorm._pallas._support import _aval, sharded_features, suits, varying_axes
from jnorm._stats import Moments

__all__ = ["gpu_present", "kernels", "row_norm"]

Value = tuple[jax.Array, Moments]


@functools.cache
def gpu_present() -> bool:
    """Whether this process has a CUDA backend (so a computation may lower for it)."""
    try:
        return bool(jax.devices("cuda"))
    except Exception:  # jax raises RuntimeError for an absent backend, varies
        return False


def may_take_kernel(
    x: jax.Array, axes: tuple[int, ...], scale: jax.Array | None, bias: jax.Array | None, *,
    center: bool,
) -> bool:
    """Whether the automatic choice may stage the kernel for this call: a CUDA backend in the
    process and a shape where the kernel pays (:func:`row_norm` still decides per platform)."""
    return x.size > 0 and suits(x, axes, scale, bias, center=center) and gpu_present()


@functools.cache
def _import_kernels() -> tuple[ModuleType | None, str | None]:
    try:
        from jnorm._pallas import _row_norm
    except Exception as e:  # any failure of jax's Pallas API costs the kernel
        return None, f"{type(e).__name__}: {e}"
    return _row_norm, None


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def kernels(*, required: bool) -> ModuleType | None:
    """The kernel module :mod:`jnorm._pallas._row_norm`, imported on first use.

    Where it cannot be imported (jax moved or dropped its Pallas/Triton API): None with one
    warning, or, if `required` (``implementation="pallas"``), a ValueError naming the fix.
    """
    module, error = _import_kernels()
    if module is not None:
        return module
    if required:
        raise ValueError(
            f"implementation='pallas': the fused Pallas kernel cannot be imported with jax "
            f"{jax.__version__} ({error}). Pass implementation=None (automatic) or 'xla'."
        )
    _warn_once("import", f"jnorm: the fused Pallas kernel cannot be imported with jax "
                         f"{jax.__version__} ({error}); layer_norm uses XLA (same values).")
    return None


def _row_axes(x: jax.Array) -> tuple[Any, frozenset[str], bool]:
    """``(mesh, explicit mesh axes that split x's rows, whether Auto axes may split x)``."""
    sharding = getattr(_aval(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True) or mesh.size == 1:
        return None, frozenset(), False
    kinds = dict(zip(mesh.axis_names, (str(t).rsplit(".", 1)[-1] for t in mesh.axis_types),
                     strict=True))
    auto = any(kinds[a] == "Auto" and mesh.shape[a] > 1 for a in mesh.axis_names)
    used = set()
    for entry in tuple(sharding.spec)[: x.ndim - 1]:
        for a in (entry if isinstance(entry, (tuple, list)) else (entry,)):
            if a is not None and kinds.get(a) == "Explicit":
                used.add(a)
    return mesh, frozenset(used), auto


def _kernel_program(
    module: ModuleType, x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *,
    epsilon: float, center: bool, out_dtype: Any, like: Value, interpret: bool,
) -> Callable[[jax.Array], Value]:
    """The kernel's ``x -> (y, moments)`` (per shard where x's rows are split), its outputs
    typed as the XLA program's (`like`), so both can be branches of one conditional."""
    d = x.shape[-1]
    scale = jnp.ones((d,), jnp.float32) if scale is None else scale.reshape(d)
    bias = jnp.zeros((d,), jnp.float32) if bias is None else bias.reshape(d)
    y_like, m_like = like

    def local(x: jax.Array, scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, ...]:
        y, shift, mean, var = module.row_norm_forward(
            x.reshape(-1, d), scale, bias, epsilon=epsilon, center=center,
            out_dtype=out_dtype, interpret=interpret,
        )
        keep = x.shape[:-1] + (1,)
        stats = (s.reshape(keep).astype(t.dtype) for s, t in zip(
            (shift, mean, var), (m_like.shift, m_like.mean_shifted, m_like.var), strict=True))
        return (y.reshape(x.shape).astype(y_like.dtype), *stats,
                jnp.full(keep, d, m_like.count.dtype))

    mesh, split, _ = _row_axes(x)
    if split:
        spec = (tuple(_aval(x).sharding.spec) + (None,) * x.ndim)[: x.ndim]
        x_spec, stat_spec = P(*spec), P(*spec[:-1], None)
        local = jax.shard_map(  # every row's statistics are within its shard
            local, mesh=mesh, in_specs=(x_spec, P(None), P(None)),
            out_specs=(x_spec, stat_spec, stat_spec, stat_spec, stat_spec),
            axis_names=split, check_vma=False,
        )

    def program(x: jax.Array) -> Value:
        y, shift, mean, var, count = local(x, scale, bias)
        return y, Moments(shift, mean, var, count)

    return program


def row_norm(
    x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, *, axes: tuple[int, ...],
    epsilon: float, center: bool, out_dtype: Any, implementation: str | None,
    xla: Callable[[], Value],
) -> Value:
    """The forward value ``(y, moments)`` of a row norm, from the kernel or from `xla()`.

    `implementation`: None (automatic: the compiled kernel where the computation lowers for
    CUDA and :func:`jnorm._pallas._support.suits` says it pays, unsplit or split by rows over
    explicit mesh axes; XLA everywhere else), ``"pallas"`` (the kernel: compiled on CUDA/ROCm,
    interpret mode elsewhere, except inside a ``shard_map`` with ``check_vma``, where jax's
    interpreter fails and XLA serves; the caller has checked
    :func:`~jnorm._pallas._support.unsupported`) or ``"xla"``. Empty batches always take XLA.
    """
    if implementation == "xla" or x.size == 0:
        return xla()
    if implementation is None:
        if not suits(x, axes, scale, bias, center=center) or not gpu_present():
            return xla()
        _, _, auto = _row_axes(x)
        if auto or sharded_features(x):
            return xla()  # the partitioner would gather the kernel's operands, or must
        module = kernels(required=False)
        if module is None:
            return xla()
        try:
            kernel = _kernel_program(module, x, scale, bias, epsilon=epsilon, center=center,
                                     out_dtype=out_dtype, like=jax.eval_shape(xla),
                                     interpret=False)
            return jax.lax.platform_dependent(x, cuda=kernel, default=lambda _: xla())
        except Exception as e:  # jax's Pallas API changed under us: keep XLA
            _warn_once("trace", f"jnorm: the fused Pallas kernel failed to trace with jax "
                                f"{jax.__version__} ({type(e).__name__}: {e}); layer_norm "
                                "uses XLA (same values).")
            return xla()
    module = kernels(required=True)
    like = jax.eval_shape(xla)

    def program(interpret: bool) -> Callable[[jax.Array], Value]:
        return _kernel_program(module, x, scale, bias, epsilon=epsilon, center=center,
                               out_dtype=out_dtype, like=like, interpret=interpret)

    # jax's Pallas interpreter fails on inputs varying over manual mesh axes (a shard_map
    # with check_vma): there, off GPU, XLA gives the same values.
    elsewhere = (lambda _: xla()) if varying_axes(x) else program(True)
    compiled = program(False)
    return jax.lax.platform_dependent(x, cuda=compiled, rocm=compiled, default=elsewhere)
