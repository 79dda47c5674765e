"""Data-parallel training (course_utils.distribute) on two simulated devices.

A framework fixes its device count when it starts, so each case runs in a fresh Python with its own
backend: JAX with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, TensorFlow with two logical CPU
devices, PyTorch with ``torch.cuda.device_count`` reporting two GPUs. The child prints one ``RESULT`` line
of JSON with what it saw; each test checks one part of it. On two devices the same tiny model is trained
twice from the same seed, data-parallel and on one device, to compare the loss curves.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from course_utils import distribute, profiles

CHILD = textwrap.dedent(
    r'''
    import contextlib, io, json, os, sys, tempfile
    backend, devices = os.environ["KERAS_BACKEND"], int(os.environ["TEST_DEVICES"])
    if backend == "tensorflow" and devices > 1:
        import tensorflow as tf  # logical devices must be configured before TensorFlow starts
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    import keras
    import numpy as np
    if backend == "torch" and devices > 1:
        import torch
        torch.cuda.device_count = lambda: devices  # pretend two GPUs; Keras already chose the CPU at import

    from course_utils import distribute, profiles, training

    result = {"visible": distribute.visible_devices()}
    backup = tempfile.mkdtemp()
    seen = []  # what the probe layer saw of the batches inside the compiled train step

    class Probe(keras.layers.Layer):
        """Identity that records how the batch it receives is spread over devices."""

        def call(self, x):
            if backend == "jax":
                import jax
                shape = x.shape  # the batch's shape and how many rows of it each device holds
                jax.debug.inspect_array_sharding(
                    x, callback=lambda s: seen.append([shape[0], len(s.device_set), s.shard_shape(shape)[0]]))
            elif backend == "tensorflow":
                import tensorflow as tf  # called once per replica while the step is traced
                context = tf.distribute.get_replica_context()  # None while the model is built
                if context is not None:
                    seen.append([int(tf.get_static_value(context.replica_id_in_sync_group)), x.shape[0]])
            return x

    def tiny_model():
        images = keras.Input((8, 8, 3), dtype="uint8")
        x = Probe()(keras.layers.Rescaling(1 / 255)(images))
        x = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(x))
        return keras.Model(images, keras.layers.Dense(3)(x))

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 3, (64, 1))
    profile = profiles.Profile(name="smoke", epochs=5, batch_size=16, learning_rate=1e-2)
    full = profiles.Profile(name="full", epochs=1, batch_size=16)

    def build_and_train(enable, data=(x, y), run_profile=profile):
        keras.utils.set_random_seed(0)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            with distribute.distribution_scope(run_profile, enable=enable) as plan:
                inside = keras.distribution.distribution() if backend == "jax" else None
                model = tiny_model()
            seen.clear()
            run = training.train(model, data, data, run_profile, f"run{enable}", backup_root=backup, verbose=0)
        facts = {"active": plan.active, "devices": list(plan.devices), "printed": printed.getvalue(),
                 "loss": [float(v) for v in run.history["loss"]],
                 # JAX: [batch, devices, rows per device]; TF: [replica, rows], as fit's compiled steps saw them
                 "probe": sorted(set(map(tuple, seen))),
                 "trained_active": distribute.plan_of(model).active}
        if backend == "jax":
            facts["mesh"] = list(inside.device_mesh.shape) if inside is not None else None
            facts["variable_devices"] = sorted(
                {len(v.value.sharding.device_set) for v in model.weights + model.optimizer.variables})
            if plan.active:
                batch = keras.distribution.distribute_tensor(x[:16], plan.distribution.get_data_layout((16, 8, 8, 3)))
                facts["batch_shards"] = sorted(
                    (f"{s.device.platform}:{s.device.id}", s.data.shape[0]) for s in batch.addressable_shards)
        if backend == "tensorflow":
            import tensorflow as tf
            strategy = model.distribute_strategy
            facts["replicas"] = strategy.num_replicas_in_sync
            facts["variable_copies"] = sorted(
                {len(strategy.experimental_local_results(v.value)) for v in model.weights + model.optimizer.variables})
            if plan.active:
                batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(16))
                parts = strategy.experimental_local_results(next(iter(batches)))
                facts["batch_shards"] = sorted(
                    (part.device.rsplit("device:", 1)[-1], int(part.shape[0])) for part in parts)
        return facts

    result["parallel"] = build_and_train(enable=True)
    if devices > 1 and backend != "torch":
        result["single"] = build_and_train(enable=False)
        for name, kind in (("full", full), ("smoke", profile)):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                result[f"default_{name}"] = distribute.data_parallel_plan(kind).active
            result[f"default_{name}_printed"] = printed.getvalue()
        try:
            distribute.data_parallel_plan(profiles.Profile(name="smoke", epochs=1, batch_size=15), enable=True)
        except ValueError as error:
            result["odd_batch_error"] = str(error)
        odd = (np.concatenate([x, x[:3]]), np.concatenate([y, y[:3]]))  # 67 samples: last batch of 3
        uneven = build_and_train(enable=True, data=odd, run_profile=profiles.Profile(
            name="smoke", epochs=1, batch_size=16))
        result["uneven"] = {"printed": uneven["printed"], "loss": uneven["loss"]}
    print("RESULT " + json.dumps(result))
    '''
)


def run_child(backend, devices):
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env.update(KERAS_BACKEND=backend, TEST_DEVICES=str(devices), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax" and devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    completed = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, (
        f"{backend} child failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def jax_two():
    return run_child("jax", 2)


@pytest.fixture(scope="module")
def tf_two():
    return run_child("tensorflow", 2)


def test_jax_spreads_model_and_batches_over_both_devices(jax_two):
    parallel = jax_two["parallel"]
    assert jax_two["visible"] == ["cpu:0", "cpu:1"]
    assert parallel["active"] and parallel["devices"] == ["cpu:0", "cpu:1"] and parallel["trained_active"]
    assert parallel["mesh"] == [2], "distribution_scope should set a DataParallel over a 2-device mesh"
    assert parallel["variable_devices"] == [2], "every model and optimizer variable should live on both devices"
    assert parallel["batch_shards"] == [["cpu:0", 8], ["cpu:1", 8]], "a batch of 16 should be split 8 + 8"
    assert parallel["probe"] == [[16, 2, 8]], "inside fit, each batch of 16 should arrive split 8 + 8 over 2 devices"
    assert "cpu:0, cpu:1" in parallel["printed"] and "global batch 16 = 2 x 8 per device" in parallel["printed"]


def test_tensorflow_mirrors_model_and_batches_over_both_replicas(tf_two):
    parallel = tf_two["parallel"]
    assert tf_two["visible"] == ["cpu:0", "cpu:1"]
    assert parallel["active"] and parallel["trained_active"] and parallel["replicas"] == 2
    assert parallel["variable_copies"] == [2], "model and optimizer variables should be mirrored on both devices"
    assert parallel["batch_shards"] == [["CPU:0", 8], ["CPU:1", 8]]
    assert parallel["probe"] == [[0, 8], [1, 8]], "inside fit, each replica should get 8 of the 16 images"
    assert "MirroredStrategy" in parallel["printed"] and "2 x 8 per device" in parallel["printed"]


@pytest.mark.parametrize("fixture", ["jax_two", "tf_two"])
def test_loss_curve_matches_one_device_training(fixture, request):
    result = request.getfixturevalue(fixture)
    parallel, single = result["parallel"]["loss"], result["single"]["loss"]
    assert not result["single"]["active"]
    assert [seen[-1] for seen in result["single"]["probe"]] == [16], "on one device the step sees whole batches"
    assert len(parallel) == len(single) == 5
    assert parallel[-1] < 0.9 * parallel[0] and single[-1] < 0.9 * single[0], (parallel, single)
    # Same seed, same data, same global batch: the gradient is the same mean, only summed in another order.
    assert parallel == pytest.approx(single, rel=1e-3), (parallel, single)


@pytest.mark.parametrize("fixture", ["jax_two", "tf_two"])
def test_only_the_full_profile_is_distributed_by_default(fixture, request):
    result = request.getfixturevalue(fixture)
    assert result["default_full"] is True and result["default_smoke"] is False
    assert "profile 'smoke' trains on one" in result["default_smoke_printed"]
    assert "enable=True" in result["default_smoke_printed"]
    assert "2 devices" in result["single"]["printed"]  # enable=False also says that it leaves one idle


@pytest.mark.parametrize("fixture", ["jax_two", "tf_two"])
def test_a_batch_that_does_not_split_evenly_is_refused(fixture, request):
    assert "multiple of 2" in request.getfixturevalue(fixture)["odd_batch_error"]


def test_jax_drops_the_samples_that_would_leave_an_uneven_last_batch(jax_two):
    uneven = jax_two["uneven"]
    assert "dropped 2 sample(s)" in uneven["printed"]  # 67 training + 67 validation images on 2 devices
    assert len(uneven["loss"]) == 1


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_one_device_means_no_distribution(backend):
    result = run_child(backend, 1)
    parallel = result["parallel"]
    assert result["visible"] == ["cpu:0"]
    assert not parallel["active"] and not parallel["trained_active"] and parallel["devices"] == ["cpu:0"]
    assert parallel["printed"] == "", "nothing should be printed on one device"
    if backend == "jax":
        assert parallel["mesh"] is None and parallel["variable_devices"] == [1]
    else:
        assert parallel["replicas"] == 1 and parallel["variable_copies"] == [1]
    assert parallel["loss"][-1] < parallel["loss"][0]


def test_torch_says_it_trains_on_one_device():
    result = run_child("torch", 2)
    parallel = result["parallel"]
    assert result["visible"] == ["cuda:0", "cuda:1"]
    assert not parallel["active"] and parallel["devices"] == ["cuda:0"]
    lines = parallel["printed"].strip().splitlines()
    assert len(lines) == 1, lines
    assert "Keras has no multi-device training on the PyTorch backend" in lines[0] and "one device" in lines[0]
    assert parallel["loss"][-1] < parallel["loss"][0]


def test_arguments_are_checked():
    profile = profiles.Profile(name="full", epochs=1, batch_size=8)
    with pytest.raises(TypeError, match="Profile"):
        with distribute.distribution_scope("full"):
            pass
    with pytest.raises(TypeError, match="enable"):
        distribute.data_parallel_plan(profile, enable="yes")
    with pytest.raises(TypeError, match="keras.Model"):
        distribute.plan_of(object())
    one = distribute.DataParallelPlan("jax", ("cpu:0",))
    assert not one.active and one.num_devices == 1 and one.per_device_batch(7) == 7
    assert one.even_split([1, 2, 3])[1] == 0


def test_describe_device_names_the_cpu():
    assert "CPU" in distribute.describe_device() or "gpu" in distribute.describe_device().lower()
