"""Shared checks for layers and models, run on whichever Keras backend is active."""

import os

import keras
import numpy as np

from course_utils.training import classification_loss


def random_inputs(shape, seed=0, dtype="float32"):
    """Deterministic random numpy input of ``shape``."""
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _as_numpy(outputs):
    if isinstance(outputs, dict):
        return {key: keras.ops.convert_to_numpy(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(value) for value in outputs]
    return keras.ops.convert_to_numpy(outputs)


def assert_outputs_close(actual, expected, atol=1e-5):
    actual, expected = _as_numpy(actual), _as_numpy(expected)
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(actual[key], expected[key], atol=atol, err_msg=f"output {key!r}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(a, e, atol=atol)
    else:
        np.testing.assert_allclose(actual, expected, atol=atol)


def check_layer(layer_cls, init_kwargs, input_shape, expected_output_shape, tmp_path, input_data=None, atol=1e-5):
    """Check a layer the way Keras checks its own, and return the built layer.

    - weights are created lazily: none before the first call;
    - the output shape (a tuple, or a list of tuples for several outputs) is as expected;
    - ``get_config`` returns every constructor argument and ``from_config`` rebuilds an equal layer;
    - inside a model, ``.keras`` save/load gives identical outputs.
    """
    layer = layer_cls(**init_kwargs)
    assert not layer.weights, f"{layer_cls.__name__} created weights before it saw an input"
    x = random_inputs(input_shape) if input_data is None else input_data
    outputs = layer(x)
    shapes = [tuple(o.shape) for o in outputs] if isinstance(outputs, (list, tuple)) else tuple(outputs.shape)
    assert shapes == expected_output_shape, f"got {shapes}, expected {expected_output_shape}"

    config = layer.get_config()
    for name, value in init_kwargs.items():
        assert name in config, f"get_config() of {layer_cls.__name__} misses constructor argument {name!r}"
        if not callable(value):
            assert config[name] == value or np.allclose(config[name], value), (name, config[name], value)
    clone = layer_cls.from_config(config)
    clone_outputs = clone(x)
    assert type(clone_outputs) is type(outputs)

    check_model_round_trip(_wrap_in_model(layer, input_shape, x.dtype), x, tmp_path, atol=atol)
    return layer


def _wrap_in_model(layer, input_shape, dtype):
    inputs = keras.Input(shape=input_shape[1:], batch_size=None, dtype=str(dtype))
    return keras.Model(inputs, layer(inputs))


def check_model_round_trip(model, x, tmp_path, atol=1e-5):
    """Save ``model`` as ``.keras``, load it back and compare outputs on ``x`` (inference mode)."""
    expected = model(x, training=False)
    path = os.path.join(str(tmp_path), f"{model.name}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert_outputs_close(restored(x, training=False), expected, atol=atol)
    return restored


def train_one_step(model, batch_size=2, image_size=None, num_classes=10, seed=0):
    """Compile ``model`` and run one ``fit`` step on a tiny random uint8 batch; return the loss."""
    image_size = image_size or model.input_shape[1]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(batch_size, 1), dtype=np.uint8)
    model.compile(optimizer="adam", loss=classification_loss())
    history = model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), "loss is not finite after one step"
    return loss
