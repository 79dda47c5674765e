"""The ``Profile`` record and :func:`select_profile` (a leaf: the models and training both read it).

A profile says how much to train and which model to build: every model module has
``PROFILES = {"smoke": Profile(...), "workshop": Profile(...), "full": Profile(...)}`` and the notebook
picks one with ``select_profile(module.PROFILES, profile)``.
"""

import dataclasses

PROFILE_NAMES = ("smoke", "workshop", "full")
CHECKPOINT_PROFILE = "checkpoint"
"""The name of the profiles that train the shipped checkpoints (``course_utils.pretrained.RECIPES``)."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much to train: a plain record a notebook can print.

    Attributes:
        name: ``smoke`` (CI, well under a minute of training on a 2-core CPU), ``workshop`` (at most six
            minutes end to end on a 2-core CPU) or ``full`` (the paper example's configuration, for a GPU);
            ``checkpoint`` for the recipes of the shipped checkpoints (``course_utils.pretrained``).
        epochs: passes over the training subset.
        batch_size: images per step.
        train_samples: how many of the 40,000 training images to use (``None``: all).
        eval_samples: how many of the 10,000 validation images to evaluate after each epoch (``None``: all).
        test_samples: how many of the 10,000 test images the final accuracy uses (``None``: all).
        learning_rate: peak learning rate reached after warmup.
        weight_decay: AdamW weight decay.
        warmup_epochs: epochs of linear warmup before the cosine decay (may be fractional).
        model: keyword arguments for the module's ``build_model``.
        note: one line on where the numbers come from.
    """

    name: str
    epochs: int
    batch_size: int
    train_samples: int | None = None
    eval_samples: int | None = None
    test_samples: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    model: dict = dataclasses.field(default_factory=dict)
    note: str = ""

    def __post_init__(self):
        if self.name not in (*PROFILE_NAMES, CHECKPOINT_PROFILE):
            raise ValueError(f"Profile name must be one of {(*PROFILE_NAMES, CHECKPOINT_PROFILE)}, got {self.name!r}.")
        for field in ("epochs", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Profile `{field}` must be a positive integer, got {value!r}.")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must lie between 0 and epochs={self.epochs}.")

    def describe(self):
        """A short multi-line text for printing in a notebook."""
        lines = [f"profile {self.name}: {self.note}".rstrip(": ")]
        for field in dataclasses.fields(self):
            if field.name not in ("name", "note"):
                lines.append(f"  {field.name:15s} {getattr(self, field.name)}")
        return "\n".join(lines)


def select_profile(profiles, name):
    """Return ``profiles[name]`` with a helpful error for an unknown name."""
    if name not in profiles:
        raise ValueError(f"Unknown profile {name!r}: choose one of {sorted(profiles)}.")
    return profiles[name]
