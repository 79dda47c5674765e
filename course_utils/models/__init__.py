"""One module per paper, plus the blocks they share.

:func:`import_all` imports every model module, so that all custom layers are registered with Keras
and any saved ``.keras`` model of the course loads.
"""

import importlib

MODEL_MODULES = ("token_learner", "cait", "patch_convnet", "focal_modulation", "temporal_latent_bottleneck")


def import_all():
    """Import every model module (registering its layers) and return them by name."""
    return {name: importlib.import_module(f"course_utils.models.{name}") for name in MODEL_MODULES}
