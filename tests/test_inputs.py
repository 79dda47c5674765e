"""What the models, train() and evaluate() do with images that are not uint8 pixels (run on every backend).

A uint8 model fed floats in [0, 1] would cast them to 0 and 1 and train on black images without a word;
every entry point refuses them with the fix (multiply by 255), and accepts floats of the pixel values 0..255.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest

from course_utils import training
from course_utils.models import vit
from course_utils.profiles import Profile

IMAGES = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(8) % 10
PROFILE = Profile(name="smoke", epochs=1, batch_size=4)


def tiny_vit():
    return vit.build_vit(image_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=1)


def plain_model():
    """A learner's own uint8 model: not built by course_utils, still checked by train() and evaluate()."""
    images = keras.Input((32, 32, 3), dtype="uint8")
    return keras.Model(images, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))))


@pytest.mark.parametrize("make_model", [tiny_vit, plain_model], ids=["course-model", "plain-keras-model"])
@pytest.mark.parametrize("images, problem", [
    (IMAGES / 255, r"in \[0, 1\].*multiply yours by 255"),
    ((IMAGES - 127.5) / 64, r"from -1\.99.*not normalized"),
    (np.full(IMAGES.shape, np.nan, "float32"), "outside|from nan"),
], ids=["divided-by-255", "normalized", "nan"])
def test_train_and_evaluate_refuse_floats_that_are_not_pixel_values(tmp_path, make_model, images, problem):
    model = make_model()
    with pytest.raises(ValueError, match=problem):
        training.train(model, (images, LABELS), None, PROFILE, "floats", backup_root=tmp_path, verbose=0)
    with pytest.raises(ValueError, match=problem):
        training.train(model, (IMAGES, LABELS), (images, LABELS), PROFILE, "floats", backup_root=tmp_path, verbose=0)
    with pytest.raises(ValueError, match=problem):
        training.evaluate(model, images, LABELS)
    assert not (tmp_path / "floats-smoke").exists(), "nothing may train on the refused images"


def test_float_pixel_values_are_the_same_images(tmp_path):
    model = tiny_vit()
    as_floats = IMAGES.astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(as_floats)), keras.ops.convert_to_numpy(model(IMAGES)),
                               rtol=1e-5, atol=1e-6)
    assert training.evaluate(model, as_floats, LABELS) == training.evaluate(model, IMAGES, LABELS)
    with pytest.raises(ValueError, match="multiply yours by 255"):
        model.fit(IMAGES / 255, LABELS, epochs=1, verbose=0)  # the model's own fit, not only train()
    result = training.train(model, (as_floats, LABELS), None, PROFILE, "floats", backup_root=tmp_path, verbose=0)
    assert np.isfinite(result.history["loss"][0])


def test_a_model_without_preprocessing_takes_floats_in_0_1_as_they_are():
    model = vit.build_vit(image_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=1, include_preprocessing=False)
    assert keras.ops.convert_to_numpy(model(np.full((2, 8, 8, 3), 0.5, "float32"))).shape == (2, 10)
