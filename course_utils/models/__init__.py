"""One module per paper, plus the blocks they share.

Importing this package imports every model module, so that all custom layers are registered with
Keras and any saved ``.keras`` model of the course loads.
"""

import importlib

MODEL_MODULES = ("token_learner",)

for _name in MODEL_MODULES:
    importlib.import_module(f"course_utils.models.{_name}")
