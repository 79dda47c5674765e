"""TokenLearner layers, the ViT + TokenLearner builder, its baseline, visualization and profiles."""

import math

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


def to_numpy(outputs):
    return [keras.ops.convert_to_numpy(value) for value in outputs]


def test_token_learner_layer(tmp_path):
    layer = check_layer(
        tl.TokenLearner, {"num_tokens": 3, "layer_norm_epsilon": 1e-5}, (2, 4, 4, 8), [(2, 3, 8), (2, 3, 4, 4)],
        tmp_path,
    )
    x = random_inputs((2, 4, 4, 8))
    tokens, attention = to_numpy(layer(x))
    assert attention.min() >= 0 and attention.max() <= 1  # sigmoid maps
    assert not np.allclose(attention.sum(axis=(2, 3)), 1.0)  # not normalised over the positions
    # Each token is the attention-weighted spatial mean of the features (the paper's pooling).
    expected = np.einsum("bthw,bhwc->btc", attention, x) / 16
    np.testing.assert_allclose(tokens, expected, atol=1e-5)


V11 = {"num_tokens": 3, "bottleneck_dim": 5, "dropout_rate": 0.1, "layer_norm_epsilon": 1e-5}


def test_token_learner_v11_layer(tmp_path):
    layer = check_layer(tl.TokenLearnerV11, V11, (2, 4, 4, 8), [(2, 3, 8), (2, 3, 4, 4)], tmp_path)
    assert isinstance(layer, tl.TokenLearner), "v1.1 is found wherever a TokenLearner is looked for"
    x = random_inputs((2, 4, 4, 8), seed=1)
    for training in (False, True):  # dropout acts on the scores only: the maps stay distributions
        tokens, attention = to_numpy(layer(x, training=training))
        assert attention.min() >= 0
        np.testing.assert_allclose(attention.sum(axis=(2, 3)), 1.0, atol=1e-5)  # one softmax over h * w per token
        # Each token is the weighted sum (not the mean) of the inputs themselves.
        np.testing.assert_allclose(tokens, np.einsum("bthw,bhwc->btc", attention, x), atol=1e-5)


def test_token_learner_v11_has_no_value_projection():
    # The authors' v1.1: LayerNorm, then Dense(channels -> bottleneck) and Dense(bottleneck -> tokens), both
    # with biases, and nothing else. A projection of the summed features would add channels^2 weights.
    channels, bottleneck, tokens = 8, 5, 3
    layer = tl.TokenLearnerV11(num_tokens=tokens, bottleneck_dim=bottleneck)
    layer(random_inputs((1, 4, 4, channels)))
    expected = 2 * channels + (channels + 1) * bottleneck + (bottleneck + 1) * tokens
    assert layer.count_params() == expected
    # Tokens are exactly the weighted sum of the inputs, whatever they are: scale the inputs by 3 and move
    # them by a constant, and a map that does not change (LayerNorm removes both) weighs the new inputs.
    x = random_inputs((2, 4, 4, channels), seed=2)
    _, attention = to_numpy(layer(x))
    shifted_tokens, shifted_attention = to_numpy(layer(3 * x + 1))
    np.testing.assert_allclose(shifted_attention, attention, atol=1e-5)
    np.testing.assert_allclose(shifted_tokens, np.einsum("bthw,bhwc->btc", attention, 3 * x + 1), atol=1e-4)


def test_token_learner_v11_matches_a_numpy_reference():
    # LayerNorm over channels -> Dense -> GELU -> Dense -> softmax over the positions, written out in numpy.
    layer = tl.TokenLearnerV11(num_tokens=3, bottleneck_dim=5)
    x = random_inputs((2, 4, 4, 8), seed=3)
    _, attention = to_numpy(layer(x))
    gamma, beta, w1, b1, w2, b2 = (keras.ops.convert_to_numpy(w) for w in layer.weights)
    mean, variance = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    normed = (x - mean) / np.sqrt(variance + layer.layer_norm_epsilon) * gamma + beta
    hidden = normed @ w1 + b1
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    scores = (hidden @ w2 + b2).reshape(2, 16, 3)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(attention, weights.transpose(0, 2, 1).reshape(2, 3, 4, 4), atol=1e-5)


def test_invalid_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="num_tokens"):
        tl.TokenLearner(num_tokens=0)
    with pytest.raises(ValueError, match="`layer_norm_epsilon` must be a positive number such as 1e-6"):
        tl.TokenLearner(layer_norm_epsilon=0)
    with pytest.raises(ValueError, match="`bottleneck_dim` must be a positive integer"):
        tl.TokenLearnerV11(bottleneck_dim=0)
    with pytest.raises(ValueError, match=r"`dropout_rate` must be a number in \[0, 1\)"):
        tl.TokenLearnerV11(dropout_rate=1.0)
    with pytest.raises(ValueError, match="TokenLearnerV11 expects images shaped"):
        tl.TokenLearnerV11()(random_inputs((1, 4, 6)))
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
    model = tl.build_model(token_learner=variant, bottleneck_dim=12, **TINY)
    learner = model.get_layer("token_learner")
    assert type(learner) is {"v1.0": tl.TokenLearner, "v1.1": tl.TokenLearnerV11}[variant]
    if variant == "v1.1":
        assert (learner.bottleneck_dim, learner.dropout_rate) == (12, TINY["dropout_rate"])
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
    arguments = dict(TINY, num_tokens=4, token_learner="v1.1", token_learner_after=1, bottleneck_dim=12)
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
    model = tl.build_model(num_tokens=3, token_learner=variant, **TINY)
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
def test_every_profile_builds_a_baseline_that_trains_one_step(profile):
    """The TokenLearner models themselves are trained for one step in tests/test_protocol.py."""
    model = tl.build_baseline(**tl.PROFILES[profile].model)
    assert not any(isinstance(layer, tl.TokenLearner) for layer in model.layers)
    train_one_step(model, batch_size=2)


def test_the_full_profile_is_the_keras_io_example():
    profile = tl.PROFILES["full"]
    assert (profile.batch_size, profile.learning_rate, profile.weight_decay) == (256, 1e-3, 1e-4)
    assert profile.warmup_epochs == 0  # the example has no warmup either
    full = tl.build_model(**profile.model)
    block = full.get_layer("block_0")
    assert (block.dropout_rate, block.attention_dropout) == (0.1, 0.1)
    assert full.get_layer("embedding_dropout").rate == 0.1
    assert type(full.get_layer("token_learner")) is tl.TokenLearner and full.get_layer("token_learner").num_tokens == 8
    assert full.get_layer("block_3").input.shape[1] == 8 and full.get_layer("block_1").input.shape[1] == 64
    # Where it differs from the example, the note says so: the TokenLearner runs after the second of the four
    # blocks (the example's after the third), and the heads split the width (the example's are 128 wide each).
    assert full.get_layer("block_2").input.shape[1] == 8
    assert full.get_layer("block_0").attention.query.units == 128  # 4 heads x 32, not 4 x 128
    for words in ("second of 4", "third", "32 channels", "128 each", "GELU", "cosine", "constant", "20 epochs",
                  "best validation", "centre-crops", "per image", "T4"):
        assert words in profile.note, words
    assert "accuracy" not in profile.note and "%" not in profile.note
