import keras
import numpy as np
import pytest
from helpers import check_layer, random_inputs

from course_utils.models import blocks


def test_mlp(tmp_path):
    check_layer(blocks.MLP, {"hidden_units": 16, "dropout_rate": 0.1}, (2, 5, 8), (2, 5, 8), tmp_path)
    check_layer(blocks.MLP, {"hidden_units": 16, "output_units": 3}, (2, 5, 8), (2, 5, 3), tmp_path)


def test_patch_embedding_shapes(tmp_path):
    check_layer(blocks.PatchEmbedding, {"patch_size": 4, "embed_dim": 6}, (2, 16, 16, 3), (2, 16, 6), tmp_path)
    check_layer(
        blocks.PatchEmbedding, {"patch_size": 4, "embed_dim": 6, "flatten": False}, (2, 16, 8, 3), (2, 4, 2, 6), tmp_path
    )


def test_patch_embedding_rejects_patch_that_does_not_divide_image():
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide the image height \(16\).*for example 2, 4, 8"):
        blocks.PatchEmbedding(5, 8)(random_inputs((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="expects images shaped"):
        blocks.PatchEmbedding(4, 8)(random_inputs((1, 16, 3)))


def test_position_embedding_adds_a_learned_vector_per_token(tmp_path):
    # A non-default argument, so that check_layer fails if get_config ever drops it.
    layer = check_layer(blocks.PositionEmbedding, {"initializer_stddev": 0.05}, (2, 5, 4), (2, 5, 4), tmp_path)
    x = random_inputs((2, 5, 4))
    difference = keras.ops.convert_to_numpy(layer(x)) - x
    np.testing.assert_allclose(difference[0], difference[1], atol=1e-6)  # same vector for every image
    assert np.abs(difference).sum() > 0


def test_layer_scale_starts_at_layer_scale_init(tmp_path):
    layer = check_layer(blocks.LayerScale, {"layer_scale_init": 0.1}, (2, 3, 4), (2, 3, 4), tmp_path)
    x = random_inputs((2, 3, 4))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), 0.1 * x, rtol=1e-6)
    with pytest.raises(ValueError, match="layer_scale_init"):
        blocks.LayerScale(layer_scale_init=0)


def test_stochastic_depth_drops_whole_samples_only_in_training(tmp_path):
    check_layer(blocks.StochasticDepth, {"rate": 0.5, "seed": 1}, (4, 3, 2), (4, 3, 2), tmp_path)
    layer = blocks.StochasticDepth(rate=0.5, seed=3)
    x = np.ones((64, 3, 2), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    dropped = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = dropped.reshape(64, -1)
    # Each sample is either all zeros or all 1 / (1 - rate).
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert all(len(np.unique(row)) == 1 for row in per_sample)
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        blocks.StochasticDepth(rate=1.0)


def test_transformer_block_returns_outputs_and_scores(tmp_path):
    layer = check_layer(
        blocks.TransformerBlock, {"num_heads": 2, "mlp_ratio": 2.0}, (2, 5, 8), [(2, 5, 8), (2, 2, 5, 5)], tmp_path
    )
    _, scores = layer(random_inputs((2, 5, 8)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_transformer_block_heads_split_the_width_instead_of_each_taking_all_of_it(num_heads):
    """Each head attends with channels / num_heads channels: the attention holds 4 (c x c + c) weights for
    any number of heads. A block whose heads each took the full width (the keras.io ViT's key_dim) holds
    about num_heads times more."""
    channels = 16
    block = blocks.TransformerBlock(num_heads=num_heads)
    block(random_inputs((1, 5, channels)))
    assert block.attention.count_params() == 4 * (channels * channels + channels)


def test_transformer_block_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\).*\[1, 2, 4, 8\]"):
        blocks.TransformerBlock(num_heads=3)(random_inputs((1, 4, 8)))


def test_dot_product_attention_shapes_and_round_trip(tmp_path):
    layer = check_layer(
        blocks.DotProductAttention, {"num_heads": 2, "attention_dropout": 0.1}, (2, 5, 8), [(2, 5, 8), (2, 2, 5, 5)],
        tmp_path,
    )
    _, weights = layer(random_inputs((2, 5, 8)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weights).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_dot_product_attention_computes_what_keras_multi_head_attention_computes(num_heads):
    query, context = random_inputs((2, 5, 8), seed=1), random_inputs((2, 3, 6), seed=2)
    reference = keras.layers.MultiHeadAttention(num_heads, key_dim=8 // num_heads)
    expected, expected_weights = reference(query, context, return_attention_scores=True)
    ours = blocks.DotProductAttention(num_heads)
    ours(query, context)
    # Keras keeps each projection as (in, heads, head_channels) and the output as (heads, head_channels, out).
    for dense, source in [
        (ours.query, reference._query_dense),
        (ours.key, reference._key_dense),
        (ours.value, reference._value_dense),
        (ours.projection, reference._output_dense),
    ]:
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in source.weights)
        dense.set_weights([kernel.reshape(dense.kernel.shape), bias.reshape(dense.bias.shape)])
    outputs, weights = ours(query, context)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), keras.ops.convert_to_numpy(expected), atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights), keras.ops.convert_to_numpy(expected_weights), atol=1e-6
    )


def test_dot_product_attention_defaults_to_self_attention_and_rejects_bad_heads():
    layer = blocks.DotProductAttention(num_heads=1)
    x = random_inputs((2, 4, 8))
    implicit, _ = layer(x)
    explicit, _ = layer(x, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(implicit), keras.ops.convert_to_numpy(explicit))
    with pytest.raises(ValueError, match=r"num_heads=3 does not divide the token width \(8 channels\)"):
        blocks.DotProductAttention(num_heads=3)(x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        blocks.DotProductAttention(num_heads=1, attention_dropout=1.5)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_split_and_merge_heads_are_inverse(num_heads):
    x = random_inputs((2, 5, 8))
    heads = blocks.split_heads(keras.ops.convert_to_tensor(x), num_heads)
    assert tuple(heads.shape) == (2, num_heads, 5, 8 // num_heads)
    # Head h holds channels h * head_channels ... (h + 1) * head_channels - 1 of every token.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(heads)[:, -1], x[:, :, -(8 // num_heads):])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(blocks.merge_heads(heads)), x)
