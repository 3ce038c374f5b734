"""NumPyro ARSM_ELBO under ``jax.sharding`` : data sharded along the plate over 4 host
devices, parameters replicated, gives the single-device loss, gradient and SVI update.

Each check runs in a fresh Python process (this file run as a script) with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: the pytest process has imported jax with
one device. The child writes its numbers and what it saw of the shardings to an ``.npz`` file;
the assertions are made here. The child also sets ``--xla_backend_optimization_level=0`` (LLVM
code generation only, which dominates the compile time on CPU; the SPMD partitioner still runs).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

NUM_DEVICES = 4
N, D, H, C, C_Y = 16, 6, 5, 4, 3  # data, pixels, hidden units, classes of c, classes of y
# pseudo evaluations per particle: c is element-separable (C columns), y has .to_event dims
# (C_Y (C_Y - 1) / 2 whole-site swaps), g is a global Bernoulli (one antithetic pass)
NUM_PSEUDO = C + C_Y * (C_Y - 1) // 2 + 1
SEEN = []  # shardings of the guide's logits, seen by jax.debug.inspect_array_sharding


def model(x):
    """A tiny VAE-like model: per-datum codes c (Categorical) and y (two Categoricals as one
    ``.to_event(1)`` site), a global Bernoulli g, Bernoulli pixels."""
    w = numpyro.param("dec_w", 0.2 * jnp.cos(jnp.arange((C + 2 * C_Y) * D).reshape(-1, D)))
    b = numpyro.param("dec_b", jnp.zeros(D))
    shift = numpyro.param("shift", 0.5 * jnp.ones(D))
    g = numpyro.sample("g", dist.Bernoulli(logits=0.0))
    with numpyro.plate("data", x.shape[0]):
        c = numpyro.sample("c", dist.Categorical(logits=jnp.zeros(C)))
        y = numpyro.sample("y", dist.Categorical(logits=jnp.zeros((2, C_Y))).to_event(1))
        h = jnp.concatenate(
            [jax.nn.one_hot(c, C), jax.nn.one_hot(y, C_Y).reshape(x.shape[0], 2 * C_Y)], -1)
        logits = h @ w + b + (2.0 * g - 1.0) * shift
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def guide(x):
    """Encoder: a hand-written one-hidden-layer MLP from numpyro.param weights."""
    w1 = numpyro.param("enc_w1", 0.3 * jnp.sin(jnp.arange(D * H).reshape(D, H)))
    w2 = numpyro.param("enc_w2", 0.3 * jnp.cos(jnp.arange(H * (C + 2 * C_Y)).reshape(H, -1)))
    g_logit = numpyro.param("g_logit", jnp.array(0.3))
    logits = jnp.tanh(x @ w1) @ w2
    jax.debug.inspect_array_sharding(logits, callback=SEEN.append)
    numpyro.sample("g", dist.Bernoulli(logits=g_logit))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("c", dist.Categorical(logits=logits[:, :C]))
        numpyro.sample("y", dist.Categorical(
            logits=logits[:, C:].reshape(x.shape[0], 2, C_Y)).to_event(1))


# ---------------------------------------------------------------------------------------------
# The child process (4 host devices)
# ---------------------------------------------------------------------------------------------


def _sharding_info(sharding):
    return {"devices": len(sharding.device_set), "replicated": sharding.is_fully_replicated}


def _child(what, out_path):
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from numpyro.infer import SVI

    from numpyro_arsm import ARSM_ELBO

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    batch, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh,
                                                                                  PartitionSpec())
    x = (np.random.default_rng(0).random((N, D)) < 0.4).astype(np.float32)
    x_one = jax.device_put(x, jax.devices()[0])
    x_sharded = jax.device_put(x, batch)
    elbo = ARSM_ELBO()
    # plain SGD: the step is the gradient (Adam's first step is about lr * sign(gradient))
    svi = SVI(model, guide, optax.sgd(0.1), loss=elbo)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), x_one)
    out, meta = {}, {"data": _sharding_info(x_sharded.sharding),
                     "data_shard_shapes": [list(s.data.shape) for s in
                                           x_sharded.addressable_shards]}

    if what == "grad":
        fn = jax.jit(jax.value_and_grad(
            lambda params, x, key: elbo.loss(key, params, model, guide, x)))
        params = svi.get_params(state)
        args_one = (params, x_one, jax.random.PRNGKey(3))
        args_sharded = (jax.device_put(params, replicated), x_sharded,
                        jax.device_put(jax.random.PRNGKey(3), replicated))
        other_key = jax.device_put(jax.random.PRNGKey(4), replicated)
        results = {"one": fn(*args_one)}
        meta["pseudo_evaluations"] = elbo.last_num_pseudo_evaluations
        SEEN.clear()
        results["sharded"] = fn(*args_sharded)
        meta["guide_logits"] = [_sharding_info(s) for s in SEEN]
        results["other_key"] = fn(args_sharded[0], x_sharded, other_key)
        for tag, (loss, grads) in results.items():
            out[f"{tag}/loss"] = np.asarray(loss)
            for name, g in grads.items():
                out[f"{tag}/grad/{name}"] = np.asarray(g)
        meta["out"] = {n: _sharding_info(g.sharding) for n, g in results["sharded"][1].items()}
        # the finiteness check (one host callback) still fires on a sharded step: NaN pixels in
        # the data points of the last shard only, so only that device sees NaN logits
        nan_x = jax.device_put(np.where(np.arange(N)[:, None] >= N - N // NUM_DEVICES, np.nan,
                                        x).astype(np.float32), batch)
        try:
            jax.block_until_ready(fn(args_sharded[0], nan_x, other_key))
            meta["nan_error"] = None
        except Exception as e:  # noqa: BLE001 (the callback's ValueError, wrapped by XLA)
            meta["nan_error"] = str(e)
        compiled = {"one": fn.lower(*args_one).compile(),
                    "sharded": fn.lower(*args_sharded).compile()}
    else:
        update = jax.jit(svi.update)
        state_sharded = jax.device_put(state, replicated)
        results = {"one": update(state, x_one), "sharded": update(state_sharded, x_sharded)}
        before = svi.get_params(state)
        for tag, (new_state, loss) in results.items():
            out[f"{tag}/loss"] = np.asarray(loss)
            for name, p in svi.get_params(new_state).items():
                out[f"{tag}/step/{name}"] = np.asarray(p) - np.asarray(before[name])
        meta["out"] = {n: _sharding_info(p.sharding)
                       for n, p in svi.get_params(results["sharded"][0]).items()}
        compiled = {"one": update.lower(state, x_one).compile(),
                    "sharded": update.lower(state_sharded, x_sharded).compile()}
    for tag, c in compiled.items():
        meta[f"{tag}/input_data"] = _sharding_info(c.input_shardings[0][1])  # (.., x, ..)
        meta[f"{tag}/all_reduce"] = c.as_text().count("all-reduce(")
    np.savez(out_path, meta=json.dumps(meta), **out)


# ---------------------------------------------------------------------------------------------
# The tests (pytest process)
# ---------------------------------------------------------------------------------------------


def _run_child(what, tmp_path):
    out_path = tmp_path / f"{what}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        f"--xla_force_host_platform_device_count={NUM_DEVICES} "
        "--xla_backend_optimization_level=0"))
    proc = subprocess.run([sys.executable, __file__, what, str(out_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out_path) as f:
        return json.loads(str(f["meta"])), {k: f[k] for k in f.files if k != "meta"}


def _assert_sharded(meta):
    # the data really is split along the plate, the compiled step takes it split and reduces
    # across devices; the single-device step does not
    assert meta["data"] == {"devices": NUM_DEVICES, "replicated": False}
    assert meta["data_shard_shapes"] == [[N // NUM_DEVICES, D]] * NUM_DEVICES
    assert meta["sharded/input_data"] == {"devices": NUM_DEVICES, "replicated": False}
    assert meta["one/input_data"]["devices"] == 1
    assert meta["sharded/all_reduce"] > 0
    assert meta["one/all_reduce"] == 0
    # results come back replicated on all devices
    assert all(v == {"devices": NUM_DEVICES, "replicated": True} for v in meta["out"].values())


def _assert_close(actual, desired, name):
    scale = np.max(np.abs(desired))
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6 * max(scale, 1.0),
                               err_msg=name)


@pytest.mark.slow  # a child process that imports jax and compiles both programs
def test_loss_and_grad_sharded_equal_single_device(tmp_path):
    meta, out = _run_child("grad", tmp_path)
    _assert_sharded(meta)
    assert meta["pseudo_evaluations"] == NUM_PSEUDO
    # the guide's logits (every pass: real and pseudo) were computed split along the plate
    assert meta["guide_logits"]
    assert all(s == {"devices": NUM_DEVICES, "replicated": False} for s in meta["guide_logits"])
    grads = sorted(k.split("/")[-1] for k in out if k.startswith("one/grad/"))
    assert grads == ["dec_b", "dec_w", "enc_w1", "enc_w2", "g_logit", "shift"]
    _assert_close(out["sharded/loss"], out["one/loss"], "loss")
    for name in grads:
        one, sharded = out[f"one/grad/{name}"], out[f"sharded/grad/{name}"]
        assert np.all(np.isfinite(one)) and np.any(one != 0), name
        _assert_close(sharded, one, name)
    assert meta["nan_error"] and "'c', 'y' have NaN or infinite logits" in meta["nan_error"]
    # the tolerance tells estimates apart: another key gives another ARSM gradient
    for name in ("enc_w1", "enc_w2", "g_logit"):
        with pytest.raises(AssertionError):
            _assert_close(out[f"other_key/grad/{name}"], out[f"one/grad/{name}"], name)


@pytest.mark.slow
def test_svi_update_sharded_equal_single_device(tmp_path):
    meta, out = _run_child("update", tmp_path)
    _assert_sharded(meta)
    _assert_close(out["sharded/loss"], out["one/loss"], "loss")
    names = sorted(k.split("/")[-1] for k in out if k.startswith("one/step/"))
    assert len(names) == 6
    for name in names:
        one, sharded = out[f"one/step/{name}"], out[f"sharded/step/{name}"]
        assert np.any(one != 0), name
        _assert_close(sharded, one, name)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
