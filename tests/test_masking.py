"""course_utils.masking: patches painted over through the model's resize and crop, and the masking test."""

import keras
import numpy as np
import pytest

from course_utils.masking import MaskingResult, crop_geometry, mask_patches, masking_test, rank_patches
from course_utils.models import cait
from course_utils.models import patch_convnet as pc

# 16 px input -> resize 18 -> centre crop 16 -> 4 px patches: a 4x4 grid
TINY = dict(embed_dim=8, depth=2, patch_size=4, image_size=16, resize_to=18, input_size=16)
GRID = (4, 4)


def tiny_model():
    keras.utils.set_random_seed(0)
    return pc.build_model(**TINY)


def uint8_images(count, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def test_crop_geometry_reads_the_preprocessing_stage():
    assert crop_geometry(tiny_model(), 16) == (18, 16)
    without = pc.build_model(**{**TINY, "include_preprocessing": False})
    assert crop_geometry(without, 16) == (16, 16)


def test_mask_patches_follows_the_resize_and_crop():
    model = tiny_model()
    images = np.full((2, 16, 16, 3), 200, np.uint8)
    images[1] = 100
    masked = mask_patches(model, images, np.array([[0], [15]]), GRID, fill="zero")
    changed = np.all(masked == 0, axis=-1)
    # Crop offset 1 px in 18 px ~ 0.9 input px: cell 0 covers input rows/cols 0-3, cell 15 rows/cols 12-15.
    assert changed[0, :4, :4].all() and changed[0].sum() == 16
    assert changed[1, 12:, 12:].all() and changed[1].sum() == 16
    np.testing.assert_array_equal(masked[~changed], images[~changed])
    everything = mask_patches(model, images, np.tile(np.arange(16), (2, 1)), GRID, fill="mean")
    assert np.all(everything == 150)  # the mean pixel of the batch, everywhere
    np.testing.assert_array_equal(mask_patches(model, images, np.zeros((2, 0), int), GRID), images)
    with pytest.raises(ValueError, match=r"patch indices must lie in \[0, 16\)"):
        mask_patches(model, images, np.array([[16], [0]]), GRID)
    with pytest.raises(ValueError, match="`fill` must be 'mean' or 'zero'"):
        mask_patches(model, images, np.array([[1], [0]]), GRID, fill="noise")


def test_a_non_square_grid_maps_rows_and_columns_separately():
    images = np.full((1, 16, 16, 3), 255, np.uint8)
    masked = mask_patches(tiny_model(), images, np.array([[1]]), (2, 4), fill="zero")  # row 0, column 1
    changed = np.all(masked == 0, axis=-1)[0]
    assert changed[:8, 4:8].all() and changed.sum() == 8 * 4


def test_masking_test_compares_most_least_and_random_patches():
    viz = pc.visualization_model(tiny_model())
    images = uint8_images(12)
    probabilities, _ = pc.analyze(viz, images)
    labels = np.argmax(probabilities, axis=-1)  # the model is right on all unmasked images
    labels[:3] = (labels[:3] + 1) % 10  # ... except the first three
    result = masking_test(viz, pc.analyze, "pooling attention", images, labels, fractions=(1 / 16, 1.0), repeats=2)
    assert isinstance(result, MaskingResult)
    assert result.unmasked == pytest.approx(0.75) and result.patches == 16 and result.images == 12
    assert result.counts == (1, 16)
    # hiding every patch leaves the same image whichever patches are ranked first
    assert result.most[1] == result.least[1] == result.random_mean[1] and result.random_std[1] == 0.0
    assert all(0.0 <= value <= 1.0 for value in (*result.most, *result.least, *result.random_mean))
    assert result.gaps == tuple(r - m for r, m in zip(result.random_mean, result.most))
    again = masking_test(viz, pc.analyze, "pooling attention", images, labels, fractions=(1 / 16, 1.0), repeats=2)
    assert again == result  # seeded
    table = result.table()
    assert "pooling attention" in table and "± " in table and len(table.splitlines()) == 2 + 2 + 1


def test_masking_test_uses_the_ranking_of_the_map():
    # A fake analyze whose map weights one cell per image, and whose prediction is right only while
    # that cell is unmasked: hiding the most-weighted cell must cost all the accuracy, random ones little.
    model = tiny_model()
    images = uint8_images(16)
    key_cell = np.arange(16) % 16
    labels = np.zeros(16, int)

    def analyze(_, batch, batch_size=128):
        from course_utils.analysis import Analysis, MapSet

        maps = np.zeros((len(batch), 1, 4, 4), np.float32)
        maps.reshape(len(batch), 16)[np.arange(len(batch)), key_cell] = 1.0
        probabilities = np.zeros((len(batch), 10), np.float32)
        for index, (masked, original) in enumerate(zip(batch, images)):  # right while the key cell is intact
            row, column = divmod(key_cell[index], 4)
            window = np.s_[row * 4:(row + 1) * 4, column * 4:(column + 1) * 4]
            probabilities[index, 0 if np.array_equal(masked[window], original[window]) else 1] = 1.0
        return Analysis(probabilities, {"map": MapSet(maps, ("cell",))})

    result = masking_test(model, analyze, "map", images, labels, fractions=(1 / 16,), repeats=3)
    assert result.unmasked == 1.0 and result.most == (0.0,) and result.least == (1.0,)
    assert result.random_mean[0] > 0.8 and result.gaps[0] > 0.8
    assert result.summary().startswith("At every share, hiding the most-weighted patches costs more")


def test_summary_says_when_the_map_does_not_single_out_evidence():
    common = dict(map_name="m", images=100, patches=64, counts=(4, 8), unmasked=0.8, least=(0.8, 0.8))
    flat = MaskingResult(most=(0.75, 0.70), random_mean=(0.75, 0.71), random_std=(0.01, 0.01), **common)
    assert flat.summary().startswith("Hiding the most-weighted patches costs no clearly larger drop")
    mixed = MaskingResult(most=(0.75, 0.60), random_mean=(0.75, 0.70), random_std=(0.01, 0.01), **common)
    assert "only at some shares (12%)" in mixed.summary()
    noisy = MaskingResult(most=(0.70, 0.60), random_mean=(0.75, 0.70), random_std=(0.05, 0.05), **common)
    assert noisy.summary().startswith("Hiding the most-weighted patches costs no clearly larger drop")


def test_masking_test_works_on_another_module_and_rejects_bad_arguments():
    model = cait.build_model(**cait.PROFILES["smoke"].model)
    images, labels = uint8_images(4, size=32), np.zeros(4, int)
    name = next(iter(cait.analyze(model, images[:1]).maps))
    result = masking_test(model, cait.analyze, name, images, labels, fractions=(0.25,), repeats=1)
    assert result.patches == 16 and result.counts == (4,)
    with pytest.raises(ValueError, match="no map 'nope'"):
        masking_test(model, cait.analyze, "nope", images, labels)
    with pytest.raises(ValueError, match=r"fractions must be shares of the patches in \(0, 1\]"):
        masking_test(model, cait.analyze, name, images, labels, fractions=(0.0,))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        masking_test(model, cait.analyze, name, images, labels[:3])


def test_rank_patches_averages_the_items_and_puts_the_heaviest_first():
    values = np.zeros((2, 2, 2, 3))  # 2 images, 2 heads, a 2 x 3 grid
    values[0, 0, 1, 2] = 4.0  # image 0: cell 5 by far the heaviest in head 0 ...
    values[0, 1, 0, 1] = 3.0  # ... cell 1 next, in head 1 only
    values[1, :, 0, 0] = -1.0  # image 1: cell 0 the lightest, the others tied at 0
    ranking = rank_patches(values)
    assert ranking.shape == (2, 6)
    assert list(ranking[0, :2]) == [5, 1]
    assert list(ranking[1]) == [1, 2, 3, 4, 5, 0]  # ties keep the row-major order
