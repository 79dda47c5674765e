"""Write the timm fixtures that let the main environment compare our CaiT and FocalNet with timm.

timm runs only in the parity environment (PyTorch backend), so tests/test_parity_*.py cannot run on
TensorFlow or JAX. This script builds one tiny timm CaiT and one tiny timm FocalNet there, redraws every
weight at the scale of a trained network (tests/timm_parity.py), and saves each as a small .npz in
tests/data/: the state_dict as numpy arrays, a batch of random images, timm's logits for them, the
matching ``build_model`` arguments and the timm version. tests/test_timm_fixtures.py loads them on
whichever backend it runs on. Run it again only when a fixture's configuration changes::

    .venv-parity/bin/python scripts/make_parity_fixtures.py
"""

import json
import pathlib
import sys

import numpy as np
import timm
from timm.models.cait import Cait
from timm.models.focalnet import FocalNet

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from timm_parity import (  # noqa: E402
    random_images,
    randomised,
    timm_cait_kwargs,
    timm_focalnet_kwargs,
    timm_logits,
)

DATA = ROOT / "tests" / "data"
STATE_PREFIX = "state."  # state_dict entries are stored as "state.<timm key>"

# name -> (course_utils.models module, build_model arguments without include_preprocessing, timm class,
# timm arguments). Three heads make the head-mixing matrices non-symmetric and distinguishable.
CAIT = dict(image_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, class_attention_depth=2,
            mlp_ratio=2.0, num_classes=10)
FOCALNET = dict(image_size=32, embed_dim=8, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3],
                layer_scale_init=1e-4, num_classes=10)
FIXTURES = {
    "timm_cait_tiny": ("cait", CAIT, Cait, timm_cait_kwargs(CAIT)),
    "timm_focalnet_tiny": ("focal_modulation", FOCALNET, FocalNet, timm_focalnet_kwargs(FOCALNET)),
}


def write_fixture(name, module, config, timm_class, timm_kwargs, seed=0, batch=4):
    """Save one fixture as ``tests/data/<name>.npz``; returns its path."""
    timm_model = randomised(timm_class(**timm_kwargs), seed=seed)
    images = random_images(config["image_size"], batch=batch, seed=seed)
    arrays = {STATE_PREFIX + key: value.numpy() for key, value in timm_model.state_dict().items()}
    path = DATA / f"{name}.npz"
    np.savez_compressed(
        path,
        module=np.array(module),
        config=np.array(json.dumps(config)),
        timm_version=np.array(timm.__version__),
        images=images,
        logits=timm_logits(timm_model, images),
        **arrays,
    )
    return path


def main():
    DATA.mkdir(parents=True, exist_ok=True)
    for name, (module, config, timm_class, timm_kwargs) in FIXTURES.items():
        path = write_fixture(name, module, config, timm_class, timm_kwargs)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
