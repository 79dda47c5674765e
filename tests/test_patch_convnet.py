import inspect
import math

import keras
import numpy as np
import pytest
from helpers import check_layer, check_model_round_trip, random_inputs

from course_utils.analysis import Analysis, MapSet
from course_utils.models import patch_convnet as pc
from course_utils.training import classification_loss

# A model small enough to fit in a test: 16x16 crops, 4 px patches -> a 4x4 attention grid.
TINY = dict(embed_dim=8, depth=2, patch_size=4, image_size=16, resize_to=18, input_size=16)
TINY_GRID = 4


def tiny_model(**overrides):
    keras.utils.set_random_seed(0)
    return pc.build_model(**{**TINY, **overrides})


def uint8_images(count, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def randomise(layer, seed=0, scale=0.3):
    """Give every weight of ``layer`` a random value, so that a skipped bias, gamma or norm shows."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(scale=scale, size=weight.shape).astype("float32"))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm(x, norm):
    mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + norm.epsilon) * numpy(norm.gamma) + numpy(norm.beta)


# ------------------------------------------------------------------------------------------------
# Stem
# ------------------------------------------------------------------------------------------------
def test_conv_stem_with_4_px_patches_has_two_bias_free_convolutions(tmp_path):
    layer = check_layer(pc.ConvStem, {"embed_dim": 8, "patch_size": 4}, (2, 16, 12, 3), (2, 4, 3, 8), tmp_path)
    assert [conv.filters for conv in layer.convolutions] == [4, 8]  # d / 2, then d
    assert all(conv.kernel_size == (3, 3) and conv.strides == (2, 2) for conv in layer.convolutions)
    assert not any(conv.use_bias for conv in layer.convolutions)
    assert [tuple(w.shape) for w in layer.weights] == [(3, 3, 3, 4), (3, 3, 4, 8)]  # kernels only


def test_conv_stem_with_16_px_patches_has_four_convolutions():
    layer = pc.ConvStem(embed_dim=64, patch_size=16)
    assert tuple(layer(random_inputs((1, 32, 48, 3))).shape) == (1, 2, 3, 64)
    assert [conv.filters for conv in layer.convolutions] == [8, 16, 32, 64]  # d/8, d/4, d/2, d
    assert not any(conv.use_bias for conv in layer.convolutions)
    assert [conv.name for conv in layer.convolutions] == ["conv_1", "conv_2", "conv_3", "conv_4"]


def test_conv_stem_pads_both_sides_and_puts_gelu_only_between_convolutions():
    layer = pc.ConvStem(embed_dim=4, patch_size=4)
    x = random_inputs((2, 8, 8, 3))
    layer(x)
    randomise(layer)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    first, second = layer.convolutions

    def conv(inputs, kernel):  # one pixel of zeros on every side, as PyTorch's padding=1
        return keras.ops.conv(keras.ops.pad(inputs, pad), kernel, strides=2, padding="valid")

    hidden = keras.ops.gelu(conv(x, first.kernel), approximate=False)
    np.testing.assert_allclose(numpy(layer(x)), numpy(conv(hidden, second.kernel)), atol=1e-5)
    assert numpy(layer(x)).min() < -0.2  # no GELU after the last convolution (GELU >= -0.17)


def test_conv_stem_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`patch_size` must be one of \[2, 4, 8, 16, 32\], got 6"):
        pc.ConvStem(8, patch_size=6)
    with pytest.raises(ValueError, match=r"`embed_dim`=12 is not divisible by `patch_size / 2`=8.*embed_dim=8 or"):
        pc.ConvStem(12, patch_size=16)
    with pytest.raises(ValueError, match="`embed_dim` must be a positive integer"):
        pc.ConvStem(0)
    with pytest.raises(ValueError, match=r"`image height`=18 is not divisible by `patch_size`=4.*height=16 or .*=20"):
        pc.ConvStem(8)(random_inputs((1, 18, 16, 3)))
    with pytest.raises(ValueError, match=r"`image width`=12 is not divisible by `patch_size`=8"):
        pc.ConvStem(8, patch_size=8)(random_inputs((1, 16, 12, 3)))


# ------------------------------------------------------------------------------------------------
# Trunk
# ------------------------------------------------------------------------------------------------
def test_squeeze_excite_has_a_quarter_width_bottleneck_with_biases(tmp_path):
    layer = check_layer(pc.SqueezeExcite, {"hidden_ratio": 0.25}, (2, 3, 3, 8), (2, 3, 3, 8), tmp_path)
    assert [tuple(w.shape) for w in layer.weights] == [(8, 2), (2,), (2, 8), (8,)]  # C -> C/4 -> C, with biases
    randomise(layer)
    layer.reduce.bias.assign(np.full(2, 0.5, "float32"))  # keep the ReLU open, so the gate depends on the input
    x = np.abs(random_inputs((2, 3, 3, 8))) + 0.1
    reduce_kernel, reduce_bias, expand_kernel, expand_bias = (numpy(w) for w in layer.weights)
    hidden = np.maximum(x.mean(axis=(1, 2)) @ reduce_kernel + reduce_bias, 0.0)
    gate = sigmoid(hidden @ expand_kernel + expand_bias)  # (batch, channels), the same at every position
    np.testing.assert_allclose(numpy(layer(x)), x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)
    assert not np.allclose(gate[0], gate[1])  # computed from each sample's own map


def test_squeeze_excite_width_rounds_like_timm_and_rejects_bad_ratios():
    layer = pc.SqueezeExcite()
    layer(random_inputs((1, 2, 2, 384)))
    assert layer.reduce.units == 96
    with pytest.raises(ValueError, match=r"`hidden_ratio` must be a positive number such as 0.25"):
        pc.SqueezeExcite(0)
    with pytest.raises(ValueError, match=r"round\(channels \* hidden_ratio\)` must be a positive integer, got 0"):
        pc.SqueezeExcite(0.1)(random_inputs((1, 2, 2, 4)))


def test_trunk_block_is_the_papers_convolutional_block(tmp_path):
    arguments = {"layer_scale_init": 1e-3, "drop_path_rate": 0.1, "layer_norm_epsilon": 1e-5}
    layer = check_layer(pc.TrunkBlock, arguments, (2, 4, 4, 8), (2, 4, 4, 8), tmp_path)
    assert tuple(layer.depthwise.kernel.shape) == (3, 3, 8, 1) and layer.depthwise.use_bias  # one filter per channel
    assert all(tuple(conv.kernel.shape) == (1, 1, 8, 8) and conv.use_bias for conv in (layer.pointwise, layer.project))
    np.testing.assert_array_equal(numpy(layer.layer_scale.gamma), np.full(8, 1e-3, "float32"))
    assert layer.squeeze_excite.reduce.units == 2 and layer.norm.epsilon == 1e-5
    # The whole block, written out: x + gamma * Conv1x1(SE(GELU(DW3x3(GELU(Conv1x1(LN(x))))))).
    randomise(layer, seed=1)
    x = random_inputs((2, 4, 4, 8))

    def gelu(t):
        return keras.ops.gelu(t, approximate=False)

    branch = gelu(layer.depthwise(gelu(layer.pointwise(layer_norm(x, layer.norm)))))
    branch = layer.project(layer.squeeze_excite(branch))
    expected = x + numpy(layer.layer_scale.gamma) * numpy(branch)
    np.testing.assert_allclose(numpy(layer(x, training=False)), expected, atol=1e-5)


def test_trunk_block_starts_close_to_the_identity_and_drops_whole_branches():
    keras.utils.set_random_seed(0)
    layer = pc.TrunkBlock(drop_path_rate=0.5)
    x = random_inputs((16, 4, 4, 8))
    y = numpy(layer(x))
    np.testing.assert_array_equal(numpy(layer.layer_scale.gamma), np.full(8, 1e-4, "float32"))  # the paper's init
    assert 0 < np.abs(y - x).max() < 1e-2
    trained = numpy(layer(x, training=True))
    dropped = np.all(trained == x, axis=(1, 2, 3))
    assert 0 < dropped.sum() < len(x)  # some samples skip the branch, the others keep it


def test_trunk_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`layer_norm_epsilon` must be a positive number such as 1e-6"):
        pc.TrunkBlock(layer_norm_epsilon=0)
    with pytest.raises(ValueError, match=r"`layer_scale_init` must be a positive number such as 1e-4"):
        pc.TrunkBlock(layer_scale_init=0.0)
    with pytest.raises(ValueError, match=r"`drop_path_rate` must be a number in \[0, 1\)"):
        pc.TrunkBlock(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="expects images shaped"):
        pc.TrunkBlock()(random_inputs((1, 4, 8)))


def test_one_trunk_block_at_width_256_has_168000_parameters():
    # deit's Conv_blocks_se + LayerNorm + gamma at dim 256: LN 512, 1x1 65,792, depth-wise 3x3 2,560,
    # SE 256 -> 64 -> 256 with biases 33,088, 1x1 65,792, gamma 256. (The keras.io block had 738,560.)
    full = pc.build_model(**pc.PROFILES["full"].model)
    assert [block.count_params() for block in pc.trunk_blocks(full)] == [168_000, 168_000]


# ------------------------------------------------------------------------------------------------
# Attention pooling
# ------------------------------------------------------------------------------------------------
def test_attention_pooling_returns_pooled_vector_and_patch_weights(tmp_path):
    keras.utils.set_random_seed(0)
    arguments = {
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "dropout_rate": 0.1,
        "attention_dropout": 0.1,
        "layer_scale_init": 1e-3,
        "layer_norm_epsilon": 1e-5,
    }
    layer = check_layer(pc.AttentionPooling, arguments, (2, 6, 8), [(2, 8), (2, 2, 6)], tmp_path)
    pooled, weights = layer(random_inputs((2, 6, 8)))
    weights = numpy(weights)
    # Softmax rows over [class token, patches]: patch weights are positive and sum to less than 1.
    assert np.all(weights > 0)
    assert np.all(weights.sum(axis=-1) < 1.0)
    assert weights.sum(axis=-1).min() > 0.5  # most of the mass is on the 6 patches at initialization
    assert [w.path.split("/")[-1] for w in layer.weights].count("class_token") == 1
    assert layer.mlp.hidden.units == 16 and layer.token_norm.epsilon == 1e-5
    for scale in (layer.attention_scale, layer.mlp_scale):
        np.testing.assert_array_equal(numpy(scale.gamma), np.full(8, 1e-3, "float32"))


def test_attention_pooling_is_the_papers_class_attention_block():
    layer = pc.AttentionPooling()
    patches = random_inputs((2, 5, 8), seed=2)
    layer(patches)
    randomise(layer, seed=3)
    attention = layer.attention
    assert layer.mlp.hidden.units == 24  # the paper's pooling MLP is 3 times as wide as the token
    assert all(dense.use_bias for dense in (attention.query, attention.key, attention.value, attention.projection))

    def dense(x, layer):
        return x @ numpy(layer.kernel) + numpy(layer.bias)

    cls = np.broadcast_to(numpy(layer.class_token), (2, 1, 8))
    tokens = layer_norm(np.concatenate([cls, patches], axis=1), layer.token_norm)
    # The query is the class token; the keys and values are ALL tokens, the class token included.
    scores = dense(tokens[:, :1], attention.query) @ np.swapaxes(dense(tokens, attention.key), 1, 2) / math.sqrt(8)
    row = softmax(scores)  # (batch, 1 query, 1 + patches)
    cls = cls + numpy(layer.attention_scale.gamma) * dense(row @ dense(tokens, attention.value), attention.projection)
    hidden = numpy(keras.activations.gelu(dense(layer_norm(cls, layer.mlp_norm), layer.mlp.hidden)))
    cls = cls + numpy(layer.mlp_scale.gamma) * dense(hidden, layer.mlp.project)

    pooled, weights = layer(patches)
    np.testing.assert_allclose(numpy(pooled), cls[:, 0], atol=1e-5)
    np.testing.assert_allclose(numpy(weights)[:, 0], row[:, 0, 1:], atol=1e-6)
    _, _, whole_row = layer.attend(patches)
    assert tuple(whole_row.shape) == (2, 1, 6)  # the class token's weight on itself first
    np.testing.assert_allclose(numpy(whole_row)[:, 0], row[:, 0], atol=1e-6)


def test_attention_pooling_is_invariant_to_patch_order():
    layer = pc.AttentionPooling(num_heads=1)
    x = random_inputs((2, 5, 8), seed=1)
    order = np.array([3, 0, 4, 1, 2])
    pooled, weights = layer(x)
    pooled_perm, weights_perm = layer(x[:, order])
    np.testing.assert_allclose(numpy(pooled_perm), numpy(pooled), atol=1e-5)
    np.testing.assert_allclose(numpy(weights_perm), numpy(weights)[..., order], atol=1e-6)


def test_attention_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\).*\[1, 2, 4, 8\]"):
        pc.AttentionPooling(num_heads=3)(random_inputs((1, 4, 8)))
    with pytest.raises(ValueError, match=r"dropout_rate.*\[0, 1\)"):
        pc.AttentionPooling(dropout_rate=1.0)
    with pytest.raises(ValueError, match=r"attention_dropout.*\[0, 1\)"):
        pc.AttentionPooling(attention_dropout=-0.1)
    with pytest.raises(ValueError, match="`mlp_ratio` must be a positive number"):
        pc.AttentionPooling(mlp_ratio=0)
    with pytest.raises(ValueError, match="`layer_norm_epsilon` must be a positive number"):
        pc.AttentionPooling(layer_norm_epsilon=-1e-6)
    with pytest.raises(ValueError, match=r"expects tokens shaped \(batch, tokens, channels\).*Flatten a"):
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
    with pytest.raises(ValueError, match=r"`patch_size` must be one of \[2, 4, 8, 16, 32\], got 3"):
        pc.build_model(patch_size=3)
    with pytest.raises(ValueError, match=r"`embed_dim`=10 is not divisible by `patch_size / 2`=4"):
        pc.build_model(embed_dim=10, patch_size=8)
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\)"):
        pc.build_model(embed_dim=8, num_heads=3)
    with pytest.raises(ValueError, match=r"`image_size`=30 is not divisible by `patch_size`=4.*image_size=28 or"):
        pc.build_model(image_size=30)
    with pytest.raises(ValueError, match=r"`depth` must be a positive integer"):
        pc.build_model(depth=0)
    with pytest.raises(ValueError, match=r"`qkv_bias` must be one of \[True\], got False"):
        pc.build_model(qkv_bias=False)
    with pytest.raises(ValueError, match=r"`layer_norm_epsilon` must be a positive number"):
        pc.build_model(**{**TINY, "layer_norm_epsilon": 0.0})


def test_builder_takes_the_protocol_names_as_keywords_only():
    parameters = inspect.signature(pc.build_model).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    assert {
        "image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "dropout_rate",
        "attention_dropout", "drop_path_rate", "layer_scale_init", "layer_norm_epsilon", "num_classes",
        "input_size", "resize_to", "include_preprocessing", "name",
    } == set(parameters)
    with pytest.raises(TypeError, match="se_ratio"):
        pc.build_model(**{**TINY, "se_ratio": 8})  # the keras.io example's knob; the paper fixes SE at 1/4
    with pytest.raises(TypeError):
        pc.build_model(10)


def test_embed_dim_and_patch_size_set_the_stem_and_the_grid():
    model = tiny_model(embed_dim=12, patch_size=8)  # 16 px crops, 8 px patches -> a 2x2 grid
    stem = model.get_layer("stem")
    assert [conv.filters for conv in stem.convolutions] == [3, 6, 12]
    assert all(block.output.shape[1:] == (2, 2, 12) for block in pc.trunk_blocks(model))
    assert model.get_layer("flatten_patches").output.shape[1:] == (4, 12)
    assert pc.visualization_model(model).output[pc.ATTENTION_OUTPUT].shape[1:] == (1, 2, 2)


def test_the_arguments_reach_every_layer_they_name():
    model = tiny_model(
        layer_norm_epsilon=1e-3, layer_scale_init=0.5, drop_path_rate=0.25, mlp_ratio=2.0, dropout_rate=0.1,
        attention_dropout=0.2, num_heads=2,
    )
    pooling = model.get_layer("attention_pooling")
    blocks = pc.trunk_blocks(model)
    norms = [model.get_layer("head_norm"), pooling.token_norm, pooling.mlp_norm] + [block.norm for block in blocks]
    assert [norm.epsilon for norm in norms] == [1e-3] * (3 + TINY["depth"])
    scales = [pooling.attention_scale, pooling.mlp_scale] + [block.layer_scale for block in blocks]
    assert all(np.allclose(numpy(scale.gamma), 0.5) for scale in scales) and len(scales) == 2 + TINY["depth"]
    assert [block.drop_path.rate for block in blocks] == [0.25] * TINY["depth"]  # constant over depth, as in the paper
    config = pooling.get_config()
    assert (config["mlp_ratio"], config["dropout_rate"], config["attention_dropout"], config["num_heads"]) == (
        2.0, 0.1, 0.2, 2
    )
    assert pooling.mlp.hidden.units == 16


def test_trunk_blocks_have_independent_weights():
    model = tiny_model(depth=3)
    blocks = pc.trunk_blocks(model)
    assert [b.name for b in blocks] == ["trunk_block_0", "trunk_block_1", "trunk_block_2"]
    assert all(isinstance(block, pc.TrunkBlock) for block in blocks)
    variables = [v for b in blocks for v in b.weights]
    assert len({id(v) for v in variables}) == len(variables)
    assert len({v.path for v in variables}) == len(variables)
    # Distinct objects could still alias one buffer: change one block and the others must not move.
    first, second = blocks[0].depthwise.kernel, blocks[1].depthwise.kernel
    before = numpy(second).copy()
    first.assign(numpy(first) + 1.0)
    np.testing.assert_array_equal(numpy(second), before)


def test_parameter_count_grows_by_one_block_per_depth():
    counts = {depth: tiny_model(depth=depth).count_params() for depth in (1, 2, 3)}
    one_block = pc.trunk_blocks(tiny_model(depth=1))[0].count_params()
    assert counts[2] - counts[1] == one_block
    assert counts[3] - counts[2] == one_block
    # LayerNorm 2d, 1x1 d*d + d, depth-wise 9d + d, SE d*d/4 + d/4 + d*d/4 + d, 1x1 d*d + d, gamma d; d = 8.
    d = 8
    assert one_block == 2 * d + (d * d + d) + (9 * d + d) + (d * d // 2 + d // 4 + d) + (d * d + d) + d == 290


def test_s60_has_the_parameter_count_of_deits_s60():
    model = pc.patchconvnet_s60()  # 60 blocks: built once, never run
    assert model.count_params() == 25_231_096  # deit's patchconvnet_models.S60(), counted from its code
    assert model.input_shape == (None, 224, 224, 3) and model.inputs[0].dtype == "float32"
    assert model.output_shape == (None, 1000) and model.name == "patchconvnet_s60"
    assert [conv.filters for conv in model.get_layer("stem").convolutions] == [48, 96, 192, 384]
    assert len(pc.trunk_blocks(model)) == 60
    assert model.get_layer("flatten_patches").output.shape[1:] == (14 * 14, 384)


def test_visualization_model_and_trunk_blocks_reject_other_models():
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="other")
    with pytest.raises(ValueError, match=r"'other' has no AttentionPooling layer: .*patch_convnet.build_model"):
        pc.visualization_model(other)
    with pytest.raises(ValueError, match=r"'other' has no TrunkBlock layer: .*patch_convnet.build_model"):
        pc.trunk_blocks(other)


def test_visualization_model_and_analyze_expose_the_pooling_attention_per_head():
    model = tiny_model(num_heads=2)
    viz = pc.visualization_model(model)
    images = uint8_images(3)
    outputs = viz(images, training=False)
    assert set(outputs) == {"logits", "pooling_attention"} and pc.ATTENTION_OUTPUT == "pooling_attention"
    np.testing.assert_allclose(numpy(outputs["logits"]), numpy(model(images, training=False)), atol=1e-5)
    assert tuple(outputs["pooling_attention"].shape) == (3, 2, TINY_GRID, TINY_GRID)
    # Same weights: the visualization model has no variables of its own.
    assert {id(v) for v in viz.weights} == {id(v) for v in model.weights}

    result = pc.analyze(viz, images)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert list(maps) == ["pooling attention"] and pc.ATTENTION_MAP == "pooling attention"
    attention = maps["pooling attention"]
    assert isinstance(attention, MapSet)
    assert attention.items == ("head 1", "head 2") and attention.signed is False
    assert "class token" in attention.description
    assert attention.values.shape == (3, 2, TINY_GRID, TINY_GRID) and attention.grid == (TINY_GRID, TINY_GRID)
    # The class token keeps part of each softmax row for itself: every head's map sums to less than 1.
    assert np.all(attention.values > 0) and np.all(attention.values.sum(axis=(2, 3)) < 1.0)
    np.testing.assert_allclose(attention.values, numpy(outputs["pooling_attention"]), atol=1e-6)
    # The classifier is accepted too and gives the same maps.
    again = pc.analyze(model, images, batch_size=2)
    np.testing.assert_allclose(again.maps["pooling attention"].values, attention.values, atol=1e-6)
    np.testing.assert_allclose(again.probabilities, probabilities, atol=1e-6)


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
    np.testing.assert_allclose(every_epoch.frames[-1], maps["pooling attention"].values[:, 0], atol=1e-5)
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
# Profiles
# ------------------------------------------------------------------------------------------------
def test_full_profile_is_the_reference_size_and_recipe_with_the_papers_network():
    full = pc.PROFILES["full"]
    assert (full.epochs, full.batch_size, full.learning_rate, full.weight_decay) == (50, 128, 1e-3, 1e-4)
    assert full.warmup_epochs == pytest.approx(0.15 * 50)
    assert full.train_samples is None  # all 40,000 training images
    model = full.model
    assert (model["embed_dim"], model["depth"], model["image_size"], model["resize_to"]) == (256, 2, 48, 52)
    assert model["patch_size"] == 4 and model.get("num_heads", 1) == 1
    # The network is the paper's: nothing in the profile overrides the block, the pooling MLP or LayerScale.
    assert {"mlp_ratio", "layer_scale_init", "qkv_bias"}.isdisjoint(model)
    for words in ("T4", str(full.batch_size), "depth-wise", "LayerScale", "bias", "MLP", "shar", "centre"):
        assert words in full.note, words
    assert "accuracy" not in full.note and "top-1" not in full.note
    assert set(pc.PROFILES) == {"smoke", "workshop", "full"}
