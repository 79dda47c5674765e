"""The pieces every model module shares: input stem, layer finder, visualization model, predictions."""

import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from course_utils.analysis import Analysis, MapSet, numbered, softmax
from course_utils.models import common


def tiny_classifier(input_size=32):
    inputs, images = common.image_input(image_size=16, input_size=input_size)
    features = keras.layers.Conv2D(4, 3, name="features")(images)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(pooled), name="tiny")


def visualization(model):
    return common.with_outputs(model, {"features": model.get_layer("features").output})


def uint8_images(count):
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_image_input_takes_uint8_and_crops_or_takes_floats_as_they_are():
    inputs, images = common.image_input(image_size=24, input_size=40)
    assert tuple(inputs.shape) == (None, 40, 40, 3) and inputs.dtype == "uint8" and tuple(images.shape) == (None, 24, 24, 3)
    inputs, images = common.image_input(image_size=24, include_preprocessing=False)
    assert inputs is images and tuple(inputs.shape) == (None, 24, 24, 3) and inputs.dtype == "float32"
    with pytest.raises(ValueError, match="input_size"):
        common.image_input(image_size=24, input_size=0)


def test_find_layers_in_order_and_names_the_builder_when_missing():
    model = tiny_classifier()
    assert [layer.name for layer in common.find_layers(model, keras.layers.Dense, "tiny_classifier()")] == ["head"]
    assert common.find_layer(model, keras.layers.Conv2D, "tiny_classifier()").name == "features"
    with pytest.raises(ValueError, match=r"no LayerNormalization layer: pass a model made by build_something\(\)"):
        common.find_layers(model, keras.layers.LayerNormalization, "build_something()")


def test_find_layer_wants_exactly_one():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(inputs)))
    with pytest.raises(ValueError, match="Expected one Dense layer .* found 2"):
        common.find_layer(model, keras.layers.Dense, "this builder")


def test_visualization_model_shares_weights_and_adds_named_outputs():
    model = tiny_classifier()
    viz = visualization(model)
    assert common.is_visualization_model(viz) and not common.is_visualization_model(model)
    assert set(viz.output) == {"logits", "features"} and viz.name == "tiny_visualization"
    assert len(viz.weights) == len(model.weights)
    head = model.get_layer("head")
    head.kernel.assign(np.zeros(head.kernel.shape))  # training the classifier changes what viz shows
    logits = keras.ops.convert_to_numpy(viz(uint8_images(2), training=False)["logits"])
    np.testing.assert_allclose(logits, np.broadcast_to(keras.ops.convert_to_numpy(head.bias), logits.shape))


def test_predict_outputs_gives_the_same_numbers_by_direct_call_and_by_batches():
    model = tiny_classifier()
    images = uint8_images(5)
    direct = common.predict_outputs(model, visualization, images, batch_size=8)  # 5 <= 8: one direct call
    batched = common.predict_outputs(visualization(model), visualization, images, batch_size=2)  # predict()
    assert direct.keys() == batched.keys() == {"logits", "features"}
    for name in direct:
        assert isinstance(direct[name], np.ndarray)
        np.testing.assert_allclose(direct[name], batched[name], rtol=1e-5, atol=1e-5)
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(direct["logits"], expected, rtol=1e-5, atol=1e-5)


def test_predict_outputs_sends_predict_full_batches_only_and_drops_the_padding(monkeypatch):
    viz_model = visualization(tiny_classifier())
    seen = []
    original_predict = viz_model.predict

    def recording_predict(images, *args, **kwargs):
        seen.append(len(images))
        return original_predict(images, *args, **kwargs)

    monkeypatch.setattr(viz_model, "predict", recording_predict)
    images = uint8_images(7)
    outputs = common.predict_outputs(viz_model, visualization, images, batch_size=3)  # 3 + 3 + 1 images
    assert seen == [9], "predict must see whole batches, or TensorFlow traces it again for the last one"
    assert all(len(value) == 7 for value in outputs.values())
    np.testing.assert_allclose(outputs["logits"], keras.ops.convert_to_numpy(viz_model(images)["logits"]),
                               rtol=1e-5, atol=1e-5)


def test_analyzing_several_fresh_models_logs_no_retracing_notice(caplog):
    images = uint8_images(40)
    with caplog.at_level(logging.WARNING):
        for _ in range(7):  # like a notebook going through a checkpoint's snapshots
            common.predict_outputs(tiny_classifier(), visualization, images, batch_size=16)
    assert not [record for record in caplog.records if "retracing" in record.getMessage()], caplog.text


def test_analysis_is_the_softmax_of_the_logits_with_the_maps():
    logits = np.array([[0.0, np.log(3.0)], [5.0, 5.0]], dtype="float32")
    maps = {"map": MapSet(np.zeros((2, 1, 2, 2)), ("all",))}
    result = common.analysis({"logits": logits}, maps)
    assert isinstance(result, Analysis) and result.maps is maps
    np.testing.assert_allclose(result.probabilities, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(softmax(np.array([[1000.0, 0.0]])), [[1.0, 0.0]])  # stable for large logits


def test_map_set_checks_its_labels_and_shape():
    with pytest.raises(ValueError, match="2 maps per image but 1 item labels"):
        MapSet(np.zeros((1, 2, 3, 3)), ("head 1",))
    with pytest.raises(ValueError, match=r"\(batch, items, height, width\)"):
        MapSet(np.zeros((2, 3, 3)), ("a", "b"))
    maps = MapSet(np.zeros((1, 2, 3, 4), dtype="float64"), numbered("head", 2), signed=True)
    assert maps.values.dtype == np.float32 and maps.grid == (3, 4) and maps.items == ("head 1", "head 2")


def test_item_correlation_is_one_for_copies_zero_for_unrelated_and_negative_for_opposites():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 1, 4, 4))
    copies = MapSet(np.concatenate([base, 3 * base + 2, 0.5 * base], axis=1), numbered("token", 3))
    assert copies.item_correlation() == pytest.approx(1.0, abs=1e-6)
    opposite = MapSet(np.concatenate([base, -base], axis=1), numbered("token", 2))
    assert opposite.item_correlation() == pytest.approx(-1.0, abs=1e-6)
    unrelated = MapSet(rng.normal(size=(200, 2, 16, 16)), numbered("token", 2))
    assert abs(unrelated.item_correlation()) < 0.02
    # a constant map has no pattern to share: it counts as unrelated, not as a copy
    flat = MapSet(np.concatenate([base, np.ones_like(base)], axis=1), numbered("token", 2))
    assert flat.item_correlation() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least two items"):
        MapSet(base, ("all",)).item_correlation()


LOAD_IN_A_FRESH_PROCESS = """
import sys
import course_utils  # alone: no course_utils name used, no model module imported
import keras
import numpy as np
model = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[2], keras.ops.convert_to_numpy(model(np.load(sys.argv[3]))))
"""


def test_a_saved_course_model_loads_in_a_fresh_process_after_import_course_utils_alone(tmp_path):
    from course_utils.models import token_learner

    model = token_learner.build_model(**token_learner.PROFILES["smoke"].model)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_IN_A_FRESH_PROCESS, str(tmp_path / "model.keras"), str(tmp_path / "logits.npy"),
         str(tmp_path / "images.npy")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), keras.ops.convert_to_numpy(model(images)),
                               rtol=1e-5, atol=1e-5)
