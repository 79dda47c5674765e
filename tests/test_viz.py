"""Tests for course_utils.viz: plots, the static explorer and the widget explorer (no browser needed)."""

import datetime
import io
import struct
import zlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from course_utils import viz  # noqa: E402
from course_utils.analysis import MapSet  # noqa: E402

widgets = pytest.importorskip("ipywidgets")


@pytest.fixture(autouse=True)
def close_figures(monkeypatch):
    """Start every test without the course runner's variable, and leak no figures between tests."""
    monkeypatch.delenv("COURSE_UTILS_STATIC", raising=False)
    yield
    plt.close("all")


def make_images(count=5, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


class CountingAnalyze:
    """Fake analyze(): deterministic probabilities and maps of given (K, h, w) shapes; records every batch."""

    def __init__(self, map_shapes=None, num_classes=10):
        self.map_shapes = map_shapes or {"token": (4, 4, 4)}
        self.num_classes = num_classes
        self.batches = []

    def __call__(self, batch):
        self.batches.append(np.array(batch))
        logits = batch.reshape(len(batch), -1)[:, : self.num_classes].astype(np.float32)
        probabilities = np.exp(logits / 100) / np.exp(logits / 100).sum(axis=1, keepdims=True)
        maps = {name: np.random.default_rng(1).random((len(batch), *shape)) for name, shape in self.map_shapes.items()}
        return probabilities, maps


def grid_shape(fig):
    """(rows, columns) of the subplot grid a figure was made with."""
    return fig.axes[0].get_subplotspec().get_gridspec().get_geometry()


def panels(fig):
    """The axes that show an image (not the colour bars), in creation order."""
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def drawn_tick_labels(axis):
    """The tick labels matplotlib draws: those of ticks inside the axis's view (it makes a few more)."""
    low, high = sorted(axis.get_view_interval())
    span = high - low
    ticks = axis.get_major_ticks()[: len(axis.get_majorticklocs())]
    return [tick.label1 for tick in ticks if low - 1e-6 * span <= tick.get_loc() <= high + 1e-6 * span]


def assert_no_text_overlaps(fig):
    """Every visible, non-empty text of the drawn figure lies inside it and overlaps no other text."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts.append(ax.title)
        if ax.axison:  # an axis switched off draws neither its labels nor its tick labels
            texts += [ax.xaxis.label, ax.yaxis.label, *drawn_tick_labels(ax.xaxis), *drawn_tick_labels(ax.yaxis)]
    texts = [text for text in texts if text.get_visible() and text.get_text().strip()]
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in texts]
    width, height = fig.canvas.get_width_height()
    for label, box in boxes:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, f"{label!r} is cut off"
    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            (label_a, a), (label_b, b) = boxes[first], boxes[second]
            assert not a.overlaps(b), f"{label_a!r} overlaps {label_b!r}"
    return len(boxes)


def all_widgets(root):
    """Every widget in a widget tree, depth first."""
    yield root
    for child in getattr(root, "children", ()):
        yield from all_widgets(child)


def widgets_of_type(root, widget_type):
    return [w for w in all_widgets(root) if type(w) is widget_type]


def png_bytes(width, height, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "red" if mode != "L" else 128).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_value_v7(content, name="photo.png"):
    return {name: {"metadata": {"name": name, "type": "image/png", "size": len(content)}, "content": content}}


def upload_value_v8(content, name="photo.png"):
    return ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)


# --- small plotting helpers -------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [(32, (32, 32)), ((24, 40), (24, 40))])
def test_upsample_shape(size, expected):
    assert viz.upsample(np.random.default_rng(0).random((4, 4)), size).shape == expected


def test_upsample_preserves_a_constant_map_and_interpolates_between_values():
    np.testing.assert_allclose(viz.upsample(np.full((8, 8), 0.3), 32), 0.3, atol=1e-6)
    ramp = viz.upsample(np.array([[0.0, 1.0]]), (1, 8))[0]
    assert ramp[0] < ramp[3] < ramp[4] < ramp[-1]  # bilinear: monotone, not nearest-neighbour blocks
    assert len(np.unique(ramp)) > 2


def test_map_scale_is_absolute_from_zero_for_weights_and_centred_for_signed_values():
    assert viz.map_scale(np.array([[0.01, 0.02], [0.03, 0.04]])) == (0.0, pytest.approx(0.04), viz.UNSIGNED_CMAP)
    assert viz.map_scale(np.array([-3.0, 1.0]), signed=True) == (-3.0, 3.0, viz.SIGNED_CMAP)
    low, high, _ = viz.map_scale(np.zeros((3, 3)))
    assert high > low  # a blank map still gets a valid scale
    low, high, _ = viz.map_scale(np.array([-2.0, 5.0]))
    assert (low, high) == (-2.0, 5.0)  # an unsigned map with negative values is not clipped


def test_overlay_draws_image_and_upsampled_map():
    fig, ax = plt.subplots()
    viz.overlay(ax, make_images(1)[0], np.random.default_rng(0).random((4, 4)), alpha=0.3, title="x")
    image_layer, map_layer = ax.get_images()
    assert map_layer.get_array().shape == (32, 32)
    assert map_layer.get_alpha() == 0.3 and ax.get_title() == "x" and not ax.axison


def test_image_grid_has_one_axis_per_image_and_colors_predictions():
    fig = viz.image_grid(make_images(10), labels=np.arange(10).reshape(10, 1), ncols=4,
                         predictions=[0, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    assert fig.axes[0].title.get_color() == "green"
    assert fig.axes[9].title.get_color() == "red" and "truck" in fig.axes[9].get_title()


def test_plot_history_one_solid_and_one_dashed_line_per_model_per_metric():
    history = {"loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.3, 0.6, 0.8],
               "val_accuracy": [0.2, 0.5, 0.7]}
    fig = viz.plot_history({"ViT": history, "CaiT": history})
    assert len(fig.axes) == 2
    for ax in fig.axes:
        styles = [line.get_linestyle() for line in ax.get_lines()]
        assert sorted(styles) == ["-", "-", "--", "--"]
        assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]
        colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
        assert colors["ViT"] == colors["ViT (val)"] != colors["CaiT"]


# --- explore: static mode ---------------------------------------------------------------------


def test_explore_static_has_input_items_and_mean_columns_and_analyzes_one_batch():
    images, analyze = make_images(6), CountingAnalyze({"token": (4, 4, 4)})
    fig = viz.explore(analyze, images, labels=np.arange(6), static=True, index=2)
    assert isinstance(fig, Figure)
    assert grid_shape(fig) == (3, 1 + 4 + 1) and len(panels(fig)) == 18
    assert len(colour_bars(fig)) == 5  # one absolute scale per overlay column
    assert len(analyze.batches) == 1  # the images from `index` on, to find right and wrong predictions
    np.testing.assert_array_equal(analyze.batches[0], images[2:6])
    assert "true: " in panels(fig)[0].get_xlabel()


def test_explore_static_adds_one_mean_column_per_other_map_and_caps_items():
    analyze = CountingAnalyze({"block 1": (12, 8, 8), "block 2": (3, 4, 4)})
    fig = viz.explore(analyze, make_images(2), static=True, max_static_images=3)
    assert grid_shape(fig) == (2, 1 + viz.MAX_STATIC_ITEMS + 1 + 1)
    assert panels(fig)[-1].get_title() == ""  # column titles only on the first row
    titles = [ax.get_title().replace("\n", " ") for ax in panels(fig)[8:11]]
    assert titles == ["block 1 · item 8", "block 1 · mean of 12", "block 2 · mean of 3"]


def test_explore_static_wraps_long_column_titles():
    long_name = "slow-stream attention, all chunks"
    fig = viz.explore(CountingAnalyze({long_name: (1, 4, 4)}), make_images(1), static=True)
    title = panels(fig)[1].get_title()
    assert title.replace("\n", " ") == long_name
    assert max(len(line) for line in title.splitlines()) <= viz.STATIC_TITLE_WIDTH < len(long_name)


def fixed_analyze(predicted, maps):
    """analyze() that predicts class ``predicted[i]`` for the i-th image of the whole set and returns ``maps``."""

    def analyze(batch):
        indices = batch[:, 0, 0, 0].astype(int)  # the test images carry their index in one pixel
        probabilities = np.full((len(batch), 10), 0.05, dtype=np.float32)
        probabilities[np.arange(len(batch)), np.asarray(predicted)[indices]] = 0.55
        return probabilities, {name: MapSet(value(len(batch)), items, signed) for name, (value, items, signed) in maps.items()}

    return analyze


def indexed_images(count):
    images = make_images(count)
    images[:, 0, 0, 0] = np.arange(count)
    return images


def test_static_figure_shows_a_right_and_a_wrong_prediction_and_marks_them():
    labels = np.arange(12) % 10
    predicted = labels.copy()
    predicted[7] = (labels[7] + 1) % 10  # only image 7 is misclassified
    maps = {"attention": (lambda n: np.random.default_rng(0).random((n, 2, 4, 4)), ("head 1", "head 2"), False)}
    fig = viz.explore(fixed_analyze(predicted, maps), indexed_images(12), labels=labels, static=True)
    inputs = [ax.get_xlabel() for ax in panels(fig)[::4]]
    assert len(inputs) == 3
    assert sum(viz.WRONG in label for label in inputs) == 1 and sum(viz.RIGHT in label for label in inputs) == 2
    assert f"true: {viz.CIFAR10_CLASSES[labels[7]]}" in inputs[-1]


def test_static_figure_draws_signed_maps_centred_on_zero_without_a_mean_and_weights_from_zero():
    gates = lambda n: np.stack([np.full((n, 4, 4), -2.0), np.full((n, 4, 4), 1.0)], axis=1)  # noqa: E731
    weights = lambda n: np.full((n, 3, 4, 4), 0.01)  # noqa: E731
    maps = {"gates": (gates, ("level 1", "global"), True), "attention": (weights, ("h1", "h2", "h3"), False)}
    fig = viz.explore(fixed_analyze(np.zeros(3, int), maps), indexed_images(3), static=True)
    titles = [ax.get_title().replace("\n", " ") for ax in panels(fig)[1:4]]
    assert titles == ["gates · level 1", "gates · global", "attention · mean of 3"]  # no mean of signed gates
    level_1, global_gate, attention = (panels(fig)[k].get_images()[1] for k in (1, 2, 3))
    assert level_1.get_clim() == (-2.0, 2.0) and level_1.get_cmap().name == viz.SIGNED_CMAP
    assert global_gate.get_clim() == (-1.0, 1.0)
    # weak attention stays weak: its scale starts at 0 instead of stretching 0.01 to full brightness
    assert attention.get_clim()[0] == 0.0 and attention.get_cmap().name == viz.UNSIGNED_CMAP


@pytest.mark.parametrize("rows", [1, 3, 6])
def test_static_explorer_text_never_overlaps(rows):
    maps = {"class attention, block 1": (lambda n: np.random.default_rng(1).random((n, 4, 8, 8)),
                                         ("head 1", "head 2", "head 3", "head 4"), False),
            "stage 0 gates": (lambda n: np.random.default_rng(2).normal(size=(n, 3, 8, 8)),
                              ("level 1", "level 2", "global"), True),
            "stage 0 modulator norm": (lambda n: np.random.default_rng(3).random((n, 1, 8, 8)), ("norm",), False)}
    labels = np.arange(20) % 10
    fig = viz.explore(fixed_analyze((labels + 1) % 10, maps), indexed_images(20), labels=labels, static=True,
                      max_static_images=rows, title="a long title for the whole figure, as a notebook gives it")
    assert assert_no_text_overlaps(fig) > 10


def test_explore_auto_mode_outside_a_kernel_is_static():
    assert isinstance(viz.explore(CountingAnalyze(), make_images(3)), Figure)


class FakeKernelShell:
    kernel = object()


def test_explore_auto_mode_in_a_kernel_uses_widgets_unless_the_env_var_says_static(monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeKernelShell())
    monkeypatch.setattr("IPython.display.display", lambda *objects: None)
    assert isinstance(viz.explore(CountingAnalyze(), make_images(3)), widgets.VBox)
    monkeypatch.setenv("COURSE_UTILS_STATIC", "1")
    assert isinstance(viz.explore(CountingAnalyze(), make_images(3)), Figure)


# --- explore: widget mode ---------------------------------------------------------------------


def make_explorer(map_shapes=None, count=5):
    analyze, images = CountingAnalyze(map_shapes), make_images(count)
    root = viz.explore(analyze, images, labels=np.arange(count), static=False)
    return root, analyze, images


def test_widget_mode_builds_the_controls():
    root, analyze, _ = make_explorer()
    assert isinstance(root, widgets.VBox)
    assert len(widgets_of_type(root, widgets.IntSlider)) == 1
    assert len(widgets_of_type(root, widgets.Dropdown)) == 2
    assert len(widgets_of_type(root, widgets.FloatSlider)) == 1
    (upload,) = widgets_of_type(root, widgets.FileUpload)
    assert upload.accept == "image/*"
    assert len(analyze.batches) == 1  # building the widgets analyzes the first image once


def test_changing_the_map_updates_the_item_options_to_its_count():
    root, _, _ = make_explorer({"block 1": (4, 8, 8), "block 2": (2, 4, 4)})
    map_dropdown, item_dropdown = widgets_of_type(root, widgets.Dropdown)
    assert len(item_dropdown.options) == 1 + 4
    map_dropdown.value = "block 2"
    labels = [label for label, _ in item_dropdown.options]
    assert labels == ["mean of all", "item 1", "item 2"]
    assert item_dropdown.value == viz.MEAN_OF_ALL


def test_only_a_new_image_calls_analyze_again():
    root, analyze, images = make_explorer({"block 1": (4, 8, 8), "block 2": (2, 4, 4)})
    (index_slider,) = widgets_of_type(root, widgets.IntSlider)
    (opacity_slider,) = widgets_of_type(root, widgets.FloatSlider)
    map_dropdown, item_dropdown = widgets_of_type(root, widgets.Dropdown)
    opacity_slider.value = 0.9
    item_dropdown.value = 1
    map_dropdown.value = "block 2"
    assert len(analyze.batches) == 1
    index_slider.value = 3
    assert len(analyze.batches) == 2
    np.testing.assert_array_equal(analyze.batches[-1], images[3:4])


def test_widget_figure_shows_image_selected_overlay_and_probability_bars():
    root, _, _ = make_explorer()
    explorer = root.explorer
    map_dropdown, item_dropdown = widgets_of_type(root, widgets.Dropdown)
    item_dropdown.value = 2
    np.testing.assert_array_equal(explorer.selected_map(), explorer.maps["token"][2])
    fig = explorer.figure()
    image_ax, overlay_ax, bar_ax, colour_bar = fig.axes
    assert overlay_ax.get_title() == "token · item 3" and colour_bar.get_label() == "<colorbar>"
    assert assert_no_text_overlaps(fig) > 10
    bars = bar_ax.patches
    assert len(bars) == 10
    best = int(np.argmax(explorer.probabilities))
    assert [b.get_facecolor() for b in bars].count(bars[best].get_facecolor()) == 1  # only the prediction stands out
    assert "true: airplane" in bar_ax.get_title()


# --- uploads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_value", [upload_value_v7, upload_value_v8], ids=["ipywidgets7", "ipywidgets8"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_uploaded_images_parses_both_formats_into_rgb(make_value, mode):
    (image,) = viz.uploaded_images(make_value(png_bytes(50, 70, mode)))
    assert image.mode == "RGB" and image.size == (50, 70)


@pytest.mark.parametrize("make_value", [upload_value_v7, upload_value_v8], ids=["ipywidgets7", "ipywidgets8"])
def test_upload_path_resizes_to_the_test_image_size_and_slider_goes_back(make_value):
    root, analyze, images = make_explorer()
    explorer = root.explorer
    explorer.show_upload(make_value(png_bytes(50, 70)))
    assert analyze.batches[-1].shape == (1, 32, 32, 3)
    assert explorer.image.shape == (32, 32, 3) and explorer.label is None
    assert np.all(explorer.image == [255, 0, 0])  # the red PNG, not a test image
    (index_slider,) = widgets_of_type(root, widgets.IntSlider)
    index_slider.value = 1
    np.testing.assert_array_equal(explorer.image, images[1])


def test_setting_the_file_upload_value_analyzes_the_upload():
    root, analyze, _ = make_explorer()
    (upload,) = widgets_of_type(root, widgets.FileUpload)
    make_value = upload_value_v7 if widgets.__version__.startswith("7.") else upload_value_v8
    upload.set_trait("value", make_value(png_bytes(50, 70)))  # what the browser does; read-only in ipywidgets 7
    assert len(analyze.batches) == 2 and analyze.batches[-1].shape == (1, 32, 32, 3)
    assert root.explorer.source == "your image"


def test_a_file_that_is_not_an_image_is_reported_not_raised_in_the_widget():
    root, analyze, _ = make_explorer()
    with pytest.raises(ValueError, match="notes.txt"):
        viz.uploaded_images(upload_value_v8(b"hello", name="notes.txt"))
    root.explorer.show_upload(upload_value_v8(b"hello", name="notes.txt"))
    assert "notes.txt" in root.explorer.status.value and len(analyze.batches) == 1


# --- invalid inputs ---------------------------------------------------------------------------


def test_maps_of_the_wrong_rank_are_rejected():
    analyze = CountingAnalyze({"token": (4, 4)})  # (B, 4, 4): K is missing
    with pytest.raises(ValueError, match=r"map 'token' must have shape \(B=3, K, h, w\)"):
        viz.explore(analyze, make_images(3), static=True)


def test_probabilities_of_the_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match=r"probabilities of shape \(B=3, num_classes=10\)"):
        viz.explore(CountingAnalyze(num_classes=5), make_images(3), static=True)


@pytest.mark.parametrize("index", [-1, 5])
def test_index_out_of_range_is_rejected(index):
    with pytest.raises(ValueError, match=r"index must be in \[0, 4\]"):
        viz.explore(CountingAnalyze(), make_images(5), index=index, static=True)


def test_images_and_labels_are_checked():
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, H, W, 3\)"):
        viz.explore(CountingAnalyze(), make_images(3).astype(np.float32), static=True)
    with pytest.raises(ValueError, match="expected 3 labels"):
        viz.explore(CountingAnalyze(), make_images(3), labels=[1, 2], static=True)


# --- maps over time ---------------------------------------------------------------------------


def test_plot_maps_over_time_rows_are_images_and_columns_frames():
    frames = [np.random.default_rng(t).random((3, 4, 4)) * (t + 1) for t in range(4)]
    labels = [f"epoch {5 * (t + 1)}" for t in range(4)]
    fig = viz.plot_maps_over_time(frames, make_images(3), labels, row_labels=["cat", "ship", "frog"])
    assert grid_shape(fig) == (3, 4)
    assert [ax.get_title() for ax in panels(fig)[:4]] == labels
    assert [ax.get_ylabel() for ax in panels(fig)[::4]] == ["cat", "ship", "frog"]
    # one scale for every panel, so growing maps look brighter frame by frame
    limits = {ax.get_images()[1].get_clim() for ax in panels(fig)}
    assert len(limits) == 1 and limits.pop() == (0.0, pytest.approx(float(np.max(frames))))
    assert len(colour_bars(fig)) == 1


@pytest.mark.parametrize("count", [1, 2, 6])
def test_plot_maps_over_time_text_never_overlaps(count):
    frames = [np.random.default_rng(t).random((count, 4, 4)) for t in range(5)]
    labels = [f"epoch {epoch}, {accuracy}% test" for epoch, accuracy in ((1, 31), (5, 52), (20, 68), (60, 77), (120, 81))]
    fig = viz.plot_maps_over_time(frames, make_images(count), labels)
    assert assert_no_text_overlaps(fig) >= 5


def test_plot_maps_over_time_puts_maps_of_different_grids_on_one_scale():
    coarse, fine = np.full((2, 4, 4), 0.5), np.random.default_rng(0).random((2, 8, 8))
    fig = viz.plot_maps_over_time([coarse, fine], make_images(2), ["4 x 4 patches", "8 x 8 patches"])
    assert grid_shape(fig) == (2, 2)
    limits = {ax.get_images()[1].get_clim() for ax in panels(fig)}
    assert len(limits) == 1 and limits.pop() == (0.0, pytest.approx(float(fine.max())))


def test_plot_maps_over_time_rejects_mismatched_frames():
    with pytest.raises(ValueError, match=r"\(B=3, h, w\)"):
        viz.plot_maps_over_time([np.zeros((2, 4, 4))], make_images(3), ["epoch 1"])


def test_explore_over_time_static_and_widget_modes():
    frames = [np.random.default_rng(t).random((3, 4, 4)) for t in range(2)]
    fig = viz.explore_over_time(frames, make_images(3), ["epoch 1", "epoch 2"])
    assert isinstance(fig, Figure) and grid_shape(fig) == (3, 2)
    root = viz.explore_over_time(frames, make_images(3), ["epoch 1", "epoch 2"], static=False)
    sliders = widgets_of_type(root, widgets.IntSlider)
    assert [s.max for s in sliders] == [1, 2]


class MapSetAnalyze(CountingAnalyze):
    """Fake analyze() that returns MapSets, as the model modules' analyze does."""

    def __call__(self, batch):
        probabilities, maps = super().__call__(batch)
        labelled = {}
        for name, values in maps.items():
            items = ("all chunks",) if values.shape[1] == 1 else [f"head {k + 1}" for k in range(values.shape[1])]
            labelled[name] = MapSet(values, items)
        return probabilities, labelled


def test_explorer_names_items_by_their_map_set_labels_and_offers_no_mean_of_a_single_map():
    analyze = MapSetAnalyze({"attention": (3, 4, 4), "summary": (1, 4, 4)})
    root = viz.explore(analyze, make_images(4), static=False)
    map_dropdown, item_dropdown = widgets_of_type(root, widgets.Dropdown)
    assert [label for label, _ in item_dropdown.options] == ["mean of all", "head 1", "head 2", "head 3"]
    map_dropdown.value = "summary"
    assert [label for label, _ in item_dropdown.options] == ["all chunks"]
    np.testing.assert_array_equal(root.explorer.selected_map(), root.explorer.maps["summary"][0])


def test_static_figure_titles_columns_with_map_set_items():
    analyze = MapSetAnalyze({"attention": (2, 4, 4), "summary": (1, 4, 4)})
    fig = viz.explore(analyze, make_images(1), static=True)
    titles = [ax.get_title().replace("\n", " ") for ax in panels(fig)[1:]]
    assert titles == ["attention · head 1", "attention · head 2", "attention · mean of 2", "summary"]


def test_analyze_must_return_one_map_per_image():
    def wrong_batch(batch):
        probabilities = np.full((len(batch), 10), 0.1, dtype=np.float32)
        return probabilities, {"attention": MapSet(np.ones((len(batch) + 1, 1, 4, 4)), ("head 1",))}

    with pytest.raises(ValueError, match="map 'attention' must have shape"):
        viz.explore(wrong_batch, make_images(2), static=True)


@pytest.mark.parametrize("count", [1, 8, 20])
def test_image_grid_and_history_text_never_overlaps(count):
    labels = np.arange(count) % 10
    grid = viz.image_grid(make_images(count), labels=labels, predictions=(labels + 1) % 10)
    assert assert_no_text_overlaps(grid) >= count
    history = {"loss": list(np.linspace(2, 1, count)), "val_loss": list(np.linspace(2.1, 1.2, count)),
               "accuracy": list(np.linspace(0.1, 0.6, count)), "val_accuracy": list(np.linspace(0.1, 0.55, count))}
    assert assert_no_text_overlaps(viz.plot_history({"PatchConvNet": history, "ViT": history})) > 4


def test_a_decompression_bomb_upload_is_reported_in_the_status():
    root, analyze, _ = make_explorer()
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 30000, 30000)  # a few bytes that claim 900 million pixels
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    root.explorer.show_upload(upload_value_v8(bytes(png), name="bomb.png"))
    assert "bomb.png" in root.explorer.status.value and "not an image PIL can read" in root.explorer.status.value
    assert len(analyze.batches) == 1, "nothing may be analyzed"


def test_a_16_bit_grayscale_upload_keeps_its_brightness():
    root, analyze, _ = make_explorer()
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40), 64 * 257, np.uint16)).save(buffer, "PNG")
    root.explorer.show_upload(upload_value_v8(buffer.getvalue(), name="gray16.png"))
    assert np.all(root.explorer.image == 64), "a dark 16-bit image must not turn white"
