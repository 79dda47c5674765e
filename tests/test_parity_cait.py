"""Our CaiT against timm's reference implementation: same parameter count, same logits.

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

from course_utils.models import cait  # noqa: E402
from timm.models.cait import Cait  # noqa: E402


def _randomise(timm_model, seed=0):
    """Make LayerScale gammas, norm affines and biases informative: timm's defaults (gamma = 1e-5, norm
    weight 1, bias 0) would hide a swapped or skipped parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in timm_model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith(("gamma_1", "gamma_2")):
                parameter.copy_(0.2 * noise)
            elif ".norm" in name or name.startswith("norm."):
                parameter.copy_((1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                parameter.add_(0.02 * noise)
            elif name in ("cls_token", "pos_embed"):
                parameter.copy_(0.05 * noise)
    return timm_model.eval()


def _timm_logits(timm_model, images_nhwc):
    with torch.no_grad():
        return timm_model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def _compare(timm_model, our_model, image_size, batch=2, seed=0):
    cait.load_timm_weights(our_model, timm_model.state_dict())
    images = np.random.default_rng(seed).normal(size=(batch, image_size, image_size, 3)).astype("float32")
    expected = _timm_logits(timm_model, images)
    actual = keras.ops.convert_to_numpy(our_model(images, training=False))
    assert actual.shape == expected.shape
    assert np.std(expected) > 0.1, "logits are too flat for the comparison to mean anything"
    difference = np.max(np.abs(actual - expected))
    assert difference <= 1e-4, f"max |ours - timm| = {difference:.2e}"
    return expected


def test_cait_xxs24_224_parameter_count_matches_timm():
    timm_model = timm.create_model("cait_xxs24_224", pretrained=False)
    ours = cait.cait_xxs24_224()
    assert ours.count_params() == sum(p.numel() for p in timm_model.parameters()) == 11_956_264


def test_cait_xxs24_224_logits_match_timm():
    torch.manual_seed(0)
    timm_model = _randomise(timm.create_model("cait_xxs24_224", pretrained=False))
    _compare(timm_model, cait.cait_xxs24_224(), image_size=224)


def test_small_cifar_sized_cait_logits_match_timm():
    """A CIFAR-sized configuration, also exercising non-default depths, widths and class counts."""
    torch.manual_seed(1)
    timm_model = _randomise(
        Cait(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=3, num_heads=4,
             depth_token_only=2, init_values=1e-5),
        seed=1,
    )
    ours = cait.build_model(
        image_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, class_attention_depth=2,
        num_classes=10, include_preprocessing=False,
    )
    _compare(timm_model, ours, image_size=32, batch=3, seed=1)


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
