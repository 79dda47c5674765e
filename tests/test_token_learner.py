"""TokenLearner layers, the ViT + TokenLearner builder, its baseline, visualization and profiles."""

import keras
import numpy as np
import pytest
from helpers import check_layer, check_model_round_trip, random_inputs, train_one_step

from course_utils.analysis import Analysis, MapSet
from course_utils.models import token_learner as tl
from course_utils.models import vit
from course_utils.models.blocks import TransformerBlock

TINY = dict(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, dropout_rate=0.0, attention_dropout=0.0)


def uint8_images(batch, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_token_learner_layer(tmp_path):
    layer = check_layer(
        tl.TokenLearner, {"num_tokens": 3, "layer_norm_epsilon": 1e-5}, (2, 4, 4, 8), [(2, 3, 8), (2, 3, 4, 4)],
        tmp_path,
    )
    x = random_inputs((2, 4, 4, 8))
    tokens, attention = layer(x)
    attention = keras.ops.convert_to_numpy(attention)
    assert attention.min() >= 0 and attention.max() <= 1  # sigmoid maps
    # Each token is the attention-weighted spatial mean of the features.
    expected = np.einsum("bthw,bhwc->btc", attention, x) / 16
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tokens), expected, atol=1e-5)


def test_token_learner_v11_layer(tmp_path):
    layer = check_layer(
        tl.TokenLearnerV11,
        {"num_tokens": 3, "num_groups": 2, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-5},
        (2, 4, 4, 8),
        [(2, 3, 8), (2, 3, 4, 4)],
        tmp_path,
    )
    _, attention = layer(random_inputs((2, 4, 4, 8)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(attention).sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert isinstance(layer, tl.TokenLearner), "v1.1 is found wherever a TokenLearner is looked for"


def test_invalid_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="num_tokens"):
        tl.TokenLearner(num_tokens=0)
    with pytest.raises(ValueError, match="`layer_norm_epsilon` must be a positive number such as 1e-6"):
        tl.TokenLearner(layer_norm_epsilon=0)
    with pytest.raises(ValueError, match="`channels`=6 is not divisible by `num_groups`=4"):
        tl.TokenLearnerV11(num_groups=4)(random_inputs((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="`image_size`=30 is not divisible by `patch_size`=4"):
        tl.build_model(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match=r"num_heads=4 does not divide the token width \(30 channels\)"):
        tl.build_model(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"`token_learner` must be one of \['v1.0', 'v1.1'\], got 'v2'"):
        tl.build_model(token_learner="v2")
    with pytest.raises(ValueError, match=r"`token_learner_after` must be one of \[0, 1, 2\], got 3"):
        tl.build_model(**TINY, token_learner_after=3)
    with pytest.raises(TypeError):
        tl.build_model(TINY)  # keyword arguments only


@pytest.mark.parametrize("variant", ["v1.0", "v1.1"])
def test_model_builds_and_round_trips(variant, tmp_path):
    model = tl.build_model(token_learner=variant, num_groups=2, **TINY)
    learner = model.get_layer("token_learner")
    assert type(learner) is {"v1.0": tl.TokenLearner, "v1.1": tl.TokenLearnerV11}[variant]
    images = uint8_images(2)
    assert model(images).shape == (2, 10)
    check_model_round_trip(model, images, tmp_path)


def test_the_default_variant_is_v1_0():
    assert type(tl.build_model(**TINY).get_layer("token_learner")) is tl.TokenLearner


@pytest.mark.parametrize("after, expected", [(0, [5, 5]), (1, [16, 5]), (2, [16, 16])])
def test_token_learner_reduces_tokens_after_its_position(after, expected):
    model = tl.build_model(num_tokens=5, token_learner_after=after, **TINY)
    assert [block.input.shape[1] for block in model.layers if isinstance(block, TransformerBlock)] == expected
    assert [layer.name for layer in model.layers if isinstance(layer, TransformerBlock)] == ["block_0", "block_1"]
    assert model.output_shape == (None, 10)


def test_input_size_and_float_inputs():
    bigger = tl.build_model(**TINY, input_size=40)
    assert bigger.input_shape == (None, 40, 40, 3) and bigger(uint8_images(1, size=40)).shape == (1, 10)
    bare = tl.build_model(**TINY, include_preprocessing=False)
    assert bare.input_shape == (None, 16, 16, 3) and bare.inputs[0].dtype == "float32"


def test_the_baseline_is_the_same_vit_without_the_token_learner():
    arguments = dict(TINY, num_tokens=4, token_learner="v1.1", token_learner_after=1, num_groups=2)
    model, baseline = tl.build_model(**arguments), tl.build_baseline(**arguments)
    assert baseline.name == "vit"
    assert not any(isinstance(layer, tl.TokenLearner) for layer in baseline.layers)
    # The layers of the plain ViT, with the same names and shapes, are all in the TokenLearner model too.
    plain = vit.build_vit(**TINY)
    assert [(w.path, tuple(w.shape)) for w in baseline.weights] == [(w.path, tuple(w.shape)) for w in plain.weights]
    in_model = {(w.path, tuple(w.shape)) for w in model.weights}
    assert {(w.path, tuple(w.shape)) for w in baseline.weights} < in_model
    assert model.count_params() - baseline.count_params() == model.get_layer("token_learner").count_params()


def test_the_baseline_takes_the_defaults_of_build_model():
    # Without arguments both models have build_model's width, not build_vit's.
    model, baseline = tl.build_model(), tl.build_baseline()
    assert baseline.get_layer("block_0").output[0].shape[-1] == model.get_layer("block_0").output[0].shape[-1] == 128
    assert baseline.get_layer("block_0").attention_dropout == model.get_layer("block_0").attention_dropout == 0.1
    assert tl.build_baseline(name="plain").name == "plain"
    with pytest.raises(TypeError):
        tl.build_baseline(chunk_size=4)  # not an argument of either model


def test_visualization_model_shares_weights_and_returns_maps():
    model = tl.build_model(num_tokens=4, **TINY)
    viz_model = tl.visualization_model(model)
    assert len(viz_model.weights) == len(model.weights)
    images = uint8_images(3, seed=1)
    outputs = viz_model.predict(images, verbose=0)
    assert set(outputs) == {"logits", "token_attention"}
    assert outputs["token_attention"].shape == (3, 4, 4, 4)
    np.testing.assert_allclose(outputs["logits"], model.predict(images, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="has no TokenLearner layer"):
        tl.visualization_model(tl.build_baseline(**TINY))


@pytest.mark.parametrize("variant", ["v1.0", "v1.1"])
def test_analyze_returns_one_labelled_map_per_token(variant):
    model = tl.build_model(num_tokens=3, token_learner=variant, num_groups=2, **TINY)
    viz_model = tl.visualization_model(model)
    images = uint8_images(5, seed=2)
    result = tl.analyze(viz_model, images, batch_size=2)
    assert isinstance(result, Analysis)
    probabilities, maps = result
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert list(maps) == ["token attention"]
    token_maps = maps["token attention"]
    assert isinstance(token_maps, MapSet)
    assert token_maps.items == ("token 1", "token 2", "token 3") and not token_maps.signed
    assert token_maps.values.shape == (5, 3, 4, 4) and token_maps.description
    expected = viz_model.predict(images, verbose=0)["token_attention"]
    np.testing.assert_allclose(token_maps.values, expected, atol=1e-6)
    # The classifier itself is accepted too.
    np.testing.assert_allclose(tl.analyze(model, images).probabilities, probabilities, atol=1e-6)


@pytest.mark.parametrize("profile", sorted(tl.PROFILES))
@pytest.mark.parametrize("builder", ["build_model", "build_baseline"])
def test_every_profile_builds_and_trains_one_step(profile, builder):
    model = getattr(tl, builder)(**tl.PROFILES[profile].model)
    has_learner = any(isinstance(layer, tl.TokenLearner) for layer in model.layers)
    assert has_learner == (builder == "build_model")
    train_one_step(model, batch_size=2)


def test_the_full_profile_is_the_keras_io_example():
    full = tl.build_model(**tl.PROFILES["full"].model)
    block = full.get_layer("block_0")
    assert (block.dropout_rate, block.attention_dropout) == (0.1, 0.1)
    assert full.get_layer("token_learner").num_tokens == 8
    assert full.get_layer("block_3").input.shape[1] == 8 and full.get_layer("block_1").input.shape[1] == 64
