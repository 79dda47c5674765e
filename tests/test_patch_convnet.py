import keras
import numpy as np
import pytest
from helpers import check_layer, check_model_round_trip, random_inputs, train_one_step

from course_utils.models import patch_convnet as pc
from course_utils.training import classification_loss

# A model small enough to fit in a test: 16x16 crops -> a 4x4 attention grid.
TINY = dict(dimensions=8, depth=2, se_ratio=2, image_size=16, resize_to=18, input_size=16)
TINY_GRID = 4


def tiny_model(**overrides):
    keras.utils.set_random_seed(0)
    return pc.build_patch_convnet(**{**TINY, **overrides})


def uint8_images(count, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
def test_conv_stem_quarters_the_resolution(tmp_path):
    check_layer(pc.ConvStem, {"dimensions": 8}, (2, 16, 12, 3), (2, 4, 3, 8), tmp_path)
    layer = pc.ConvStem(8)
    layer(random_inputs((1, 8, 8, 3)))
    assert layer.conv_1.filters == 4 and layer.conv_2.filters == 8  # d / 2, then d


def test_conv_stem_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`dimensions` must be even.*got 7.*6 or 8"):
        pc.ConvStem(7)
    with pytest.raises(ValueError, match="positive integer"):
        pc.ConvStem(0)
    with pytest.raises(ValueError, match=r"height must be a multiple of 4; got 18\. Resize the images to 16 or 20"):
        pc.ConvStem(8)(random_inputs((1, 18, 16, 3)))


def test_squeeze_excite_gates_each_channel(tmp_path):
    layer = check_layer(pc.SqueezeExcite, {"ratio": 2}, (2, 3, 3, 8), (2, 3, 3, 8), tmp_path)
    x = np.abs(random_inputs((2, 3, 3, 8))) + 0.1
    gate = numpy(layer(x)) / x
    # One gate per sample and channel, the same at every position, strictly between 0 and 1.
    np.testing.assert_allclose(gate, np.broadcast_to(gate[:, :1, :1, :], gate.shape), rtol=1e-5)
    assert np.all((gate > 0) & (gate < 1))
    assert not np.allclose(gate[0], gate[1])  # computed from each sample's own map
    assert [tuple(w.shape) for w in layer.weights] == [(8, 4), (4, 8)]  # no biases


def test_squeeze_excite_rejects_ratio_that_does_not_divide_channels():
    with pytest.raises(ValueError, match=r"`channels`=6 is not divisible by `ratio`=4"):
        pc.SqueezeExcite(4)(random_inputs((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="positive integer"):
        pc.SqueezeExcite(0)


def test_trunk_block_is_residual_and_keeps_shape(tmp_path):
    layer = check_layer(pc.TrunkBlock, {"se_ratio": 2, "epsilon": 1e-5}, (2, 4, 4, 8), (2, 4, 4, 8), tmp_path)
    x = random_inputs((2, 4, 4, 8))
    assert not np.allclose(numpy(layer(x)), x)
    # With the last projection zeroed, the block is exactly the identity: the branch is added to x.
    layer.project.kernel.assign(np.zeros(layer.project.kernel.shape, "float32"))
    np.testing.assert_allclose(numpy(layer(x)), x, atol=1e-6)


def test_trunk_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`channels`=6 is not divisible by `se_ratio`=4"):
        pc.TrunkBlock(se_ratio=4)(random_inputs((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="epsilon"):
        pc.TrunkBlock(epsilon=0)
    with pytest.raises(ValueError, match="expects images shaped"):
        pc.TrunkBlock(se_ratio=2)(random_inputs((1, 4, 8)))


def test_attention_pooling_returns_pooled_vector_and_patch_weights(tmp_path):
    keras.utils.set_random_seed(0)
    layer = check_layer(
        pc.AttentionPooling,
        {"num_heads": 2, "dropout_rate": 0.1, "epsilon": 1e-5},
        (2, 6, 8),
        [(2, 8), (2, 2, 6)],
        tmp_path,
    )
    pooled, weights = layer(random_inputs((2, 6, 8)))
    weights = numpy(weights)
    # Softmax rows over [class token, patches]: patch weights are positive and sum to less than 1.
    assert np.all(weights > 0)
    assert np.all(weights.sum(axis=-1) < 1.0)
    assert weights.sum(axis=-1).min() > 0.5  # most of the mass is on the 6 patches at initialization
    assert [w.path.split("/")[-1] for w in layer.weights].count("class_token") == 1


def test_attention_pooling_is_invariant_to_patch_order():
    layer = pc.AttentionPooling(num_heads=1, dropout_rate=0.0)
    x = random_inputs((2, 5, 8), seed=1)
    order = np.array([3, 0, 4, 1, 2])
    pooled, weights = layer(x)
    pooled_perm, weights_perm = layer(x[:, order])
    np.testing.assert_allclose(numpy(pooled_perm), numpy(pooled), atol=1e-5)
    np.testing.assert_allclose(numpy(weights_perm), numpy(weights)[..., order], atol=1e-6)


def test_attention_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`channels`=8 is not divisible by `num_heads`=3"):
        pc.AttentionPooling(num_heads=3)(random_inputs((1, 4, 8)))
    with pytest.raises(ValueError, match=r"dropout_rate.*\[0, 1\)"):
        pc.AttentionPooling(dropout_rate=1.0)
    with pytest.raises(ValueError, match="Flatten a"):
        pc.AttentionPooling()(random_inputs((1, 2, 2, 8)))


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
def test_builder_maps_uint8_images_to_logits(tmp_path):
    model = tiny_model(num_classes=7)
    images = uint8_images(2)
    logits = numpy(model(images, training=False))
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
    assert model.input.dtype == "uint8"
    assert model.get_layer("preprocessing").output.shape[1:] == (16, 16, 3)
    check_model_round_trip(model, images, tmp_path)


def test_builder_without_preprocessing_takes_float_images():
    model = tiny_model(include_preprocessing=False, image_size=8)
    assert model.input_shape == (None, 8, 8, 3)
    assert numpy(model(random_inputs((2, 8, 8, 3)))).shape == (2, 10)
    assert all(layer.name != "preprocessing" for layer in model.layers)


def test_builder_rejects_bad_configurations():
    with pytest.raises(ValueError, match=r"`dimensions`=12 is not divisible by `se_ratio`=8"):
        pc.build_patch_convnet(dimensions=12, se_ratio=8)
    with pytest.raises(ValueError, match=r"`dimensions`=8 is not divisible by `num_heads`=3"):
        pc.build_patch_convnet(dimensions=8, se_ratio=2, num_heads=3)
    with pytest.raises(ValueError, match=r"`image_size` must be a multiple of 4.*image_size=28 or 32"):
        pc.build_patch_convnet(image_size=30)
    with pytest.raises(ValueError, match=r"`depth` must be a positive integer"):
        pc.build_patch_convnet(depth=0)


def test_trunk_blocks_have_independent_weights():
    model = tiny_model(depth=3)
    blocks = pc.trunk_blocks(model)
    assert [b.name for b in blocks] == ["trunk_block_0", "trunk_block_1", "trunk_block_2"]
    variables = [v for b in blocks for v in b.weights]
    assert len({id(v) for v in variables}) == len(variables)
    assert len({v.path for v in variables}) == len(variables)
    # Distinct objects could still alias one buffer: change one block and the others must not move.
    first, second = blocks[0].spatial.kernel, blocks[1].spatial.kernel
    before = numpy(second).copy()
    first.assign(numpy(first) + 1.0)
    np.testing.assert_array_equal(numpy(second), before)


def test_parameter_count_grows_by_one_block_per_depth():
    counts = {depth: tiny_model(depth=depth).count_params() for depth in (1, 2, 3)}
    one_block = pc.trunk_blocks(tiny_model(depth=1))[0].count_params()
    assert counts[2] - counts[1] == one_block
    assert counts[3] - counts[2] == one_block
    # LayerNorm 2d + two convolutions d->d (1x1, 3x3) + SE (2 * d * d / r) + 1x1 projection, d = 8, r = 2.
    d = 8
    assert one_block == 2 * d + (d * d + d) + (9 * d * d + d) + 2 * d * d // 2 + (d * d + d)


def test_reference_configuration_has_the_documented_parameter_count():
    # keras.io example with two independent trunk blocks: 2,174,986 (it printed 1,436,426 because its
    # blocks shared one set of layers; 2,174,986 - 1,436,426 = 738,560 = one block at width 256).
    model = pc.build_patch_convnet()
    assert model.count_params() == 2_174_986
    assert pc.trunk_blocks(model)[0].count_params() == 738_560
    assert model.count_params() - 738_560 == 1_436_426
    assert pc.visualization_model(model).output["attention"].shape[1:] == (1, 12, 12)


def test_visualization_model_exposes_logits_and_attention_grid():
    model = tiny_model(num_heads=2)
    viz = pc.visualization_model(model)
    images = uint8_images(3)
    outputs = viz(images, training=False)
    assert set(outputs) == {"logits", "attention"}
    np.testing.assert_allclose(numpy(outputs["logits"]), numpy(model(images, training=False)), atol=1e-5)
    assert tuple(outputs["attention"].shape) == (3, 2, TINY_GRID, TINY_GRID)
    # Same weights: the visualization model has no variables of its own.
    assert {id(v) for v in viz.weights} == {id(v) for v in model.weights}


def test_visualization_model_rejects_other_models():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="needs a model from build_patch_convnet"):
        pc.visualization_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_analyze_returns_probabilities_and_maps():
    viz = pc.visualization_model(tiny_model())
    probabilities, maps = pc.analyze(viz, uint8_images(3))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert set(maps) == {"attention"}
    attention = maps["attention"]
    assert attention.shape == (3, 1, TINY_GRID, TINY_GRID)
    assert np.all(attention > 0) and np.all(attention.sum(axis=(1, 2, 3)) < 1.0)


# ------------------------------------------------------------------------------------------------
# Training: plain compile / fit, the attention recorder
# ------------------------------------------------------------------------------------------------
def test_attention_recorder_records_at_the_end_of_every_nth_epoch():
    model = tiny_model()
    images, labels = uint8_images(8), np.arange(8) % 10
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=classification_loss())
    every_epoch = pc.AttentionRecorder(images[:3], every=1, record_initial=True)
    every_second = pc.AttentionRecorder(images[:3], every=2)
    every_third = pc.AttentionRecorder(images[:3], every=3)
    model.fit(images, labels, epochs=2, batch_size=4, verbose=0, callbacks=[every_epoch, every_second, every_third])
    assert every_epoch.epochs == [0, 1, 2]
    assert every_second.epochs == [2]
    assert every_third.epochs == [] and every_third.frames == []
    assert all(frame.shape == (3, TINY_GRID, TINY_GRID) for frame in every_epoch.frames)
    # The maps follow the training: they change, and the last one is the trained model's map.
    assert not np.allclose(every_epoch.frames[0], every_epoch.frames[-1])
    _, maps = pc.analyze(pc.visualization_model(model), images[:3])
    np.testing.assert_allclose(every_epoch.frames[-1], maps["attention"][:, 0], atol=1e-5)
    np.testing.assert_allclose(every_second.frames[0], every_epoch.frames[-1], atol=1e-6)


def test_attention_recorder_schedule_counts_epochs_from_one():
    recorder = pc.AttentionRecorder(uint8_images(2), every=5)
    recorder.set_model(tiny_model())
    recorder.on_train_begin()
    for epoch in range(12):  # Keras passes 0-based epoch indices
        recorder.on_epoch_end(epoch)
    assert recorder.epochs == [5, 10]
    assert len(recorder.frames) == 2


def test_attention_recorder_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`every` must be a positive integer"):
        pc.AttentionRecorder(uint8_images(2), every=0)
    with pytest.raises(ValueError, match=r"\(batch, height, width, channels\)"):
        pc.AttentionRecorder(np.zeros((16, 16, 3), "uint8"))


# ------------------------------------------------------------------------------------------------
# Masking check
# ------------------------------------------------------------------------------------------------
def test_mask_patches_follows_the_resize_and_crop():
    viz = pc.visualization_model(tiny_model())  # 16 px input -> resize 18 -> centre crop 16 -> 4x4 grid
    images = np.full((2, 16, 16, 3), 200, np.uint8)
    images[1] = 100
    masked = pc.mask_patches(viz, images, np.array([[0], [15]]), fill="zero")
    changed = np.all(masked == 0, axis=-1)
    # Crop offset 1 px in 18 px ~ 0.9 input px: patch 0 covers input rows/cols 0-3, patch 15 rows/cols 12-15.
    assert changed[0, :4, :4].all() and changed[0].sum() == 16
    assert changed[1, 12:, 12:].all() and changed[1].sum() == 16
    np.testing.assert_array_equal(masked[~changed], images[~changed])
    everything = pc.mask_patches(viz, images, np.tile(np.arange(16), (2, 1)), fill="mean")
    assert np.all(everything == 150)  # the mean pixel of the batch, everywhere
    np.testing.assert_array_equal(pc.mask_patches(viz, images, np.zeros((2, 0), int)), images)
    with pytest.raises(ValueError, match=r"patch indices must lie in \[0, 16\)"):
        pc.mask_patches(viz, images, np.array([[16], [0]]))
    with pytest.raises(ValueError, match="`fill` must be 'mean' or 'zero'"):
        pc.mask_patches(viz, images, np.array([[1], [0]]), fill="noise")


def test_masking_check_compares_attended_and_random_patches():
    viz = pc.visualization_model(tiny_model())
    images = uint8_images(12)
    probabilities, _ = pc.analyze(viz, images)
    labels = np.argmax(probabilities, axis=-1)  # the model is right on all unmasked images
    labels[:3] = (labels[:3] + 1) % 10  # ... except the first three
    nothing = pc.attention_masking_check(viz, images, labels, patches_to_mask=0)
    assert nothing["unmasked"] == pytest.approx(0.75)
    assert nothing["patches"] == TINY_GRID**2
    assert nothing["most_attended"] == nothing["random"] == nothing["least_attended"] == nothing["unmasked"]
    everything = pc.attention_masking_check(viz, images, labels, patches_to_mask=TINY_GRID**2)
    assert everything["most_attended"] == everything["random"] == everything["least_attended"]
    some = pc.attention_masking_check(viz, images, labels, patches_to_mask=4, seed=1)
    assert set(some) == {"patches_to_mask", "patches", "unmasked", "most_attended", "random", "least_attended"}
    assert all(0.0 <= some[key] <= 1.0 for key in ("most_attended", "random", "least_attended"))
    assert pc.attention_masking_check(viz, images, labels, patches_to_mask=4, seed=1) == some  # seeded
    with pytest.raises(ValueError, match=r"`patches_to_mask` must be an integer from 0 to 16"):
        pc.attention_masking_check(viz, images, labels, patches_to_mask=17)
    with pytest.raises(ValueError, match="12 images but 11 labels"):
        pc.attention_masking_check(viz, images, labels[:11], patches_to_mask=1)


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
def test_full_profile_is_the_reference_configuration():
    full = pc.PROFILES["full"]
    assert (full.epochs, full.learning_rate, full.weight_decay) == (50, 1e-3, 1e-4)
    assert full.warmup_epochs == pytest.approx(0.15 * 50)
    assert full.train_samples is None  # all 40,000 training images
    assert full.model == dict(dimensions=256, depth=2, se_ratio=8, num_heads=1, image_size=48, resize_to=52)
    assert "T4" in full.note and str(full.batch_size) in full.note
    assert set(pc.PROFILES) == {"smoke", "workshop", "full"}


@pytest.mark.parametrize("name", ["smoke", "workshop", "full"])
def test_profile_models_build_and_train_one_step(name):
    profile = pc.PROFILES[name]
    assert profile.name == name
    model = pc.build_patch_convnet(**profile.model)
    assert model.output_shape == (None, 10)
    loss = train_one_step(model, batch_size=2)
    assert loss > 0
