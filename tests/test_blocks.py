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
    layer = check_layer(blocks.PositionEmbedding, {}, (2, 5, 4), (2, 5, 4), tmp_path)
    x = random_inputs((2, 5, 4))
    difference = keras.ops.convert_to_numpy(layer(x)) - x
    np.testing.assert_allclose(difference[0], difference[1], atol=1e-6)  # same vector for every image
    assert np.abs(difference).sum() > 0


def test_layer_scale_starts_at_init_value(tmp_path):
    layer = check_layer(blocks.LayerScale, {"init_value": 0.1}, (2, 3, 4), (2, 3, 4), tmp_path)
    x = random_inputs((2, 3, 4))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), 0.1 * x, rtol=1e-6)
    with pytest.raises(ValueError, match="init_value"):
        blocks.LayerScale(init_value=0)


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


def test_transformer_block_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="not divisible by `num_heads`=3"):
        blocks.TransformerBlock(num_heads=3)(random_inputs((1, 4, 8)))


@pytest.mark.parametrize(
    "validator, args, message",
    [
        (blocks.require_positive_int, ("depth", 0), "positive integer"),
        (blocks.require_positive_int, ("depth", 2.5), "positive integer"),
        (blocks.require_rate, ("dropout", -0.1), r"\[0, 1\)"),
        (blocks.require_divisible, ("width", 10, "heads", 4), "for example width=8 or width=12"),
        (blocks.require_positive_number, ("mlp_ratio", 0), "`mlp_ratio` must be a positive number, got 0"),
        (blocks.require_positive_number, ("mlp_ratio", True), "positive number"),
        (blocks.require_positive_number, ("epsilon", -1.0, "1e-6"), "positive number such as 1e-6, got -1.0"),
    ],
)
def test_validators_name_the_fix(validator, args, message):
    with pytest.raises(ValueError, match=message):
        validator(*args)


def test_require_positive_number_returns_a_float():
    assert blocks.require_positive_number("epsilon", 1) == 1.0 and isinstance(blocks.require_positive_number("x", 2), float)
