"""The model-module protocol (CONTRIBUTING.md), checked the same way for all five modules.

Each module has PROFILES, a keyword-only ``build_model`` with the shared argument names, a
``visualization_model`` on the same weights and an ``analyze`` that returns an ``Analysis`` of MapSets.
Every profile's model, ``full`` included, is built and trained for one step on a tiny batch, so the GPU
configuration cannot rot unseen. The ``full`` models (the largest, the slowest to compile) are marked
``main_backend_only``: tests/test_backends.py leaves them out of its JAX and PyTorch runs, where the smoke and
workshop models of the same builders take their step.
"""

import importlib
import inspect

import keras
import numpy as np
import pytest
from helpers import train_one_step

from course_utils.analysis import Analysis, MapSet
from course_utils.models import MODEL_MODULES, import_all
from course_utils.profiles import PROFILE_NAMES

MODULES = import_all()
SHARED_ARGUMENTS = {"image_size", "input_size", "resize_to", "include_preprocessing", "num_classes", "name"}


def uint8_images(count, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_builder_is_keyword_only_and_takes_the_shared_arguments(module_name):
    parameters = inspect.signature(MODULES[module_name].build_model).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values()), list(parameters)
    assert SHARED_ARGUMENTS <= set(parameters), SHARED_ARGUMENTS - set(parameters)
    assert {"epsilon", "dimensions", "num_layers", "layerscale_value"}.isdisjoint(parameters), "one name per hyperparameter"


@pytest.mark.parametrize(
    "profile_name",
    [pytest.param(name, marks=pytest.mark.main_backend_only) if name == "full" else name for name in PROFILE_NAMES],
)
@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_every_profile_builds_a_logits_model_that_trains_one_step(module_name, profile_name):
    module = MODULES[module_name]
    model = module.build_model(**module.PROFILES[profile_name].model)
    assert model.input_shape == (None, 32, 32, 3) and model.inputs[0].dtype == "uint8"
    assert model.output_shape == (None, 10)
    train_one_step(model, batch_size=2)


@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_analyze_returns_probabilities_and_labelled_maps(module_name):
    module = MODULES[module_name]
    model = module.build_model(**module.PROFILES["smoke"].model)
    images = uint8_images(3)
    viz_model = module.visualization_model(model)
    assert set(viz_model.output) > {"logits"}
    assert len(viz_model.weights) == len(model.weights), "the visualization model must share the weights"
    result = module.analyze(viz_model, images, batch_size=2)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    logits = np.asarray(model.predict(images, verbose=0))
    np.testing.assert_array_equal(probabilities.argmax(axis=1), logits.argmax(axis=1))
    assert maps and all(isinstance(value, MapSet) for value in maps.values())
    for name, value in maps.items():
        assert value.batch_size == 3 and len(value.items) == value.values.shape[1], name
        assert len(set(value.items)) == len(value.items), f"{name}: item labels repeat"
        assert value.description, f"{name}: say what a value is"
    # The classifier itself is accepted too and gives the same result.
    again = module.analyze(model, images)
    np.testing.assert_allclose(again.probabilities, probabilities, rtol=1e-4, atol=1e-6)
    # Float pixel values 0..255 are the same images; floats in [0, 1] (divided by 255) are refused everywhere,
    # not cast to black images (course_utils.models.common.require_pixel_values).
    as_floats = module.analyze(viz_model, images.astype("float32"))
    np.testing.assert_allclose(as_floats.probabilities, probabilities, rtol=1e-4, atol=1e-6)
    scaled = images / 255
    for call in (lambda: model(scaled), lambda: model.predict(scaled, verbose=0), lambda: viz_model(scaled),
                 lambda: module.analyze(viz_model, scaled), lambda: module.analyze(model, scaled)):
        with pytest.raises(ValueError, match=r"in \[0, 1\].*multiply yours by 255"):
            call()


@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_builder_takes_other_input_sizes_and_float_images(module_name):
    module = MODULES[module_name]
    arguments = dict(module.PROFILES["smoke"].model)
    bigger = module.build_model(**{**arguments, "input_size": 40})
    assert bigger.input_shape == (None, 40, 40, 3)
    without = module.build_model(**{**arguments, "include_preprocessing": False})
    side = arguments["image_size"]
    assert without.input_shape == (None, side, side, 3) and without.inputs[0].dtype == "float32"


@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_a_direct_call_is_inference_and_matches_predict(module_name):
    # model(images) with no training flag must not crop, flip or drop at random (Keras's image layers
    # default to training=True and hand that on: see course_utils.augment.Resize).
    module = MODULES[module_name]
    arguments = {**module.PROFILES["smoke"].model, "resize_to": 40}
    if "dropout_rate" in inspect.signature(module.build_model).parameters:
        arguments["dropout_rate"] = 0.5
    model = module.build_model(**arguments)
    images = uint8_images(4)
    first = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), first)
    np.testing.assert_allclose(np.asarray(model.predict(images, verbose=0)), first, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argument", ["patch_size", "num_heads"])
@pytest.mark.parametrize("module_name", [*MODEL_MODULES, "vit"])
def test_a_zero_patch_size_or_head_count_is_a_clear_error(module_name, argument):
    module = importlib.import_module(f"course_utils.models.{module_name}")
    builders = [getattr(module, name) for name in ("build_model", "build_baseline", "build_vit") if hasattr(module, name)]
    builders = [builder for builder in builders if argument in inspect.signature(builder).parameters]
    for builder in builders:  # not a ZeroDivisionError from deep inside
        with pytest.raises(ValueError, match=f"`{argument}` must be .*got 0"):
            builder(**{argument: 0})
