"""Our CaiT and FocalNet against timm's logits, on whichever Keras backend is active.

timm itself runs only in the parity environment (tests/test_parity_*.py, PyTorch backend). So that
TensorFlow and JAX are compared with timm too, scripts/make_parity_fixtures.py saved there, for one tiny
model of each, timm's weights (every one redrawn at a trained network's scale), a batch of images and
timm's logits for them (tests/data/*.npz). Here the weights go through ``load_timm_weights`` into our
model, which must give the same logits to within 1e-5 relative to the largest logit.
"""

import importlib
import json
import pathlib

import keras
import numpy as np
import pytest
from timm_parity import TOLERANCE, relative_difference

DATA = pathlib.Path(__file__).resolve().parent / "data"
STATE_PREFIX = "state."  # as written by scripts/make_parity_fixtures.py
FIXTURES = ("timm_cait_tiny", "timm_focalnet_tiny")


def _load(name):
    """The fixture ``name``: its model module, build_model arguments, state_dict, images and timm's logits."""
    with np.load(DATA / f"{name}.npz") as fixture:
        module = importlib.import_module(f"course_utils.models.{fixture['module']}")
        state = {key[len(STATE_PREFIX):]: fixture[key] for key in fixture.files if key.startswith(STATE_PREFIX)}
        return module, json.loads(str(fixture["config"])), state, fixture["images"], fixture["logits"]


def test_every_fixture_is_here_and_small():
    assert sorted(path.stem for path in DATA.glob("*.npz")) == sorted(FIXTURES)
    for name in FIXTURES:
        assert (DATA / f"{name}.npz").stat().st_size < 512 * 1024, name


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_match_timm_on_this_backend(name):
    module, config, state, images, expected = _load(name)
    model = module.build_model(**config, include_preprocessing=False)
    module.load_timm_weights(model, state)
    actual = keras.ops.convert_to_numpy(model(images, training=False))
    difference = relative_difference(actual, expected)
    backend = keras.backend.backend()
    assert difference <= TOLERANCE, f"{backend}: max |ours - timm| / max(1, max |timm|) = {difference:.2e}"
    # Not vacuous: the logits differ between images and classes.
    assert np.std(expected) > 0.3 and len(images) > 1
