"""What ``analyze(model, images)`` returns in every model module (a leaf: numpy only).

The notebooks draw maps of five kinds (token maps, class attention, pooling attention, focal gates,
slow-stream attention). Each model module's ``analyze`` returns them in one shape, with what a figure
needs to draw them honestly: a label per item, and whether values are signed.
"""

import dataclasses
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class MapSet:
    """A stack of maps of one kind, for a batch of images.

    Attributes:
        values: float32 ``(batch, items, height, width)``: one ``height x width`` map per item (head, token,
            focal level, chunk) and image.
        items: one label per item, e.g. ``("head 1", "head 2")``; what a figure titles each map with.
        signed: True when values can be negative (gates), so a figure uses a colour map centred on 0;
            False for weights and norms (drawn from 0 up).
        description: one sentence saying what a value is.

    Example:
    >>> maps = MapSet(np.ones((2, 3, 4, 4)), items=("head 1", "head 2", "head 3"))
    >>> maps.grid, maps.batch_size
    ((4, 4), 2)
    """

    values: np.ndarray
    items: tuple
    signed: bool = False
    description: str = ""

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim != 4:
            raise ValueError(f"MapSet values must be shaped (batch, items, height, width), got {values.shape}.")
        items = tuple(str(item) for item in self.items)
        if len(items) != values.shape[1]:
            raise ValueError(f"MapSet has {values.shape[1]} maps per image but {len(items)} item labels: {items}.")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "items", items)

    @property
    def grid(self):
        """``(height, width)`` of each map."""
        return tuple(self.values.shape[2:])

    @property
    def batch_size(self):
        return self.values.shape[0]

    def item_correlation(self):
        """How alike the items' maps of one image are: the mean correlation over pairs of items and images.

        1.0 means every item draws the same map (up to scale and offset), 0 means unrelated maps; a constant
        map counts as unrelated to any other. It is the number to read before saying that tokens or heads
        "specialise". Needs at least two items.

        >>> ramp = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> round(MapSet(np.concatenate([ramp, 2 * ramp + 1], axis=1), items=("a", "b")).item_correlation(), 3)
        1.0
        """
        batch, count = self.values.shape[:2]
        if count < 2:
            raise ValueError(f"item_correlation needs at least two items per image, this MapSet has {count}.")
        flat = self.values.reshape(batch, count, -1).astype(np.float64)
        flat -= flat.mean(axis=-1, keepdims=True)
        flat /= np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
        correlations = flat @ flat.transpose(0, 2, 1)
        off_diagonal = correlations.sum(axis=(1, 2)) - np.trace(correlations, axis1=1, axis2=2)
        return float(off_diagonal.mean() / (count * (count - 1)))


def numbered(what, count):
    """``("what 1", ..., "what count")``: item labels numbered from 1, as figures show them.

    >>> numbered("head", 2)
    ('head 1', 'head 2')
    """
    return tuple(f"{what} {k + 1}" for k in range(count))


class Analysis(NamedTuple):
    """``analyze``'s result: unpacks as ``probabilities, maps = analyze(model, images)``.

    Attributes:
        probabilities: float32 ``(batch, classes)``, each row sums to 1.
        maps: map name -> :class:`MapSet`, in the order a figure shows them.
    """

    probabilities: np.ndarray
    maps: dict


def softmax(logits):
    """Softmax over the last axis of a numpy array, computed stably in float64, returned as float32.

    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
