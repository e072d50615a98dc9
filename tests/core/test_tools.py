"""PreciseBN, batch norm folding, PyTorch state-dict conversion and orbax round trips."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnorm
import jnorm.linen as jnn


def _batches(n=5, b=16, f=3, seed=0):
    rng = np.random.default_rng(seed)
    # batches with different means, so mean(batch var) != population var
    return [(rng.normal(size=(b, f)) * 2 + i).astype(np.float32) for i in range(n)]


# ---------------------------------------------------------------------------------- PreciseBN


@pytest.mark.parametrize("momentum", [0.99, None])
def test_precise_functional_equals_population_statistics(momentum):
    data = _batches()
    flat = np.concatenate(data).astype(np.float64)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)

    def forward(state, x):  # two batch norms; the second sees the first's training output
        h, s1 = jnorm.batch_norm(x, state["bn1"], training=True, momentum=momentum)
        _, s2 = jnorm.batch_norm(h @ w, state["bn2"], training=True, momentum=momentum)
        return {"bn1": s1, "bn2": s2}

    state = {"bn1": jnorm.BatchStats.init(3), "bn2": jnorm.BatchStats.init(4)}
    out = jnorm.precise_batch_stats(forward, state, data)
    assert isinstance(out["bn1"], jnorm.BatchStats) and int(out["bn1"].count) == len(data)
    np.testing.assert_allclose(out["bn1"].mean, flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["bn1"].var, flat.var(0), rtol=1e-5)
    # the average of batch variances differs clearly from the population variance here
    assert np.abs(np.mean([d.var(0) for d in data], 0) - flat.var(0)).min() > 0.5
    # bn2: population statistics of the features produced with bn1's batch statistics
    h = np.concatenate([(d - d.mean(0)) / np.sqrt(d.var(0) + 1e-5) for d in
                        (x.astype(np.float64) for x in data)]) @ np.asarray(w, np.float64)
    np.testing.assert_allclose(out["bn2"].mean, h.mean(0), atol=1e-5)
    np.testing.assert_allclose(out["bn2"].var, h.var(0), rtol=1e-5)


def test_precise_linen_model_jnorm_and_flax_batchnorm():
    class Net(nn.Module):
        bn: type

        @nn.compact
        def __call__(self, x, train: bool):
            h = nn.Dense(4)(x)
            h = self.bn(use_running_average=not train)(h)
            return nn.Dense(2)(nn.relu(h))

    data = _batches(n=4, b=8)
    for bn in (jnn.BatchNorm, nn.BatchNorm):
        model = Net(bn)
        v = model.init(jax.random.key(0), data[0], train=False)
        out = jnorm.precise_batch_stats(model, v, data, train=True)
        k, b = v["params"]["Dense_0"]["kernel"], v["params"]["Dense_0"]["bias"]
        h = np.concatenate(data).astype(np.float64) @ np.asarray(k, np.float64) + np.asarray(b)
        stats = out["batch_stats"]["BatchNorm_0"]
        np.testing.assert_allclose(stats["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["var"], h.var(0), rtol=1e-5)
        assert out["params"] is v["params"]
        # eval with the precise statistics runs
        assert model.apply(out, data[0], train=False).shape == (8, 2)


def test_precise_errors():
    fwd = lambda s, x: jnorm.batch_norm(x, s, training=True)[1]  # noqa: E731
    s = jnorm.BatchStats.init(3)
    with pytest.raises(ValueError, match="equal sizes"):
        jnorm.precise_batch_stats(fwd, s, [np.ones((4, 3)), np.ones((3, 3))])
    with pytest.raises(ValueError, match="empty"):
        jnorm.precise_batch_stats(fwd, s, [])
    with pytest.raises(TypeError, match="linen form"):
        jnorm.precise_batch_stats(fwd, s, [np.ones((4, 3))], train=True)
    # num_batches limits the pass
    out = jnorm.precise_batch_stats(fwd, s, iter(_batches(n=10)), num_batches=2)
    np.testing.assert_allclose(out.mean, np.concatenate(_batches(n=2)).mean(0), atol=1e-5)


# ------------------------------------------------------------------------------------ folding


@pytest.mark.parametrize("conv", [False, True])
def test_folded_linen_model_gives_same_outputs(conv):
    layer = (lambda **kw: nn.Conv(5, (3, 3), **kw)) if conv else (lambda **kw: nn.Dense(5, **kw))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            h = layer(use_bias=False)(x)
            return jnn.BatchNorm(use_running_average=not train, epsilon=1e-3)(h)

    class Folded(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layer(use_bias=True)(x)

    shape = (4, 6, 6, 3) if conv else (4, 3)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    model = Net()
    v = model.init(jax.random.key(0), x)
    # give the batch norm non-trivial statistics and parameters
    rng = np.random.default_rng(3)
    bs = {"mean": jnp.asarray(rng.normal(size=5), jnp.float32),
          "var": jnp.asarray(rng.uniform(0.5, 3, size=5), jnp.float32)}
    p = dict(v["params"])
    p["BatchNorm_0"] = {"scale": jnp.asarray(rng.normal(size=5), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=5), jnp.float32)}
    v = {"params": p, "batch_stats": {"BatchNorm_0": bs}}
    name = "Conv_0" if conv else "Dense_0"
    k, b = jnorm.fold_batch_norm(p[name]["kernel"], None, bs["mean"], bs["var"],
                                 p["BatchNorm_0"]["scale"], p["BatchNorm_0"]["bias"],
                                 epsilon=1e-3)
    y = model.apply(v, x)
    y_folded = Folded().apply({"params": {name: {"kernel": k, "bias": b}}}, x)
    # Both are float32 dot products of length fan_in (plus the affine terms): each within
    # gamma_n = n u / (1 - n u) of sum |x| |k|, the folded kernel's magnitudes bounding both.
    fan_in = int(np.prod(k.shape[:-1]))
    u = float(np.finfo(np.float32).eps)
    gamma = (fan_in + 3) * u / (1 - (fan_in + 3) * u)
    mags = Folded().apply({"params": {name: {"kernel": jnp.abs(k), "bias": jnp.abs(b)}}},
                          jnp.abs(x))
    bound = 2 * gamma * (np.asarray(mags) + np.abs(np.asarray(y)))
    assert np.all(np.abs(np.asarray(y_folded) - np.asarray(y)) <= bound)
    assert np.abs(np.asarray(y)).max() > 0.5  # a real, non-trivial output


def test_fold_errors():
    with pytest.raises(ValueError, match="output features"):
        jnorm.fold_batch_norm(jnp.ones((3, 4)), None, jnp.zeros(3), jnp.ones(3))


# ------------------------------------------------------------------------------------ PyTorch


def test_torch_batch_norm_state_dict_conventions():
    rng = np.random.default_rng(4)
    sd = {"features.1.weight": rng.normal(size=3).astype(np.float32),
          "features.1.bias": rng.normal(size=3).astype(np.float32),
          "features.1.running_mean": rng.normal(size=3).astype(np.float32),
          "features.1.running_var": rng.uniform(1, 2, size=3).astype(np.float32),
          "features.1.num_batches_tracked": np.array(12, np.int64)}
    params, state = jnorm.from_torch_state_dict(sd, prefix="features.1.")
    np.testing.assert_array_equal(params["scale"], sd["features.1.weight"])
    np.testing.assert_array_equal(state.var, sd["features.1.running_var"])  # eval-identical
    assert int(state.count) == 12
    # eval output = PyTorch's eval formula on NCHW input, computed by hand
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    kw = jnorm.torch_norm_kwargs("batch_norm", momentum=0.1, eps=1e-5)
    y, _ = jnorm.batch_norm(jnp.asarray(x), state, params["scale"], params["bias"],
                            training=False, feature_axes=kw["feature_axes"], epsilon=kw["epsilon"])
    c = (slice(None), None, None)
    ref = ((x - sd["features.1.running_mean"][c]) / np.sqrt(sd["features.1.running_var"][c]
           + 1e-5)) * sd["features.1.weight"][c] + sd["features.1.bias"][c]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # training with the converted keywords reproduces PyTorch's running update (by hand)
    _, s1 = jnorm.batch_norm(jnp.asarray(x), state, training=True, feature_axes=kw["feature_axes"],
                             momentum=kw["momentum"],
                             unbiased_running_var=kw["unbiased_running_var"])
    xb = x.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(
        s1.var, 0.9 * sd["features.1.running_var"] + 0.1 * xb.var(1, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(
        s1.mean, 0.9 * sd["features.1.running_mean"] + 0.1 * xb.mean(1), rtol=1e-5, atol=1e-6)
    # round trip, and the n/(n-1) conversion both ways
    back = jnorm.to_torch_state_dict(params, state, prefix="features.1.")
    assert set(back) == set(sd)
    assert str(back["features.1.num_batches_tracked"].dtype).endswith("int64")
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key])
    _, biased = jnorm.from_torch_state_dict(sd, prefix="features.1.", batch_size=32)
    np.testing.assert_allclose(biased.var, sd["features.1.running_var"] * 31 / 32, rtol=1e-6)
    again = jnorm.to_torch_state_dict(params, biased, prefix="features.1.", batch_size=32)
    np.testing.assert_allclose(again["features.1.running_var"], sd["features.1.running_var"],
                               rtol=1e-6)


def test_from_torch_copies_the_values():
    # Converted state must not share memory with the arrays it came from: a later in-place
    # update of the torch buffers must not change jnorm's state.
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    params, state = jnorm.from_torch_batch_norm(rm, rv, 2, w, b)
    sd = {"weight": w, "bias": b, "running_mean": rm, "running_var": rv}
    params2, state2 = jnorm.from_torch_state_dict(sd)
    params3, _ = jnorm.from_torch_state_dict({"weight": w, "bias": b})  # LayerNorm-like
    for a in (rm, rv, w, b):
        a += 5.0  # what torch's BatchNorm does to its buffers in place during training
    for got in (state.mean, state2.mean, params["bias"], params2["bias"], params3["bias"]):
        np.testing.assert_array_equal(got, np.zeros(3))
    for got in (state.var, state2.var, params["scale"], params2["scale"], params3["scale"]):
        np.testing.assert_array_equal(got, np.ones(3))


def test_torch_round_trip_with_torch_modules():
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn(torch.randn(4, 3, 5, 5) * 2 + 1)  # one training step moves the running statistics
    params, state = jnorm.from_torch_state_dict(bn.state_dict())
    np.testing.assert_allclose(state.mean, bn.running_mean.numpy(), rtol=1e-6)
    assert int(state.count) == 1
    with torch.no_grad():
        bn.running_mean.add_(100.0)  # in place: the converted state must not follow
        bn.weight.mul_(0.0)
    assert float(jnp.max(jnp.abs(state.mean))) < 100.0
    assert float(jnp.min(params["scale"])) == 1.0
    _, state_b = jnorm.from_torch_batch_norm(bn.running_mean, bn.running_var,
                                             bn.num_batches_tracked)  # tensors directly
    np.testing.assert_allclose(state_b.mean, bn.running_mean.numpy())
    # to_torch_state_dict's result loads into torch as is (strict: every key, torch tensors)
    fresh = torch.nn.BatchNorm2d(3)
    fresh.load_state_dict(jnorm.to_torch_state_dict(params, state))
    np.testing.assert_allclose(fresh.running_mean.numpy(), np.asarray(state.mean))
    np.testing.assert_allclose(fresh.weight.detach().numpy(), [1.0, 2.0, 3.0])
    assert int(fresh.num_batches_tracked) == 1
    ln = torch.nn.LayerNorm(4)
    ln.load_state_dict(jnorm.to_torch_state_dict({"scale": jnp.full(4, 2.0),
                                                  "bias": jnp.ones(4)}))
    np.testing.assert_allclose(ln.weight.detach().numpy(), 2.0)


def test_torch_layer_and_group_norm_conventions():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    # LayerNorm(normalized_shape=(3, 5), eps=1e-5): statistics over the last two axes
    sd = {"weight": rng.normal(size=(3, 5)).astype(np.float32),
          "bias": rng.normal(size=(3, 5)).astype(np.float32)}
    params, state = jnorm.from_torch_state_dict(sd)
    assert state is None
    kw = jnorm.torch_norm_kwargs("layer_norm", normalized_shape=(3, 5))
    y = jnorm.layer_norm(jnp.asarray(x), params["scale"], params["bias"], **kw)
    mu, var = x.mean((2, 3), keepdims=True), x.var((2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * sd["weight"] + sd["bias"],
                               rtol=1e-4, atol=1e-5)
    # GroupNorm(2, 4) on NCHW
    sd = {"weight": rng.normal(size=4).astype(np.float32),
          "bias": rng.normal(size=4).astype(np.float32)}
    params, _ = jnorm.from_torch_state_dict(sd)
    kw = jnorm.torch_norm_kwargs("group_norm", num_groups=2, num_channels=4, eps=1e-5)
    y = jnorm.group_norm(jnp.asarray(x), params["scale"], params["bias"], **kw)
    xg = x.reshape(2, 2, 2, 3, 5)
    mu, var = xg.mean((2, 3, 4), keepdims=True), xg.var((2, 3, 4), keepdims=True)
    ref = ((xg - mu) / np.sqrt(var + 1e-5)).reshape(x.shape)
    ref = ref * sd["weight"][:, None, None] + sd["bias"][:, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert jnorm.to_torch_state_dict(params).keys() == {"weight", "bias"}
    with pytest.raises(ValueError, match="prefix"):
        jnorm.from_torch_state_dict(sd, prefix="bn.")
    with pytest.raises(ValueError, match="layer"):
        jnorm.torch_norm_kwargs("instance_norm")
    with pytest.raises(TypeError, match="unknown"):
        jnorm.torch_norm_kwargs("batch_norm", momentun=0.1)


# -------------------------------------------------------------------------------------- orbax


def test_orbax_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    state = {
        "bn": jnorm.BatchStats(jnp.asarray(rng.normal(size=3), jnp.float32),
                               jnp.asarray(rng.uniform(size=3), jnp.float32), jnp.asarray(7)),
        "white": jnorm.WhiteningStats(jnp.asarray(rng.normal(size=4), jnp.float32),
                                      jnp.asarray(rng.normal(size=(2, 2, 2)), jnp.float32),
                                      jnp.asarray(3)),
    }
    path = tmp_path / "ckpt"
    jnorm.save_state(path, state)
    like = {"bn": jnorm.BatchStats.init(3), "white": jnorm.WhiteningStats.init(4, group_size=2)}
    restored = jnorm.restore_state(path, like)
    assert isinstance(restored["bn"], jnorm.BatchStats)
    assert isinstance(restored["white"], jnorm.WhiteningStats)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
