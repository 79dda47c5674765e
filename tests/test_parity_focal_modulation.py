"""Our FocalNet against timm's: same weights, same logits.

Every weight of the timm model is redrawn at the scale of a trained network (tests/timm_parity.py), copied
into ours with ``focal_modulation.load_timm_weights``, and both must give the same logits to within 1e-5
(relative to the largest logit). At timm's own initialisation (standard deviation 0.02) the gates are about
ten times smaller than the context they weight and the logits almost constant; ``_check_gates_are_informative``
makes sure these weights do not leave the modulation that quiet.

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
from timm_parity import (  # noqa: E402
    TOLERANCE,
    random_images,
    randomised,
    relative_difference,
    timm_focalnet_kwargs,
    timm_logits,
)

from course_utils.models import focal_modulation as fm  # noqa: E402

# Small configurations covering every option the converter must handle, as our build_model arguments (the
# timm model is built from the same configuration with timm_focalnet_kwargs).
VARIANTS = {
    "default_64px": dict(
        image_size=64, embed_dim=16, depths=(1, 2, 1), focal_levels=(2, 3, 1), focal_windows=(3, 3, 5),
    ),
    "post_norm_layerscale_normalized_modulator_32px": dict(
        image_size=32, embed_dim=16, depths=(2, 1), focal_levels=(3, 2), focal_windows=(3, 5), use_post_norm=True,
        normalize_modulator=True, layer_scale_init=1e-4,
    ),
    # Like timm's focalnet_huge_*: overlapping downsampling, post-norm, LayerNorm inside the modulation.
    # 60 px is not a multiple of the stride: the overlapping convolutions floor, 60 -> 15 -> 8.
    "overlap_down_post_norm_in_modulation_60px": dict(
        image_size=60, embed_dim=12, depths=(1, 2), focal_levels=(2, 2), focal_windows=(3, 3), use_overlap_down=True,
        use_post_norm=True, use_post_norm_in_modulation=True, layer_scale_init=1e-4,
    ),
}


def _check_gates_are_informative(keras_model, images):
    """Every block's gates must vary at the scale of the context they weight (at timm's initialisation
    their standard deviation is about 0.1; with the weights of ``realistic_state_dict``, about 1)."""
    outputs = fm.visualization_model(keras_model)(images, training=False)
    for name, value in outputs.items():
        if name.endswith("_gates"):
            spread = float(np.std(keras.ops.convert_to_numpy(value)))
            assert spread > 0.3, f"{name}: gates too small for the comparison to test them (std {spread:.3f})"


def _compare(timm_model, keras_model, image_size, seed=0):
    """Load timm's weights into ours and compare the logits; returns the relative max difference."""
    assert keras_model.count_params() == sum(p.numel() for p in timm_model.parameters())
    fm.load_timm_weights(keras_model, timm_model.state_dict())
    images = random_images(image_size, batch=2, seed=seed)
    expected = timm_logits(timm_model, images)
    difference = relative_difference(keras.ops.convert_to_numpy(keras_model(images, training=False)), expected)
    assert difference <= TOLERANCE, f"max |keras - timm| / max(1, max |timm|) = {difference:.2e}"
    # The comparison must not be vacuous: the logits differ between images and classes.
    assert float(np.std(expected)) > 0.3
    _check_gates_are_informative(keras_model, images)
    return difference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_timm(variant):
    keras_kwargs = {**VARIANTS[variant], "num_classes": 10}
    timm_model = randomised(FocalNet(**timm_focalnet_kwargs(keras_kwargs)))
    keras_model = fm.build_model(include_preprocessing=False, dropout_rate=0.0, **keras_kwargs)
    _compare(timm_model, keras_model, keras_kwargs["image_size"])


def test_named_configuration_focalnet_tiny_srf():
    timm_model = randomised(timm.create_model("focalnet_tiny_srf", pretrained=False), seed=1)
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
    assert keras_model.count_params() == 28_427_116
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
