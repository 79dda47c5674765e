"""Does a map point at the evidence the classifier uses? Hide what it points at, and measure.

A map of attention weights is not an explanation by itself (Jain and Wallace, 2019, "Attention is not
Explanation"; Wiegreffe and Pinter, 2019, "Attention is not not Explanation"): a model can attend to a patch
and still decide from others. One test that can fail is to *remove* evidence. Rank each image's patches by
its own map, paint the top-ranked fraction over with the mean pixel, and compare the accuracy with painting
over as many patches drawn at random (Samek et al., 2017, "Evaluating the visualization of what a deep
neural network has learned"). If the map marks what the classifier uses, hiding the most-weighted patches
costs clearly more than hiding random ones, and hiding the least-weighted ones costs least. Masked images
are unlike the training images, so random masking costs accuracy too: compare the rows with each other.

:func:`masking_test` works for every model of the course whose ``analyze`` returns a map on its patch grid::

    result = masking_test(model, cait.analyze, "class attention, block 2", x_test[:1000], y_test[:1000])
    print(result.table())
"""

import dataclasses

import keras
import numpy as np

from course_utils.validation import require_positive_int

DEFAULT_FRACTIONS = (1 / 16, 1 / 8, 1 / 4)


def crop_geometry(model, input_size):
    """``(resize_to, crop)`` of the model's preprocessing stage, or ``(input_size, input_size)`` without one."""
    for layer in model.layers:
        if isinstance(layer, keras.Sequential) and layer.name == "preprocessing":
            return layer.get_layer("resize").height, layer.get_layer("crop").size
    return input_size, input_size


def _grid_cell_of_pixel(input_size, resize_to, crop, cells):
    """For each input pixel row (or column), the grid row (column) its centre falls in after resize and crop."""
    centres = (np.arange(input_size) + 0.5) * resize_to / input_size - (resize_to - crop) // 2
    return np.clip(np.floor(centres * cells / crop).astype(int), 0, cells - 1)


def mask_patches(model, images, patch_indices, grid, fill="mean"):
    """Copies of ``images`` with the given cells of the model's patch grid painted over in input pixels.

    The ``grid`` (rows, columns) is mapped back through the model's resize and centre crop, so cell ``i``
    (row-major) covers the input pixels the model sees there; pixels outside the crop go to the nearest
    border cell.

    Args:
        model: the model whose preprocessing (resize, crop) the images go through.
        images: uint8 ``(batch, size, size, 3)``.
        patch_indices: int array ``(batch, k)``: the cells to paint over in each image (``k`` may be 0).
        grid: ``(rows, columns)`` of the map the indices refer to.
        fill: ``"mean"`` (the per-channel mean pixel of ``images``) or ``"zero"`` (black).

    Returns: a uint8 array shaped like ``images``.
    """
    images = np.asarray(images)
    rows, columns = grid
    patch_indices = np.asarray(patch_indices, dtype=int).reshape(len(images), -1)
    if fill == "mean":
        value = np.round(images.reshape(-1, images.shape[-1]).mean(axis=0)).astype(images.dtype)
    elif fill == "zero":
        value = np.zeros(images.shape[-1], dtype=images.dtype)
    else:
        raise ValueError(f"`fill` must be 'mean' or 'zero', got {fill!r}.")
    if patch_indices.size and (patch_indices.min() < 0 or patch_indices.max() >= rows * columns):
        raise ValueError(f"patch indices must lie in [0, {rows * columns}) for a {rows}x{columns} grid.")
    cell_mask = np.zeros((len(images), rows * columns), dtype=bool)
    np.put_along_axis(cell_mask, patch_indices, True, axis=1)
    cell_mask = cell_mask.reshape(len(images), rows, columns)
    height, width = images.shape[1:3]
    resize_to, crop = crop_geometry(model, height)
    row_of_pixel = _grid_cell_of_pixel(height, resize_to, crop, rows)
    column_of_pixel = _grid_cell_of_pixel(width, resize_to, crop, columns)
    pixel_mask = cell_mask[:, row_of_pixel[:, None], column_of_pixel[None, :]]  # (batch, height, width)
    masked = images.copy()
    masked[pixel_mask] = value
    return masked


def rank_patches(values):
    """Each image's patch indices (row-major on its grid), most-weighted first: the order the masking test hides.

    ``values`` is a map ``(batch, items, rows, columns)``, for example ``analyze(...).maps[name].values``; its
    items (heads, tokens) are averaged first. Equal weights keep their row-major order.
    Returns an int array ``(batch, rows * columns)``.
    """
    values = np.asarray(values).mean(axis=1)
    return np.argsort(-values.reshape(len(values), -1), axis=1, kind="stable")


@dataclasses.dataclass(frozen=True)
class MaskingResult:
    """Accuracies of :func:`masking_test`, one entry per masked fraction.

    Attributes:
        map_name: the map that ranked the patches.
        images: how many images were masked (one image moves an accuracy by ``1 / images``).
        patches: patches per image (the map's grid).
        counts: patches hidden per image, for each fraction.
        unmasked: accuracy on the original images.
        most, least: accuracy after hiding the highest- or lowest-weighted patches.
        random_mean, random_std: mean and standard deviation over ``repeats`` random draws.
    """

    map_name: str
    images: int
    patches: int
    counts: tuple
    unmasked: float
    most: tuple
    least: tuple
    random_mean: tuple
    random_std: tuple

    @property
    def gaps(self):
        """Accuracy lost by hiding the most-weighted instead of random patches, per fraction (positive: the map points at evidence)."""
        return tuple(random - most for random, most in zip(self.random_mean, self.most))

    def summary(self):
        """One or two sentences on what the numbers show and what they do not.

        A gap counts when it exceeds both one image and twice the standard deviation of the random draws.
        """
        noise = [max(1 / self.images, 2 * std) for std in self.random_std]
        clear = [gap > margin for gap, margin in zip(self.gaps, noise)]
        span = f"{100 * min(self.gaps):.1f} to {100 * max(self.gaps):.1f} points"
        if all(clear):
            verdict = (f"At every share, hiding the most-weighted patches costs more accuracy than hiding random ones "
                       f"({span} more, beyond the spread of the random draws): the map marks patches the "
                       "classifier uses.")
        elif not any(clear):
            verdict = ("Hiding the most-weighted patches costs no clearly larger drop than hiding random ones: this "
                       "map does not single out the evidence the classifier uses.")
        else:
            shares = ", ".join(f"{count / self.patches:.0%}" for count, ok in zip(self.counts, clear) if ok)
            verdict = (f"Hiding the most-weighted patches costs clearly more than random ones only at some shares "
                       f"({shares}): weak evidence that the map marks what the classifier uses.")
        return verdict + (" It does not show that these are the only patches the classifier uses, nor why it "
                          "uses them.")

    def table(self):
        """The result as a small text table with a one-line reading aid."""
        lines = [f"masking by {self.map_name!r}: {self.images} images, {self.patches} patches each; one image = "
                 f"{100 / self.images:.1f} points",
                 f"{'hidden':>14s} {'none':>7s} {'most weighted':>14s} {'random (mean ± sd)':>19s} {'least weighted':>15s}"]
        for count, most, mean, std, least in zip(self.counts, self.most, self.random_mean, self.random_std, self.least):
            random = f"{100 * mean:.1f}% ± {100 * std:.1f}"
            lines.append(f"{count:>5d} ({count / self.patches:4.0%}) {self.unmasked:7.1%} {most:14.1%} "
                         f"{random:>19s} {least:15.1%}")
        lines.append("most weighted vs random: " + ", ".join(f"{-100 * gap:+.1f}" for gap in self.gaps) + " points")
        return "\n".join(lines)


def masking_test(model, analyze, map_name, images, labels, fractions=DEFAULT_FRACTIONS, repeats=3, fill="mean",
                 seed=0, batch_size=128):
    """Accuracy after hiding each image's most-weighted patches, its least-weighted, and random ones.

    Args:
        model: a course model or its visualization model (pass the latter when calling several times).
        analyze: the model module's ``analyze(model, images, batch_size=...)``.
        map_name: the map of ``analyze``'s result that ranks the patches; its items (heads, tokens) are
            averaged. Its grid must be the model's patch grid.
        images, labels: uint8 ``(batch, size, size, 3)`` and integer labels ``(batch,)`` or ``(batch, 1)``.
        fractions: shares of the patches to hide, each in (0, 1].
        repeats: random draws per fraction (their spread says how much a difference means).
        fill: what hidden pixels become, see :func:`mask_patches`.
        seed: seed of the random draws.
        batch_size: images per prediction step.

    Returns: a :class:`MaskingResult`.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels.")
    require_positive_int("repeats", repeats)
    fractions = tuple(float(fraction) for fraction in fractions)
    if not fractions or not all(0 < fraction <= 1 for fraction in fractions):
        raise ValueError(f"fractions must be shares of the patches in (0, 1], got {fractions}.")
    probabilities, maps = analyze(model, images, batch_size=batch_size)
    if map_name not in maps:
        raise ValueError(f"analyze() returned no map {map_name!r}: choose one of {sorted(maps)}.")
    grid = maps[map_name].values.shape[2:]
    patches = grid[0] * grid[1]
    ranking = rank_patches(maps[map_name].values)
    rng = np.random.default_rng(seed)

    def accuracy_hiding(indices):
        masked = mask_patches(model, images, indices, grid, fill=fill)
        return float(np.mean(np.argmax(analyze(model, masked, batch_size=batch_size).probabilities, axis=-1) == labels))

    counts = tuple(max(1, round(fraction * patches)) for fraction in fractions)
    most, least, random_mean, random_std = [], [], [], []
    for count in counts:
        most.append(accuracy_hiding(ranking[:, :count]))
        least.append(accuracy_hiding(ranking[:, patches - count:]))
        draws = [accuracy_hiding(np.argsort(rng.random((len(images), patches)), axis=1)[:, :count])
                 for _ in range(repeats)]
        random_mean.append(float(np.mean(draws)))
        random_std.append(float(np.std(draws)))
    return MaskingResult(map_name, len(images), patches, counts, float(np.mean(np.argmax(probabilities, -1) == labels)),
                         tuple(most), tuple(least), tuple(random_mean), tuple(random_std))
