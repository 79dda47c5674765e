"""Our CaiT against timm's reference implementation: same parameter count, same logits.

Every weight of the timm model is redrawn at the scale of a trained network (tests/timm_parity.py), copied
into ours with ``cait.load_timm_weights``, and both must give the same logits to within 1e-5 (relative to
the largest logit) on random images, for several depths, head counts (1, 2, 3, 4), class-attention depths
(1, 2), input sizes (32, 64, 224 px), patch sizes (4, 8, 16), with and without LayerScale. At timm's own
initialisation (standard deviation 0.02) every patch-attention row is uniform to within a few per cent
and such a comparison misses whole operations; ``_check_attention_is_informative`` makes sure these
weights do not.

These tests need timm (and so torchvision and a matching torch), which the main environment does not
have; they run in the parity environment::

    bash scripts/make_parity_env.sh
    KERAS_BACKEND=torch .venv-parity/bin/python -m pytest tests/test_parity_cait.py -q
"""

import numpy as np
import pytest

timm = pytest.importorskip(
    "timm",
    reason="timm is not installed here; the parity tests run in the separate parity environment "
    "(scripts/make_parity_env.sh)",
)
torch = pytest.importorskip("torch")

import keras  # noqa: E402
from timm.models.cait import Cait  # noqa: E402
from timm_parity import (  # noqa: E402
    TOLERANCE,
    attention_spread,
    random_images,
    randomised,
    relative_difference,
    timm_cait_kwargs,
    timm_logits,
)

from course_utils.models import cait  # noqa: E402
from course_utils.models.common import find_layers  # noqa: E402

# Our build_model arguments; the timm model is built from the same configuration (timm_cait_kwargs).
VARIANTS = {
    "one_head_one_class_block_32px_patch4": dict(
        image_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=1, class_attention_depth=1, mlp_ratio=4.0,
        num_classes=10,
    ),
    "four_heads_two_class_blocks_64px_patch8": dict(
        image_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=4, class_attention_depth=2, mlp_ratio=2.0,
        num_classes=7,
    ),
    "three_heads_no_qkv_bias_32px_patch8": dict(
        image_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, class_attention_depth=2, mlp_ratio=4.0,
        qkv_bias=False, num_classes=5,
    ),
}


def _check_attention_is_informative(our_model, images):
    """The weights must make attention far from uniform, or the comparison could not see the attention.

    The patch stage's weights are read after the post-softmax mix, less that mix's bias (uniform softmax
    rows would leave them constant along the keys); the class stage's are the softmax itself. At timm's
    initialisation the least spread patch block of these configurations measures below 0.002, with the
    weights of ``realistic_state_dict`` above 0.1.
    """
    patch_blocks = find_layers(our_model, cait.SelfAttentionBlock, cait.BUILDER)
    class_blocks = find_layers(our_model, cait.ClassAttentionBlock, cait.BUILDER)
    probe = keras.Model(our_model.input, [block.output[1] for block in patch_blocks + class_blocks])
    outputs = [keras.ops.convert_to_numpy(value) for value in probe(images, training=False)]
    for block, weights in zip(patch_blocks, outputs):
        bias = keras.ops.convert_to_numpy(block.attention.post_softmax_mix.bias)
        spread = attention_spread(weights - bias[None, :, None, None])
        assert spread > 0.05, f"{block.name}: patch attention nearly uniform (spread {spread:.3f})"
    for block, weights in zip(class_blocks, outputs[len(patch_blocks):]):
        spread = attention_spread(weights)
        assert spread > 0.05, f"{block.name}: class attention nearly uniform (spread {spread:.3f})"


def _compare(timm_model, our_model, image_size, seed=0, state=None):
    """Load ``state`` (default: timm's weights) into ours and compare the logits; returns the relative max
    difference."""
    cait.load_timm_weights(our_model, timm_model.state_dict() if state is None else state)
    images = random_images(image_size, seed=seed)
    expected = timm_logits(timm_model, images)
    difference = relative_difference(keras.ops.convert_to_numpy(our_model(images, training=False)), expected)
    assert difference <= TOLERANCE, f"max |ours - timm| / max(1, max |timm|) = {difference:.2e}"
    assert np.std(expected) > 0.3, "logits are too flat for the comparison to mean anything"
    _check_attention_is_informative(our_model, images)
    return difference


def test_cait_xxs24_224_parameter_count_matches_timm():
    timm_model = timm.create_model("cait_xxs24_224", pretrained=False)
    ours = cait.cait_xxs24_224()
    assert ours.count_params() == sum(p.numel() for p in timm_model.parameters()) == 11_956_264


def test_cait_xxs24_224_logits_match_timm():
    timm_model = randomised(timm.create_model("cait_xxs24_224", pretrained=False), seed=0)
    _compare(timm_model, cait.cait_xxs24_224(), image_size=224)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_timm(variant):
    ours_kwargs = VARIANTS[variant]
    timm_model = randomised(Cait(**timm_cait_kwargs(ours_kwargs)), seed=1)
    ours = cait.build_model(**ours_kwargs, include_preprocessing=False)
    assert ours.count_params() == sum(p.numel() for p in timm_model.parameters())
    _compare(timm_model, ours, ours_kwargs["image_size"], seed=1)


def test_logits_match_timm_without_layer_scale():
    """timm always has LayerScale; with every gamma at 1 it computes what our model without LayerScale does."""
    ours_kwargs = dict(image_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, class_attention_depth=2,
                       mlp_ratio=4.0, num_classes=10)
    timm_model = randomised(Cait(**timm_cait_kwargs(ours_kwargs)), seed=2)
    gammas = [parameter for name, parameter in timm_model.named_parameters() if name.endswith(("gamma_1", "gamma_2"))]
    assert len(gammas) == 2 * (2 + 2)
    with torch.no_grad():
        for gamma in gammas:
            gamma.fill_(1.0)
    ours = cait.build_model(**ours_kwargs, use_layer_scale=False, include_preprocessing=False)
    state = {key: value for key, value in timm_model.state_dict().items() if not key.endswith(("gamma_1", "gamma_2"))}
    _compare(timm_model, ours, 32, seed=2, state=state)


def test_converter_names_missing_unused_and_misshaped_keys():
    timm_model = Cait(img_size=32, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=4)
    ours = cait.build_model(image_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                            include_preprocessing=False)
    state = dict(timm_model.state_dict())
    state.pop("blocks.1.attn.proj_l.weight")
    state["head.weight"] = torch.zeros(7, 32)
    state["blocks.2.gamma_1"] = torch.zeros(32)
    with pytest.raises(ValueError) as error:
        cait.load_timm_weights(ours, state)
    message = str(error.value)
    assert "missing in the state_dict (1): blocks.1.attn.proj_l.weight" in message
    assert "not used by the Keras model (1): blocks.2.gamma_1" in message
    assert "shape mismatches (timm -> converted vs Keras) (1): head.weight (7, 32) -> (32, 7) vs (32, 10)" in message


def test_model_without_layer_scale_rejects_timm_gammas():
    timm_model = Cait(img_size=32, patch_size=4, num_classes=10, embed_dim=32, depth=1, num_heads=4)
    ours = cait.build_model(image_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=4,
                            use_layer_scale=False, include_preprocessing=False)
    # One self-attention and two class-attention blocks, two gammas each: six keys the model cannot take.
    with pytest.raises(ValueError, match=r"not used by the Keras model \(6\): blocks\.0\.gamma_1"):
        cait.load_timm_weights(ours, timm_model.state_dict())
