"""Writes the committed TensorFlow and Flax fixtures of tests/data/formats/ with the real libraries.

Run once, each part in a venv that has the library (neither is a wdist dependency):
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras  # 2.21.0 / keras 3.15.1 used
    /tmp/tfvenv/bin/python tests/data/formats/make_fixtures.py tf
    python3 -m venv /tmp/flaxvenv && /tmp/flaxvenv/bin/pip install flax jax jaxlib optax   # flax 0.12.8, jax 0.10.2
    /tmp/flaxvenv/bin/python tests/data/formats/make_fixtures.py flax
    /tmp/flaxvenv/bin/pip install orbax-checkpoint tensorstore   # orbax-checkpoint 0.12.8, tensorstore 0.1.86
    /tmp/flaxvenv/bin/python tests/data/formats/make_fixtures.py orbax
Every value is seeded; `expected.npz`-style reference values are written next to each fixture (as .npz of the
same tensors under the names the library itself reports) so the tests compare wdist's reading with them."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def tf_fixtures() -> None:
    import tensorflow as tf

    out = os.path.join(HERE, "tf")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    tf.keras.utils.set_random_seed(0)
    # 1. a small Keras model with an optimizer after one training step: tf.train.Checkpoint(model, optimizer)
    model = tf.keras.Sequential([
        tf.keras.Input((6,)),
        tf.keras.layers.Dense(8, activation="relu", name="hidden"),
        tf.keras.layers.BatchNormalization(name="bn"),
        tf.keras.layers.Dense(3, name="logits"),
    ])
    opt = tf.keras.optimizers.Adam(1e-2)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    model.fit(x, np.zeros((16, 3), np.float32), epochs=1, verbose=0)
    ck = tf.train.Checkpoint(model=model, optimizer=opt)
    ck.write(os.path.join(out, "keras_adam", "ckpt"))
    ref = {v.path: v.numpy() for v in model.weights}
    np.savez(os.path.join(out, "keras_adam_expected.npz"), **ref)
    # 2. a plain tf.Module: float32/float16/bfloat16/float64/int64 variables, written in two data shards
    class Net(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(1)
            self.emb = tf.Variable(rng.normal(size=(10, 4)).astype(np.float32), name="embedding")
            self.w16 = tf.Variable(rng.normal(size=(3, 5)).astype(np.float16), name="w16")
            self.wbf = tf.Variable(tf.cast(rng.normal(size=(4, 4)), tf.bfloat16), name="wbf")
            self.w64 = tf.Variable(rng.normal(size=(2, 3)), name="w64")
            self.count = tf.Variable(np.arange(3, dtype=np.int64), name="count")
            self.big = tf.Variable(rng.normal(size=(64, 32)).astype(np.float32), name="big")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: tf.Tensor) -> tf.Tensor:
            return tf.matmul(x, self.emb, transpose_b=True)

    net = Net()
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=4096))
    tf.train.Checkpoint(net=net).write(os.path.join(out, "module_sharded", "ckpt"), options=opts)
    np.savez(os.path.join(out, "module_expected.npz"),
             **{k: (v.numpy().astype(np.float32) if v.dtype == tf.bfloat16 else v.numpy())
                for k, v in (("emb", net.emb), ("w16", net.w16), ("wbf", net.wbf), ("w64", net.w64),
                             ("count", net.count), ("big", net.big))})
    # 3. a SavedModel directory (variables/variables.index + data)
    tf.saved_model.save(net, os.path.join(out, "saved_model"))
    for junk in ("fingerprint.pb", "assets"):
        p = os.path.join(out, "saved_model", junk)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    # 4. a TF1 partitioned variable (BundleEntryProto.slices), to test the refusal
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable("part", shape=[6, 2], partitioner=tf.compat.v1.fixed_size_partitioner(2),
                                  initializer=tf.compat.v1.ones_initializer())
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            saver.save(s, os.path.join(out, "tf1_partitioned", "model.ckpt"), write_meta_graph=False)
    # 5. Keras 2 (tf_keras) TF-format model.save_weights, with its optimizer after one step
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    k2 = tf_keras.Sequential([tf_keras.layers.Dense(4, activation="relu", name="dense", input_shape=(3,)),
                              tf_keras.layers.Dense(2, name="dense_1")])
    k2.compile(optimizer=tf_keras.optimizers.Adam(1e-2), loss="mse")
    k2.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    k2.save_weights(os.path.join(out, "keras2_weights", "ckpt"))  # no .h5 suffix: TF format
    np.savez(os.path.join(out, "keras2_expected.npz"), **{v.name[: -len(":0")]: v.numpy() for v in k2.weights})
    for junk in ("checkpoint",):
        for d in ("keras_adam", "module_sharded", "tf1_partitioned", "keras2_weights"):
            p = os.path.join(out, d, junk)
            if os.path.exists(p):
                os.remove(p)


def flax_fixtures() -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn
    from flax import serialization
    from flax.training import train_state

    out = os.path.join(HERE, "flax")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            tok = nn.Embed(11, 4)(jnp.zeros(x.shape[:1], jnp.int32))
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
            x = nn.Dense(5)(x) + tok.sum(-1, keepdims=True)
            return nn.Dense(2, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x)

    m = CNN()
    variables = m.init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 3)))
    state = train_state.TrainState.create(apply_fn=m.apply, params=variables["params"], tx=optax.adam(1e-3))
    blob = serialization.to_bytes({"step": 7, "params": state.params, "batch_stats": variables["batch_stats"],
                                   "opt_state": state.opt_state})
    with open(os.path.join(out, "cnn_state.msgpack"), "wb") as f:
        f.write(blob)
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v, dtype=np.float32)
            if v.dtype == jnp.bfloat16 else np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path({"params": state.params,
                                                                "batch_stats": variables["batch_stats"]})}
    np.savez(os.path.join(out, "cnn_state_expected.npz"), **flat)  # type: ignore[arg-type]
    # flax's chunked-array form (arrays above MAX_CHUNK_SIZE bytes): shrink the limit so a small array uses it
    serialization.MAX_CHUNK_SIZE = 64
    big = np.arange(40, dtype=np.float32).reshape(8, 5)
    with open(os.path.join(out, "chunked.msgpack"), "wb") as f:
        f.write(serialization.msgpack_serialize({"params": {"Dense_0": {"kernel": big, "bias": np.ones(5, np.float32)}}}))


def orbax_fixtures() -> None:
    """Orbax StandardCheckpointer folders (OCDBT + zarr). Needs `pip install orbax-checkpoint tensorstore` in
    the flax venv (orbax-checkpoint 0.12.8, tensorstore 0.1.86 used)."""
    import jax
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp
    from flax import linen as nn

    out = os.path.join(HERE, "orbax")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
            tok = nn.Embed(7, 4)(jnp.zeros(x.shape[:1], jnp.int32))
            x = nn.Dense(8)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.LayerNorm()(x) + tok.sum(-1, keepdims=True)
            return nn.Dense(3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(x)

    variables = MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 6)))
    opt_state = optax.adam(1e-3).init(variables["params"])
    state = {"step": 5, "params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": opt_state}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, "mlp_state"), state)
    ckptr.wait_until_finished()
    # the two other layouts PyTreeCheckpointer writes, params only: zarr3 in OCDBT, and zarr2 without OCDBT
    # (one folder per array)
    for name, kw in (("mlp_zarr3", {"use_zarr3": True}), ("mlp_no_ocdbt", {"use_ocdbt": False})):
        ck = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**kw))
        ck.save(os.path.join(out, name), args=ocp.args.PyTreeSave({"params": variables["params"]}))
    # a CheckpointManager directory: step folder 2/ with _CHECKPOINT_METADATA and one item folder default/
    mgr = ocp.CheckpointManager(os.path.join(out, "manager"))
    mgr.save(2, args=ocp.args.StandardSave({"params": {"Dense_0": {
        "kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.ones(4, np.float32)}}}))
    mgr.wait_until_finished()
    mgr.close()
    for name in ("mlp_state", "mlp_zarr3", "mlp_no_ocdbt", "manager/2", "manager/2/default"):
        os.remove(os.path.join(out, name, "commit_success.txt"))  # a log line naming the writer's absolute path
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v, dtype=np.float32)
            if v.dtype == jnp.bfloat16 else np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path({"params": variables["params"],
                                                                "batch_stats": variables["batch_stats"]})}
    np.savez(os.path.join(out, "mlp_state_expected.npz"), **flat)  # type: ignore[arg-type]


if __name__ == "__main__":
    what = sys.argv[1:] or ["tf", "flax", "orbax"]
    if "tf" in what:
        tf_fixtures()
    if "flax" in what:
        flax_fixtures()
    if "orbax" in what:
        orbax_fixtures()
