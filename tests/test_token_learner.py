import keras
import numpy as np
import pytest
from helpers import check_layer, check_model_round_trip, random_inputs, train_one_step

from course_utils.models import token_learner as tl

TINY = dict(image_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, dropout_rate=0.0)


def test_token_learner_layer(tmp_path):
    layer = check_layer(tl.TokenLearner, {"num_tokens": 3}, (2, 4, 4, 8), [(2, 3, 8), (2, 3, 4, 4)], tmp_path)
    x = random_inputs((2, 4, 4, 8))
    tokens, attention = layer(x)
    attention = keras.ops.convert_to_numpy(attention)
    assert attention.min() >= 0 and attention.max() <= 1  # sigmoid maps
    # Each token is the attention-weighted spatial mean of the features.
    expected = np.einsum("bthw,bhwc->btc", attention, x) / 16
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tokens), expected, atol=1e-5)


def test_token_learner_v11_layer(tmp_path):
    layer = check_layer(
        tl.TokenLearnerV11, {"num_tokens": 3, "num_groups": 2}, (2, 4, 4, 8), [(2, 3, 8), (2, 3, 4, 4)], tmp_path
    )
    _, attention = layer(random_inputs((2, 4, 4, 8)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(attention).sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_invalid_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="num_tokens"):
        tl.TokenLearner(num_tokens=0)
    with pytest.raises(ValueError, match="`channels`=6 is not divisible by `num_groups`=4"):
        tl.TokenLearnerV11(num_groups=4)(random_inputs((1, 2, 2, 6)))
    with pytest.raises(ValueError, match="`image_size`=30 is not divisible by `patch_size`=4"):
        tl.build_vit(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="`embed_dim`=30 is not divisible by `num_heads`=4"):
        tl.build_vit(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="token_learner must be None or one of"):
        tl.build_vit(token_learner="v2")


@pytest.mark.parametrize("variant", [None, "v1.0", "v1.1"])
def test_vit_builds_and_round_trips(variant, tmp_path):
    model = tl.build_vit(token_learner=variant, **TINY)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert model(images).shape == (2, 10)
    check_model_round_trip(model, images, tmp_path)


def test_token_learner_reduces_tokens_after_its_position():
    model = tl.build_vit(token_learner="v1.0", num_tokens=5, token_learner_after=1, **TINY)
    assert model.get_layer("block_0").output[0].shape == (None, 16, 16)
    assert model.get_layer("block_1").output[0].shape == (None, 5, 16)


def test_visualization_model_shares_weights_and_returns_maps():
    model = tl.build_vit(token_learner="v1.0", num_tokens=4, **TINY)
    viz = tl.visualization_model(model)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    outputs = viz.predict(images, verbose=0)
    assert outputs["token_attention"].shape == (3, 4, 4, 4)
    np.testing.assert_allclose(outputs["logits"], model.predict(images, verbose=0), atol=1e-5)
    probabilities, maps = tl.analyze(viz, images)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert maps["token"].shape == (3, 4, 4, 4)
    with pytest.raises(ValueError, match="no TokenLearner"):
        tl.visualization_model(tl.build_vit(**TINY))


@pytest.mark.parametrize("profile", sorted(tl.PROFILES))
@pytest.mark.parametrize("variant", [None, "v1.0"])
def test_every_profile_builds_and_trains_one_step(profile, variant):
    model = tl.build_vit(token_learner=variant, **tl.PROFILES[profile].model)
    train_one_step(model, batch_size=2)
