"""Our FocalNet against timm's: same weights, same logits.

timm (and torchvision, which it imports) does not fit the main test environment's CPU-only torch, so these
tests run in the parity environment built by scripts/make_parity_env.sh::

    KERAS_BACKEND=torch .venv-parity/bin/python -m pytest tests/test_parity_focal_modulation.py -q

Elsewhere they are skipped.
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
from timm.models.focalnet import FocalNet  # noqa: E402

from course_utils.models import focal_modulation as fm  # noqa: E402

# Small timm configurations covering every option the converter must handle. Each entry: timm kwargs,
# the matching build_model kwargs, and the input side.
VARIANTS = {
    "default": (
        dict(embed_dim=16, depths=(1, 2, 1), focal_levels=(2, 3, 1), focal_windows=(3, 3, 5)),
        dict(embed_dim=16, depths=(1, 2, 1), focal_levels=(2, 3, 1), focal_windows=(3, 3, 5)),
        64,
    ),
    "post_norm_layerscale_normalized_modulator": (
        dict(
            embed_dim=16,
            depths=(2, 1),
            focal_levels=(3, 2),
            focal_windows=(3, 5),
            use_post_norm=True,
            normalize_modulator=True,
            layerscale_value=1e-4,
        ),
        dict(
            embed_dim=16,
            depths=(2, 1),
            focal_levels=(3, 2),
            focal_windows=(3, 5),
            use_post_norm=True,
            normalize_modulator=True,
            layer_scale_init=1e-4,
        ),
        32,
    ),
    # Like timm's focalnet_huge_*: overlapping downsampling, post-norm, LayerNorm inside the modulation.
    # 60 px is not a multiple of the stride: the overlapping convolutions floor, 60 -> 15 -> 8.
    "overlap_down_post_norm_in_modulation": (
        dict(
            embed_dim=12,
            depths=(1, 2),
            focal_levels=(2, 2),
            focal_windows=(3, 3),
            use_overlap_down=True,
            use_post_norm=True,
            use_post_norm_in_modulation=True,
            layerscale_value=1e-4,
        ),
        dict(
            embed_dim=12,
            depths=(1, 2),
            focal_levels=(2, 2),
            focal_windows=(3, 3),
            use_overlap_down=True,
            use_post_norm=True,
            use_post_norm_in_modulation=True,
            layer_scale_init=1e-4,
        ),
        60,
    ),
}


def _randomise(model, seed=0):
    """Random weights at a unit-variance scale, and random norm affines, biases and LayerScale gammas.

    timm initialises kernels with std 0.02, norms at (1, 0), biases at 0 and LayerScale at 1e-4; at that
    scale the branches barely move the activations and a wrong detail (say a tanh-approximated GELU) could
    hide under the tolerance. Kernels get std 1 / sqrt(fan_in) instead, so activations stay O(1).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.rand(parameter.shape, generator=generator)
            if name.endswith("gamma"):
                parameter.copy_(0.2 + 0.8 * noise)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(0.5 + noise)
            elif name.endswith("bias"):
                parameter.copy_(0.2 * (noise - 0.5))
            elif parameter.ndim > 1:
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / fan_in**0.5)
    return model.eval()


def _compare(timm_model, keras_model, image_size, seed=0):
    images = np.random.default_rng(seed).normal(size=(2, image_size, image_size, 3)).astype("float32")
    with torch.no_grad():
        expected = timm_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    actual = keras.ops.convert_to_numpy(keras_model(images, training=False))
    assert actual.shape == expected.shape
    difference = float(np.max(np.abs(actual - expected)))
    assert difference <= 1e-4, f"max |keras - timm| = {difference:.2e}"
    # The comparison must not be vacuous: the logits differ between images and classes.
    assert float(np.std(expected)) > 0.1
    return difference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_timm(variant):
    timm_kwargs, keras_kwargs, image_size = VARIANTS[variant]
    torch.manual_seed(0)
    timm_model = _randomise(FocalNet(num_classes=10, drop_path_rate=0.0, **timm_kwargs))
    keras_model = fm.build_model(
        num_classes=10, include_preprocessing=False, image_size=image_size, dropout_rate=0.0, **keras_kwargs
    )
    assert keras_model.count_params() == sum(p.numel() for p in timm_model.parameters())
    fm.load_timm_weights(keras_model, timm_model.state_dict())
    _compare(timm_model, keras_model, image_size)


def test_named_configuration_focalnet_tiny_srf():
    torch.manual_seed(0)
    timm_model = _randomise(timm.create_model("focalnet_tiny_srf", pretrained=False), seed=1)
    keras_model = fm.build_model(
        num_classes=1000,
        include_preprocessing=False,
        image_size=64,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        focal_levels=2,
        focal_windows=3,
        dropout_rate=0.0,
    )
    timm_parameters = sum(p.numel() for p in timm_model.parameters())
    assert keras_model.count_params() == timm_parameters == 28_427_116
    fm.load_timm_weights(keras_model, timm_model.state_dict())
    _compare(timm_model, keras_model, 64, seed=1)


def test_converter_reports_a_mismatched_configuration():
    timm_model = FocalNet(num_classes=10, embed_dim=16, depths=(1, 1), focal_levels=(2, 2), focal_windows=(3, 3))
    # One focal level fewer in stage 1 and a wider stage 0: keys go unused and shapes differ.
    keras_model = fm.build_model(
        num_classes=10, include_preprocessing=False, image_size=32, embed_dim=24, depths=(1, 1), focal_levels=(2, 1)
    )
    before = [keras.ops.convert_to_numpy(w).copy() for w in keras_model.weights]
    with pytest.raises(ValueError) as error:
        fm.load_timm_weights(keras_model, timm_model.state_dict())
    message = str(error.value)
    assert "not used by the Keras model" in message
    assert "layers.1.blocks.0.modulation.focal_layers.1.0.weight" in message
    assert "shape mismatches" in message and "stem.proj.weight" in message
    # Nothing was copied.
    for old, new in zip(before, keras_model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
