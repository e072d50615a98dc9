"""One registry of every public normalization: the function, its modules, its float64 oracle.

Each :class:`Entry` says how to call a public jnorm function on a small input, what a float64
NumPy transcription of its formula returns, which property flags it has (stateful, takes an
``epsilon``/``momentum``/``mask``/``dtype``, differentiable, half precision), its bad-argument
cases, and which :mod:`jnorm.linen` (and :mod:`jnorm.nnx`) modules wrap it, with how the module's
variables map onto the function's arguments. ``tests/core/test_registry.py`` runs the accuracy,
transformation (jit, vmap, grad), error and module tests over :data:`REGISTRY`, and fails when a
public name of ``jnorm``, ``jnorm.linen`` or ``jnorm.nnx`` is in none of it.

Adding a layer: add an :class:`Entry` (and its module cases); the coverage test fails until
you do. Public names that are not normalizations (kernels, state types, tools) are listed in
:data:`SUPPORT` with the test module that covers them. nnx modules: their class names are in
``Entry.nnx`` (the linen modules' names; ``tests/frontends/test_nnx.py`` tests them).

The comparisons with flax's modules of the same name are here too: ``ModuleCase.flax`` and
``ModuleCase.flax_nnx`` (collected in :data:`FLAX_LINEN_CASES` and :data:`FLAX_NNX_CASES`, run by
``tests/frontends/test_linen.py`` and ``tests/frontends/test_nnx.py``); the coverage tests fail
for a module whose class name flax also has and that has none.

The core layers (batch, layer, RMS, instance and group norm: the generic standardisation over
different axes) are the entries whose oracle is a :class:`Standardization`; :data:`CORE` lists
them and :meth:`Entry.apply` calls them as ``(x, scale, bias, mask)`` for the tests that probe
the standardisation itself (exact statistics, properties, transforms, leaks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jnorm

# --------------------------------------------------------------------- float64 references


def ref_norm(
    x: np.ndarray,
    axes: tuple[int, ...],
    *,
    epsilon: float,
    center: bool = True,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """float64 reference of the standardisation over `axes` (no scale/bias)."""
    x = np.asarray(x, np.float64)
    w = np.ones_like(x) if mask is None else np.broadcast_to(mask, x.shape).astype(np.float64)
    n = np.maximum(w.sum(axes, keepdims=True), 1.0)
    mean = (w * x).sum(axes, keepdims=True) / n if center else 0.0
    var = (w * (x - mean) ** 2).sum(axes, keepdims=True) / n
    return (x - mean) / np.sqrt(var + epsilon)


def channel_param(p: Any, ndim: int) -> np.ndarray | None:
    """A per-channel vector reshaped to broadcast against an ``(N, ..., C)`` array."""
    return None if p is None else np.asarray(p, np.float64).reshape((1,) * (ndim - 1) + (-1,))


View = Callable[[np.ndarray], tuple[np.ndarray, tuple[int, ...]]]


def _batch_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, tuple(range(x.ndim - 1))


def _layer_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, (x.ndim - 1,)


def _instance_view(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return x, tuple(range(1, x.ndim - 1))


def _group_view(x: np.ndarray, groups: int = 2) -> tuple[np.ndarray, tuple[int, ...]]:
    xs = x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))
    return xs, tuple(range(1, xs.ndim - 2)) + (xs.ndim - 1,)


@dataclasses.dataclass(frozen=True)
class Standardization:
    """A core layer's float64 oracle: standardise over the axes ``view`` names, then scale and
    shift per channel.

    ``view(x)`` reshapes an ``(N, ..., C)`` input (group norm splits C into 2 groups) and names
    the statistics axes of the view; ``epsilon`` is the layer's default; ``center=False`` divides
    by the root mean square (RMS norm), ``has_bias=False`` means the layer takes no bias. As an
    :attr:`Entry.ref` it is called ``ref(x, params)``.
    """

    view: View
    epsilon: float
    center: bool = True
    has_bias: bool = True

    def __call__(self, x: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
        return self.standardize(x, p.get("scale"), p.get("bias"), p.get("mask"))

    def standardize(self, x: Any, scale: Any = None, bias: Any = None,
                    mask: Any = None) -> np.ndarray:
        """float64 output of the definition."""
        x = np.asarray(x, np.float64)
        xv, axes = self.view(x)
        mv = None if mask is None else self.view(np.broadcast_to(mask, x.shape))[0]
        y = ref_norm(xv, axes, epsilon=self.epsilon, center=self.center, mask=mv)
        y = y.reshape(x.shape)
        if scale is not None:
            y = y * channel_param(scale, x.ndim)
        if bias is not None and self.has_bias:
            y = y + channel_param(bias, x.ndim)
        return y

    def grad(self, x: Any, scale: Any, cotangent: Any) -> np.ndarray:
        """float64 gradient of ``sum(cotangent * y)`` w.r.t. ``x``, in closed form."""
        x = np.asarray(x, np.float64)
        g = np.asarray(cotangent, np.float64)
        if scale is not None:
            g = g * channel_param(scale, x.ndim)
        xv, axes = self.view(x)
        gv = self.view(g)[0]
        mu = xv.mean(axes, keepdims=True) if self.center else 0.0
        xc = xv - mu
        s2 = (xc**2).mean(axes, keepdims=True) + self.epsilon
        out = gv - (gv.mean(axes, keepdims=True) if self.center else 0.0)
        out = (out - xc / s2 * (gv * xc).mean(axes, keepdims=True)) / np.sqrt(s2)
        return out.reshape(x.shape)


# ------------------------------------------------------------------- the other references


def _affine(y: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    if p.get("scale") is not None:
        y = y * channel_param(p["scale"], y.ndim)
    if p.get("bias") is not None:
        y = y + channel_param(p["bias"], y.ndim)
    return y


def _ref_renorm(x: np.ndarray, p: Mapping[str, Any], eps: float = 1e-5) -> np.ndarray:
    """Ioffe 2017, Algorithm 1 (fresh state: running mean 0, variance 1)."""
    axes = tuple(range(x.ndim - 1))
    mu, var = x.mean(axes), x.var(axes)
    sigma, run_sigma = np.sqrt(var + eps), np.sqrt(1.0 + eps)
    r = np.clip(sigma / run_sigma, 1 / 3.0, 3.0)
    d = np.clip(mu / run_sigma, -5.0, 5.0)
    return _affine((x - mu) / sigma * r + d, p)


def _whiten(x: np.ndarray, p: Mapping[str, Any], eps: float, iterations: int | None) -> Any:
    """ZCA (Huang et al. 2018) or IterNorm's Newton iteration (Huang et al. 2019)."""
    xc = x - x.mean(0)
    c = x.shape[-1]
    cov = xc.T @ xc / x.shape[0] + eps * np.eye(c)
    if iterations is None:
        lam, d = np.linalg.eigh(cov)
        u = d @ np.diag(lam**-0.5) @ d.T
    else:
        tr = np.trace(cov)
        u = np.eye(c)
        for _ in range(iterations):
            u = 0.5 * (3 * u - np.linalg.matrix_power(u, 3) @ (cov / tr))
        u = u / np.sqrt(tr)
    return _affine(xc @ u.T, p)


def _ref_evonorm_b0(x: np.ndarray, p: Mapping[str, Any], eps: float = 1e-5) -> np.ndarray:
    batch_var = x.var(tuple(range(x.ndim - 1)))
    inst_var = x.var(tuple(range(1, x.ndim - 1)), keepdims=True)
    v = channel_param(p["v"], x.ndim)
    den = np.maximum(np.sqrt(batch_var + eps), v * x + np.sqrt(inst_var + eps))
    return _affine(x / den, p)


def _ref_evonorm_s0(x: np.ndarray, p: Mapping[str, Any], eps: float = 1e-5) -> np.ndarray:
    xs, axes = _group_view(x)
    var = xs.var(axes, keepdims=True)
    v = channel_param(p["v"], x.ndim)
    num = x * (1 / (1 + np.exp(-v * x)))
    y = num.reshape(xs.shape) / np.sqrt(var + eps)
    return _affine(y.reshape(x.shape), p)


def _ref_frn(x: np.ndarray, p: Mapping[str, Any], eps: float = 1e-6) -> np.ndarray:
    nu2 = (x**2).mean(tuple(range(1, x.ndim - 1)), keepdims=True)
    return _affine(x / np.sqrt(nu2 + eps), p)


def _ref_lrn(x: np.ndarray, p: Mapping[str, Any], size: int = 3, alpha: float = 0.5,
             beta: float = 0.75, k: float = 1.5) -> np.ndarray:
    """torch.nn.LocalResponseNorm's window c - size//2 .. c + (size-1)//2, alpha / size."""
    c = x.shape[-1]
    sq = np.zeros_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)
        sq[..., ch] = (x[..., lo:hi] ** 2).sum(-1)
    return x / (k + alpha / size * sq) ** beta


def _ref_dyt(x: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    """Zhu et al. 2025, Eq. 1: scale * tanh(alpha * x) + bias (alpha scalar or per channel)."""
    alpha = np.asarray(p["alpha"], np.float64)
    return _affine(np.tanh((alpha if alpha.ndim == 0 else channel_param(alpha, x.ndim)) * x), p)


def _dyt_params(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Any]:
    return {**_sb(rng, shape),
            "alpha": (0.5 + 0.2 * rng.random(shape[-1])).astype(np.float32)}


def _fan_in(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    axes = tuple(range(w.ndim - 1))
    n = int(np.prod(w.shape[:-1]))
    return w.mean(axes), w.var(axes), n


def _ref_ws(w: np.ndarray, p: Mapping[str, Any], eps: float = 1e-5) -> np.ndarray:
    mu, var, _ = _fan_in(w)
    return (w - mu) / np.sqrt(var + eps)


def _ref_sws(w: np.ndarray, p: Mapping[str, Any], eps: float = 1e-4) -> np.ndarray:
    mu, var, n = _fan_in(w)
    return p["gain"] * 1.5 * (w - mu) / np.sqrt(n * var + eps)


def _ref_wn(w: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    norm = np.sqrt((w**2).sum(tuple(range(w.ndim - 1))))
    return p["g"] * w / norm


def _ref_spectral(w: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    return w / np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]


# ------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    """A module wrapping an entry's function: how to build it, call it, and call the function.

    ``fn(variables, x)`` calls the jnorm function with the module's variables and returns what
    the module returns (``(y, new_batch_stats)`` when ``mutable``).

    ``flax`` and ``flax_nnx`` are the comparisons with flax's module of the same name: each is
    the keyword arguments given to both ``flax.linen.<cls>`` and ``jnorm.linen.<cls>`` (resp.
    ``flax.nnx`` and ``jnorm.nnx``), which must then have the same variables, outputs and
    updates (tests/frontends/test_linen.py, tests/frontends/test_nnx.py). A module whose class
    name flax also has needs at least one (tests/core/test_registry.py checks).

    ``nnx_twin``: keyword arguments ``kw`` for which ``jnorm.nnx.<cls>(C, **kw)`` must be
    bitwise equal to its ``jnorm.linen`` twin on the same variables (tests/frontends/test_nnx.py;
    :data:`NNX_TWIN_CASES`).
    """

    cls: str
    kwargs: Mapping[str, Any]
    fn: Callable[[Any, jax.Array], Any]
    call_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mutable: bool = False
    wraps_dense: bool = False  # the module wraps a dense layer (linen: flax.linen.Dense(5))
    flax: tuple[Mapping[str, Any], ...] = ()
    flax_nnx: tuple[Mapping[str, Any], ...] = ()
    nnx_twin: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One public normalization.

    Attributes:
      name: its name in ``jnorm``.
      shape: input shape of the tests (for weight transforms: the kernel's).
      params: per-test arguments, from a NumPy generator.
      call: ``call(x, params)`` -> the output pytree (``(y, state)`` if stateful).
      ref: float64 oracle ``ref(x, params) -> y`` (a :class:`Standardization` for the core
        layers).
      flags: property flags (see :data:`FLAGS`).
      linen: module cases of :mod:`jnorm.linen`.
      companions: public helpers that belong to it (e.g. ``tlu`` to FRN).
      errors: ``(call(x), regex)``: entry-specific bad calls and the message they must give
        (the generic ones -- epsilon, momentum, training, dtype, mask -- follow the flags).
      rtol: float32 tolerance against the oracle (relative to the output's max).
      offset: data offset (data far from zero tests the statistics).
      state: ``state(x)``, a fresh state for input ``x`` (stateful entries).
    """

    name: str
    shape: tuple[int, ...]
    params: Callable[[np.random.Generator, tuple[int, ...]], dict[str, Any]]
    call: Callable[[jax.Array, Mapping[str, Any]], Any]
    ref: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]
    flags: frozenset[str]
    linen: tuple[ModuleCase, ...] = ()
    companions: tuple[str, ...] = ()
    errors: tuple[tuple[Callable[[jax.Array], Any], str], ...] = ()
    rtol: float = 1e-6  # observed <= 2.4e-7; a 10x epsilon in layer norm: 3.8e-6
    offset: float = 2.0
    state: Callable[[Any], Any] | None = None  # a fresh state for an input (stateful only)

    def __repr__(self) -> str:
        return self.name

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(jnorm, self.name)

    def data(self, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (self.offset + rng.standard_normal(self.shape) * 1.5).astype(dtype)

    def args(self, seed: int = 1) -> dict[str, Any]:
        return self.params(np.random.default_rng(seed), self.shape)

    @property
    def nnx(self) -> tuple[str, ...]:
        """The :mod:`jnorm.nnx` classes that wrap it: the same names as its linen modules."""
        return tuple(dict.fromkeys(mc.cls for mc in self.linen))

    # ------------------------------------------------------------------ core layers only

    @property
    def core(self) -> bool:
        """A core layer: the generic standardisation, with a :class:`Standardization` oracle."""
        return isinstance(self.ref, Standardization)

    def _standardization(self) -> Standardization:
        assert isinstance(self.ref, Standardization), f"{self.name} is not a core layer"
        return self.ref

    @property
    def view(self) -> View:
        return self._standardization().view

    @property
    def epsilon(self) -> float:
        return self._standardization().epsilon

    @property
    def center(self) -> bool:
        return self._standardization().center

    @property
    def has_bias(self) -> bool:
        return self._standardization().has_bias

    def apply(self, x: Any, scale: Any = None, bias: Any = None, mask: Any = None) -> jax.Array:
        """The output ``y`` of a core layer (batch norm: training on a fresh state) for a
        per-channel ``scale`` and ``bias`` and a ``mask``; ``None`` leaves one out (RMS norm
        takes no bias and ignores it)."""
        given = {"scale": scale, "bias": bias if self.has_bias else None, "mask": mask}
        out = self.call(x, {k: v for k, v in given.items() if v is not None})
        return out[0] if "stateful" in self.flags else out

    def oracle(self, x: Any, scale: Any = None, bias: Any = None, mask: Any = None
               ) -> np.ndarray:
        """float64 output of a core layer's definition, for the arguments of :meth:`apply`."""
        return self._standardization().standardize(x, scale, bias, mask)

    def oracle_grad(self, x: Any, scale: Any, cotangent: Any) -> np.ndarray:
        """float64 gradient of ``sum(cotangent * y)`` w.r.t. ``x`` of a core layer."""
        return self._standardization().grad(x, scale, cotangent)


#: Property flags: ``stateful`` returns ``(y, state)``; ``training`` takes a static bool;
#: ``epsilon``/``momentum``/``dtype``/``mask`` takes that keyword; ``half`` runs in bfloat16;
#: ``grad`` is differentiable in its input; ``weight`` transforms a kernel, not activations.
FLAGS = frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "mask", "half",
                   "grad", "weight", "axis_name"})


def _sb(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Any]:
    c = shape[-1]
    return {"scale": (1 + 0.3 * rng.standard_normal(c)).astype(np.float32),
            "bias": rng.standard_normal(c).astype(np.float32)}


def _sbv(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Any]:
    return {**_sb(rng, shape), "v": (1 + 0.3 * rng.standard_normal(shape[-1])).astype(np.float32)}


def _none(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, Any]:
    return {}


def _kw(p: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """The keyword arguments among `names` that a test passes (epsilon, momentum, ...)."""
    return {n: p[n] for n in names if n in p}


_KW = ("epsilon", "dtype", "mask")
_BKW = ("epsilon", "dtype", "mask", "momentum")


def _state(x: Any) -> jnorm.BatchStats:
    return jnorm.BatchStats.init(jnp.shape(x)[-1])


def _wstate(x: Any) -> jnorm.WhiteningStats:
    return jnorm.WhiteningStats.init(jnp.shape(x)[-1])


def _stats(bs: Mapping[str, Any]) -> jnorm.BatchStats:
    """A module's ``batch_stats`` as BatchStats (flax's layout has no count unless needed)."""
    return jnorm.BatchStats(bs["mean"], bs["var"], bs.get("count", jnp.zeros((), jnp.int32)))


def _batch_stats_module(
    fn: Callable[..., tuple[jax.Array, jnorm.BatchStats]], *param_names: str
) -> Callable[[Any, jax.Array], Any]:
    """What a module wrapping ``fn`` computes: ``fn(x, state, *params, training=True)`` with
    the module's ``batch_stats`` as the state, and the new statistics as the module stores
    them."""
    def module_fn(v: Any, x: jax.Array) -> Any:
        y, s = fn(x, _stats(v["batch_stats"]), *(v["params"][n] for n in param_names),
                  training=True)
        return y, {"mean": s.mean, "var": s.var, "count": s.count}
    return module_fn


_bn_module = _batch_stats_module(jnorm.batch_norm, "scale", "bias")
_renorm_module = _batch_stats_module(jnorm.batch_renorm, "scale", "bias")
_evob0_module = _batch_stats_module(jnorm.evonorm_b0, "scale", "bias", "v")


def _spectral_module(v: Any, x: jax.Array) -> Any:
    bs = v["batch_stats"]
    kernel = v["params"]["layer_instance"]["kernel"]
    w, u, sigma = jnorm.spectral_norm(kernel, bs["layer_instance/kernel/u"][0], n_steps=1,
                                      epsilon=1e-12)
    return _dense(v, x, w), {"layer_instance/kernel/u": u[None],
                             "layer_instance/kernel/sigma": sigma}


def _dbn_module(iterations: int | None) -> Callable[[Any, jax.Array], Any]:
    def fn(v: Any, x: jax.Array) -> Any:
        bs, p = v["batch_stats"], v["params"]
        st = jnorm.WhiteningStats(bs["mean"], bs["whitening"],
                                  bs.get("count", jnp.zeros((), jnp.int32)))
        if iterations is None:
            y, s = jnorm.decorrelated_batch_norm(x, st, p["scale"], p["bias"], training=True)
        else:
            y, s = jnorm.iter_norm(x, st, p["scale"], p["bias"], training=True,
                                   iterations=iterations)
        return y, {"mean": s.mean, "whitening": s.whitening, "count": s.count}
    return fn


def _dense(v: Any, x: jax.Array, kernel: jax.Array) -> jax.Array:
    inner = v["params"]["layer_instance"]
    return x @ kernel + inner["bias"][None, :]


REGISTRY: tuple[Entry, ...] = (
    Entry(
        "batch_norm", (6, 3, 2, 4), _sb,
        lambda x, p: jnorm.batch_norm(x, _state(x), p.get("scale"), p.get("bias"),
                                      training=True, **_kw(p, *_BKW)),
        Standardization(_batch_view, 1e-5),
        frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "mask", "half",
                   "grad", "axis_name"}),
        linen=(ModuleCase(
            "BatchNorm", {"use_running_average": False}, _bn_module, mutable=True,
            flax=({"use_running_average": False},
                  {"use_running_average": False, "axis": 1, "momentum": 0.9},
                  {"use_running_average": True}),
            flax_nnx=({}, {"momentum": 0.9, "use_bias": False}),
            nnx_twin=({}, {"momentum": None})),),
        companions=("BatchStats", "update_batch_stats"),
        errors=((lambda x: jnorm.batch_norm(x, jnorm.BatchStats.init(3), training=True),
                 r"`state.mean` has shape \(3,\)"),),
        state=_state,
    ),
    Entry(
        "layer_norm", (4, 3, 8), _sb,
        lambda x, p: jnorm.layer_norm(x, p.get("scale"), p.get("bias"), **_kw(p, *_KW)),
        Standardization(_layer_view, 1e-6),
        frozenset({"epsilon", "dtype", "mask", "half", "grad", "axis_name"}),
        linen=(ModuleCase(
            "LayerNorm", {}, lambda v, x: jnorm.layer_norm(
                x, v["params"]["scale"], v["params"]["bias"]),
            flax=({}, {"reduction_axes": (1, 2, 3), "feature_axes": -1},
                  {"use_bias": False, "epsilon": 1e-3}),
            flax_nnx=({}, {"reduction_axes": (1, 2, 3), "epsilon": 1e-3}),
            nnx_twin=({}, {"zero_centered_scale": True})),
            ModuleCase("LayerNorm", {"zero_centered_scale": True}, lambda v, x: jnorm.layer_norm(
                x, v["params"]["scale"], v["params"]["bias"], zero_centered_scale=True))),
        offset=1e3,
    ),
    Entry(
        "rms_norm", (4, 3, 8), lambda rng, s: {"scale": _sb(rng, s)["scale"]},
        lambda x, p: jnorm.rms_norm(x, p.get("scale"), **_kw(p, *_KW)),
        Standardization(_layer_view, 1e-6, center=False, has_bias=False),
        frozenset({"epsilon", "dtype", "mask", "half", "grad", "axis_name"}),
        linen=(ModuleCase("RMSNorm", {}, lambda v, x: jnorm.rms_norm(x, v["params"]["scale"]),
                          flax=({}, {"reduction_axes": (2, 3)}), flax_nnx=({},),
            nnx_twin=({}, {"zero_centered_scale": True})),
               ModuleCase("RMSNorm", {"zero_centered_scale": True}, lambda v, x: jnorm.rms_norm(
                   x, v["params"]["scale"], zero_centered_scale=True))),
    ),
    Entry(
        "instance_norm", (3, 4, 2, 4), _sb,
        lambda x, p: jnorm.instance_norm(x, p.get("scale"), p.get("bias"), **_kw(p, *_KW)),
        Standardization(_instance_view, 1e-6),
        frozenset({"epsilon", "dtype", "mask", "half", "grad", "axis_name"}),
        linen=(ModuleCase(
            "InstanceNorm", {}, lambda v, x: jnorm.instance_norm(
                x, v["params"]["scale"], v["params"]["bias"]),
            flax=({}, {"use_scale": False}), flax_nnx=({}, {"use_scale": False}),
            nnx_twin=({},)),),
        offset=50.0,
    ),
    Entry(
        "group_norm", (3, 2, 2, 8), _sb,
        lambda x, p: jnorm.group_norm(x, p.get("scale"), p.get("bias"), num_groups=2,
                                      **_kw(p, *_KW)),
        Standardization(_group_view, 1e-6),
        frozenset({"epsilon", "dtype", "mask", "half", "grad", "axis_name"}),
        linen=(ModuleCase(
            "GroupNorm", {"num_groups": 2}, lambda v, x: jnorm.group_norm(
                x, v["params"]["scale"], v["params"]["bias"], num_groups=2),
            flax=({"num_groups": 4}, {"num_groups": None, "group_size": 2},
                  {"num_groups": 2, "reduction_axes": (2, 3)}),
            flax_nnx=({"num_groups": 4}, {"num_groups": None, "group_size": 2}),
            nnx_twin=({"num_groups": 2},)),),
        errors=((lambda x: jnorm.group_norm(x, num_groups=3), r"`num_groups`=3 does not divide"),
                (lambda x: jnorm.group_norm(x, num_groups=True), r"`num_groups`=True"),),
    ),
    Entry(
        "batch_renorm", (8, 2, 3), _sb,
        lambda x, p: jnorm.batch_renorm(x, _state(x), p.get("scale"), p.get("bias"),
                                        training=True, **_kw(p, *_BKW)),
        lambda x, p: _ref_renorm(x, p),
        # No "grad": r and d carry no gradient by the paper's definition, so finite differences
        # (which see them move) and the derivative disagree; tests/core/test_extra_methods.py checks
        # the defined gradient.
        frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "mask",
                   "axis_name"}),
        linen=(ModuleCase("BatchRenorm", {"use_running_average": False}, _renorm_module,
                          mutable=True,
            nnx_twin=({},)),),
        companions=("batch_renorm_schedule",),
        offset=0.5,
        state=_state,
    ),
    Entry(
        "decorrelated_batch_norm", (32, 4), _sb,
        lambda x, p: jnorm.decorrelated_batch_norm(x, _wstate(x), p.get("scale"),
                                                   p.get("bias"), training=True,
                                                   **_kw(p, "epsilon", "dtype", "momentum")),
        lambda x, p: _whiten(x, p, 1e-5, None),
        frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "grad"}),
        linen=(ModuleCase("DecorrelatedBatchNorm", {"use_running_average": False},
                          _dbn_module(None), mutable=True,
            nnx_twin=({"group_size": 4},)),),
        companions=("WhiteningStats", "whitening_matrix"),
        rtol=2e-5,  # iter_norm's bound d (d + sqrt(m)) u / s for this data: 1.7e-5
        state=_wstate,
    ),
    Entry(
        "iter_norm", (32, 4), _sb,
        lambda x, p: jnorm.iter_norm(x, _wstate(x), p.get("scale"), p.get("bias"),
                                     training=True, iterations=5,
                                     **_kw(p, "epsilon", "dtype", "momentum")),
        lambda x, p: _whiten(x, p, 1e-5, 5),
        frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "grad"}),
        linen=(ModuleCase("IterNorm", {"use_running_average": False}, _dbn_module(5),
                          mutable=True,
            nnx_twin=({"group_size": 4},)),),
        rtol=2e-5,  # iter_norm's bound d (d + sqrt(m)) u / s for this data: 1.7e-5
        state=_wstate,
    ),
    Entry(
        "evonorm_b0", (4, 3, 2, 4), _sbv,
        lambda x, p: jnorm.evonorm_b0(x, _state(x), p.get("scale"), p.get("bias"), p.get("v"),
                                      training=True, **_kw(p, "epsilon", "dtype", "momentum")),
        lambda x, p: _ref_evonorm_b0(x, p),
        frozenset({"stateful", "training", "epsilon", "momentum", "dtype", "half", "grad"}),
        linen=(ModuleCase("EvoNormB0", {"use_running_average": False}, _evob0_module,
                          mutable=True,
            nnx_twin=({},)),),
        offset=0.0,
        state=_state,
    ),
    Entry(
        "evonorm_s0", (3, 2, 2, 8), _sbv,
        lambda x, p: jnorm.evonorm_s0(x, p.get("scale"), p.get("bias"), p.get("v"),
                                      num_groups=2, **_kw(p, "epsilon", "dtype")),
        lambda x, p: _ref_evonorm_s0(x, p),
        frozenset({"epsilon", "dtype", "half", "grad"}),
        linen=(ModuleCase("EvoNormS0", {"num_groups": 2}, lambda v, x: jnorm.evonorm_s0(
            x, v["params"]["scale"], v["params"]["bias"], v["params"]["v"], num_groups=2),
            nnx_twin=({"num_groups": 2},)),),
        errors=((lambda x: jnorm.evonorm_s0(x, num_groups=2.0), r"`num_groups`=2.0"),),
        offset=0.0,
    ),
    Entry(
        "filter_response_norm", (3, 4, 2, 4), _sb,
        lambda x, p: jnorm.filter_response_norm(x, p.get("scale"), p.get("bias"),
                                                **_kw(p, "epsilon", "dtype")),
        lambda x, p: _ref_frn(x, p),
        frozenset({"epsilon", "dtype", "half", "grad"}),
        linen=(ModuleCase("FilterResponseNorm", {}, lambda v, x: jnorm.tlu(
            jnorm.filter_response_norm(x, v["params"]["scale"], v["params"]["bias"]),
            v["params"]["tau"]),
            nnx_twin=({"learned_epsilon": True},)),),
        companions=("tlu",),
        offset=0.0,
    ),
    Entry(
        "dynamic_tanh", (4, 3, 8), _dyt_params,
        lambda x, p: jnorm.dynamic_tanh(x, p.get("scale"), p.get("bias"), p["alpha"],
                                        **_kw(p, "dtype", "mask")),
        _ref_dyt,
        frozenset({"dtype", "mask", "half", "grad"}),
        linen=(ModuleCase("DynamicTanh", {"per_channel_alpha": True}, lambda v, x:
                          jnorm.dynamic_tanh(x, v["params"]["scale"], v["params"]["bias"],
                                             v["params"]["alpha"]),
                          nnx_twin=({"per_channel_alpha": True, "alpha_init": 0.3},)),
               ModuleCase("DynamicTanh", {}, lambda v, x: jnorm.dynamic_tanh(
                   x, v["params"]["scale"], v["params"]["bias"], v["params"]["alpha"]),
                   nnx_twin=({},))),
        errors=((lambda x: jnorm.dynamic_tanh(x, alpha=jnp.ones(3)), r"`alpha` has shape \(3,\)"),
                (lambda x: jnorm.dynamic_tanh(x, jnp.ones(3)), r"`scale` has shape \(3,\)"),
                (lambda x: jnorm.dynamic_tanh(x.astype(jnp.complex64)), r"`x` must be real"),
                (lambda x: jnorm.dynamic_tanh(x, feature_axes=5), r"`feature_axes`")),
        offset=0.5,
    ),
    Entry(
        "local_response_norm", (2, 3, 6), _none,
        lambda x, p: jnorm.local_response_norm(x, size=3, alpha=0.5, beta=0.75, k=1.5,
                                               **_kw(p, "dtype")),
        lambda x, p: _ref_lrn(x, p),
        frozenset({"dtype", "half", "grad"}),
        linen=(ModuleCase("LocalResponseNorm", {"size": 3, "alpha": 0.5, "k": 1.5},
                          lambda v, x: jnorm.local_response_norm(x, size=3, alpha=0.5,
                                                                 k=1.5)),),
        companions=("lrn_tensorflow_args",),
        offset=0.0,
    ),
    Entry(
        "standardize_weight", (3, 2, 4, 5), _none,
        lambda w, p: jnorm.standardize_weight(w, **_kw(p, "epsilon")),
        lambda w, p: _ref_ws(w, p),
        frozenset({"weight", "epsilon", "grad"}),
        linen=(ModuleCase("WeightStandardization", {}, lambda v, x: _dense(
            v, x, jnorm.standardize_weight(v["params"]["layer_instance"]["kernel"])),
            wraps_dense=True),),
    ),
    Entry(
        "scaled_standardize_weight", (3, 2, 4, 5),
        lambda rng, s: {"gain": (1 + 0.3 * rng.standard_normal(s[-1])).astype(np.float32)},
        lambda w, p: jnorm.scaled_standardize_weight(w, p["gain"], nonlinearity_gain=1.5,
                                                     **_kw(p, "epsilon")),
        lambda w, p: _ref_sws(w, p),
        frozenset({"weight", "epsilon", "grad"}),
        linen=(ModuleCase("WeightStandardization", {"scaled": True, "nonlinearity_gain": 1.5},
                          lambda v, x: _dense(v, x, jnorm.scaled_standardize_weight(
                              v["params"]["layer_instance"]["kernel"],
                              v["params"]["layer_instance/kernel/gain"],
                              nonlinearity_gain=1.5)), wraps_dense=True),),
    ),
    Entry(
        "weight_norm", (4, 5),
        lambda rng, s: {"g": (1 + rng.random(s[-1])).astype(np.float32)},
        lambda w, p: jnorm.weight_norm(w, p["g"], **_kw(p, "epsilon")),
        lambda w, p: _ref_wn(w, p),
        frozenset({"weight", "epsilon", "grad"}),
        linen=(ModuleCase("WeightNorm", {}, lambda v, x: _dense(v, x, jnorm.weight_norm(
            v["params"]["layer_instance"]["kernel"], v["params"]["layer_instance/kernel/scale"])),
            wraps_dense=True, flax=({},), flax_nnx=({},)),),
        companions=("kernel_norm",),
    ),
    Entry(
        "spectral_norm", (3, 4, 5), _none,
        lambda w, p: jnorm.spectral_norm(w, jnorm.spectral_norm_init(w))[0],
        lambda w, p: _ref_spectral(w, p),
        frozenset({"weight"}),
        linen=(ModuleCase("SpectralNorm", {}, _spectral_module,
                          call_kwargs={"update_stats": True}, mutable=True, wraps_dense=True,
                          flax=({},), flax_nnx=({},)),),
        companions=("spectral_norm_init",),
        rtol=1e-6,
    ),
)
BY_NAME = {e.name: e for e in REGISTRY}

#: Public names that are not normalizations, and the test modules that cover them.
SUPPORT: dict[str, str] = {
    "moments": "tests/core/test_stats.py",
    "normalize": "tests/core/test_errors.py",
    "fold_batch_norm": "tests/core/test_tools.py",
    "precise_batch_stats": "tests/core/test_tools.py",
    "save_state": "tests/core/test_tools.py",
    "restore_state": "tests/core/test_tools.py",
    "from_torch_batch_norm": "tests/core/test_layers.py",
    "from_torch_state_dict": "tests/core/test_tools.py",
    "to_torch_state_dict": "tests/core/test_tools.py",
    "torch_norm_kwargs": "tests/core/test_tools.py",
    "momentum_from_torch": "tests/core/test_layers.py",
}
#: The core layers, in registry order, and those of them that subtract the mean.
CORE = tuple(e for e in REGISTRY if e.core)
CENTERED = tuple(e for e in CORE if e.center)
#: The comparisons with flax: ``(ModuleCase, kwargs)`` for flax.linen and for flax.nnx.
FLAX_LINEN_CASES = [(mc, kw) for e in REGISTRY for mc in e.linen for kw in mc.flax]
FLAX_NNX_CASES = [(mc, kw) for e in REGISTRY for mc in e.linen for kw in mc.flax_nnx]
NNX_TWIN_CASES = [(mc, kw) for e in REGISTRY for mc in e.linen for kw in mc.nnx_twin]
