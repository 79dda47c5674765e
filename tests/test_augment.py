import keras
import numpy as np
import pytest
from helpers import check_layer

from course_utils.augment import RandomHorizontalFlip, RandomOrCenterCrop, Resize, preprocessing
from course_utils.training import classification_loss


def uint8_images(batch=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_crop_layer(tmp_path):
    check_layer(RandomOrCenterCrop, {"size": 6, "seed": 1}, (2, 8, 8, 3), (2, 6, 6, 3), tmp_path)


@pytest.mark.parametrize("training", [True, False])
def test_training_and_inference_give_the_same_size(training):
    layers = preprocessing(image_size=48, resize_to=52)
    out = keras.ops.convert_to_numpy(layers(uint8_images(), training=training))
    assert out.shape == (4, 48, 48, 3)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_resize_layer(tmp_path):
    check_layer(Resize, {"height": 10, "width": 10}, (2, 8, 8, 3), (2, 10, 10, 3), tmp_path)


def test_flip_layer(tmp_path):
    check_layer(RandomHorizontalFlip, {"seed": 1}, (2, 8, 8, 3), (2, 8, 8, 3), tmp_path)


def test_flip_happens_only_in_training():
    images = keras.ops.convert_to_numpy(uint8_images(batch=16)).astype("float32")
    flip = RandomHorizontalFlip(seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(flip(images)), images)
    flipped = keras.ops.convert_to_numpy(flip(images, training=True))
    mirrored = [np.array_equal(out, image[:, ::-1]) for out, image in zip(flipped, images)]
    kept = [np.array_equal(out, image) for out, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_a_model_called_directly_gives_the_same_answer_every_time():
    # Keras's RandomFlip defaults to training=True, so a direct call model(images) used to flip at random.
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    outputs = keras.layers.Flatten()(preprocessing(image_size=32)(inputs))
    model = keras.Model(inputs, outputs)
    images = uint8_images(batch=16)
    first = keras.ops.convert_to_numpy(model(images))
    for _ in range(3):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), first)


def test_inference_is_deterministic_and_training_is_random():
    layers = preprocessing(image_size=32)
    images = uint8_images(batch=8)
    first = keras.ops.convert_to_numpy(layers(images, training=False))
    np.testing.assert_array_equal(first, keras.ops.convert_to_numpy(layers(images, training=False)))
    augmented = keras.ops.convert_to_numpy(layers(images, training=True))
    assert not np.allclose(augmented, first)


def test_inference_centre_crops_the_resized_image_instead_of_resizing_to_the_crop():
    """Objects keep the same scale in training (random crops of the resize) and at evaluation (its centre)."""
    images = uint8_images(batch=2)
    out = keras.ops.convert_to_numpy(preprocessing(image_size=32, resize_to=36)(images, training=False))
    resized = keras.ops.convert_to_numpy(keras.layers.Resizing(36, 36)(images.astype("float32") / 255.0))
    np.testing.assert_allclose(out, resized[:, 2:34, 2:34], atol=1e-5)
    squeezed = keras.ops.convert_to_numpy(keras.layers.Resizing(32, 32)(images.astype("float32") / 255.0))
    assert not np.allclose(out, squeezed, atol=1e-2)


def test_model_fits_uint8_arrays_directly(tmp_path):
    images = keras.Input((32, 32, 3), dtype="uint8")
    x = preprocessing(image_size=24, resize_to=28)(images)
    x = keras.layers.Conv2D(4, 3)(x)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(images, logits)
    model.compile("adam", classification_loss())
    history = model.fit(uint8_images(8), np.arange(8).reshape(8, 1), epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(uint8_images(3), verbose=0).shape == (3, 10)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="smaller than image_size"):
        preprocessing(image_size=32, resize_to=30)
    with pytest.raises(ValueError, match="resize to at least 8"):
        RandomOrCenterCrop(8)(np.zeros((1, 6, 6, 3), "float32"))


def windows(image, size):
    """Every ``size x size`` window of one ``(height, width, channels)`` image, keyed by its offset."""
    height, width = image.shape[:2]
    return {(top, left): image[top:top + size, left:left + size]
            for top in range(height - size + 1) for left in range(width - size + 1)}


def test_random_crops_are_windows_of_each_image_at_offsets_drawn_per_image():
    images = np.random.default_rng(1).random((16, 10, 10, 2)).astype("float32")
    crops = keras.ops.convert_to_numpy(RandomOrCenterCrop(6, seed=3)(images, training=True))
    offsets = []
    for image, crop in zip(images, crops):
        found = [offset for offset, window in windows(image, 6).items() if np.array_equal(window, crop)]
        assert found, "a random crop must be an unchanged window of its own image"
        offsets.append(found[0])
    assert len(set(offsets)) > 4, f"16 images got only the offsets {sorted(set(offsets))}: drawn once per batch?"
    corners = {(0, 0), (4, 4)}
    wide = RandomOrCenterCrop(6, seed=5)
    seen = set()
    for _ in range(30):  # every offset, the extreme ones included, can be drawn
        crops = keras.ops.convert_to_numpy(wide(images, training=True))
        seen |= {offset for image, crop in zip(images, crops)
                 for offset, window in windows(image, 6).items() if np.array_equal(window, crop)}
    assert corners <= seen


def test_preprocessing_lets_keras_compile_the_model_with_xla():
    # One layer that declares supports_jit = False (Keras's RandomCrop does) makes jit_compile="auto" run the
    # whole model uncompiled, op by op on JAX.
    layers = preprocessing(image_size=24, resize_to=28)
    assert [layer.name for layer in layers.layers if not layer.supports_jit] == []
