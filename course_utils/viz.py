"""Plots and the interactive map explorer shared by the course notebooks.

Only numpy, matplotlib and PIL are imported here; ipywidgets and IPython are imported inside
the functions that need them, so tests and CI run without any notebook frontend.
"""

import importlib.util
import io
import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageOps

from course_utils.analysis import MapSet, numbered
from course_utils.data import CLASS_NAMES as CIFAR10_CLASSES
from course_utils.data import eight_bit

MEAN_OF_ALL = -1  # item-dropdown value meaning "average over every head / token / gate"
MAX_STATIC_ITEMS = 8  # more single-item columns than this is unreadable in a static figure
STATIC_TITLE_WIDTH = 18  # characters per line of a static column title
UNSIGNED_CMAP = "inferno"  # weights and norms: dark = 0
SIGNED_CMAP = "RdBu_r"  # gates: white = 0, red positive, blue negative
RIGHT, WRONG = "\u2713", "\u2717"  # check mark and ballot x, after a prediction
LAYOUT_PAD = 0.08  # inches of space constrained layout keeps around each panel and its text


def upsample(heatmap, size):
    """Resize a coarse (h, w) map to (size, size), or to (H, W) when size is a tuple, bilinearly."""
    height, width = (size, size) if np.isscalar(size) else size
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32))  # float32 2-D -> mode "F"
    return np.asarray(image.resize((int(width), int(height)), Image.BILINEAR))


def map_scale(values, signed=False):
    """``(vmin, vmax, cmap)`` that draw ``values`` on an absolute scale.

    Weights and norms (``signed=False``) run from 0 (or their minimum, if negative) to their maximum in
    ``inferno``, so a map that is weak everywhere looks dark instead of being stretched to full range;
    signed values such as gates get ``RdBu_r`` centred on 0 (red positive, blue negative). Pass all the
    maps that should share one scale (a figure column, all frames of a run) at once.
    """
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    if signed:
        top = float(np.abs(finite).max()) if finite.size else 0.0
        top = top if top > 0 else 1.0
        return -top, top, SIGNED_CMAP
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 1.0
    return low, (high if high > low else low + 1.0), UNSIGNED_CMAP


def overlay(ax, image, heatmap, alpha=0.5, title=None, signed=False, scale=None):
    """Draw a uint8 image with the upsampled heatmap on top; return the heatmap's ``AxesImage``.

    ``scale`` is ``(vmin, vmax, cmap)`` from :func:`map_scale`, shared by maps that are compared; by
    default the map's own absolute scale. Pass the returned image to ``fig.colorbar`` for a colour bar.
    """
    image = np.asarray(image)
    vmin, vmax, cmap = scale or map_scale(heatmap, signed)
    ax.imshow(image)
    drawn = ax.imshow(upsample(heatmap, image.shape[:2]), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")
    return drawn


def _constrained(fig):
    """Give a constrained-layout figure room around its text, so titles never touch or leave the figure."""
    fig.get_layout_engine().set(w_pad=LAYOUT_PAD, h_pad=LAYOUT_PAD)
    return fig


def _colorbar(fig, drawn, axes, fontsize=6):
    """A thin colour bar under ``axes``, labelled only at its two ends (no crowded ticks)."""
    bar = fig.colorbar(drawn, ax=axes, orientation="horizontal", location="bottom", fraction=0.05, pad=0.02,
                       aspect=12)
    low, high = drawn.get_clim()
    bar.set_ticks([low, high])
    bar.set_ticklabels([f"{low:.2g}", f"{high:.2g}"])
    bar.ax.tick_params(labelsize=fontsize, length=2)
    return bar


def _label_vector(labels, count, what="labels"):
    """Flatten (N,) / (N, 1) class ids, or argmax (N, C) scores, checking there are `count` of them."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(-1).astype(int)
    if len(labels) != count:
        raise ValueError(f"expected {count} {what} (one per image), got {len(labels)}")
    return labels


def _check_images(images):
    """Return images as a (N, H, W, 3) uint8 array or say what was expected."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def image_grid(images, labels=None, class_names=None, ncols=8, predictions=None):
    """Small grid of uint8 images titled by true label (and prediction: green right, red wrong)."""
    images = _check_images(images)
    class_names = list(class_names or CIFAR10_CLASSES)
    labels = None if labels is None else _label_vector(labels, len(images))
    predictions = None if predictions is None else _label_vector(predictions, len(images), "predictions")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows), squeeze=False)
    for ax in axes.flat[len(images):]:
        fig.delaxes(ax)  # the last row may be partly empty
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image)
        ax.axis("off")
        title, color = _grid_title(i, labels, predictions, class_names)
        ax.set_title(title, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def _grid_title(i, labels, predictions, class_names):
    """Title and color of one grid cell: true label, then the prediction, green if right, red if wrong."""
    lines = [] if labels is None else [class_names[labels[i]]]
    lines += [] if predictions is None else [f"pred: {class_names[predictions[i]]}"]
    judged = labels is not None and predictions is not None
    return "\n".join(lines), ("black" if not judged else "green" if labels[i] == predictions[i] else "red")


def plot_history(histories, metrics=("loss", "accuracy")):
    """One subplot per metric, one color per model: training solid, validation dashed."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        for i, (name, history) in enumerate(histories.items()):
            history = getattr(history, "history", history)  # accept a keras History object too
            color = colors[i % len(colors)]
            for key, style, label in ((metric, "-", name), (f"val_{metric}", "--", f"{name} (val)")):
                if key in history:
                    epochs = np.arange(1, len(history[key]) + 1)
                    ax.plot(epochs, history[key], linestyle=style, color=color, label=label, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.25"
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def uploaded_images(value):
    """PIL RGB images from a FileUpload value, in either ipywidgets format.

    ipywidgets 7: {filename: {"metadata": {...}, "content": bytes}};
    ipywidgets 8: a tuple of {"name": ..., "content": memoryview, ...}.
    """
    files = list(value.items()) if isinstance(value, dict) else [(f.get("name", "?"), f) for f in value]
    images = []
    for name, file in files:
        try:  # every decoding step: PIL reads pixels lazily, so a broken file can fail at any of them
            image = eight_bit(ImageOps.exif_transpose(Image.open(io.BytesIO(bytes(file["content"])))))
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            images.append(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"{name!r} is not an image PIL can read ({error})") from error
    return images


def fit_image(image, height, width):
    """Centre-crop a PIL image to the target aspect ratio and resize it: (height, width, 3) uint8."""
    # Cropping rather than squashing keeps an uploaded photo's proportions, like the training images.
    return np.asarray(ImageOps.fit(image.convert("RGB"), (width, height), Image.BICUBIC), dtype=np.uint8)


def _in_kernel():
    """True inside a Jupyter / Colab kernel; False in plain Python and terminal IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return hasattr(get_ipython(), "kernel")


def _use_static(static):
    """Static figure if forced, if COURSE_UTILS_STATIC=1, outside a kernel, or without ipywidgets."""
    if static is not None:
        return bool(static)
    if os.environ.get("COURSE_UTILS_STATIC") == "1" or not _in_kernel():
        return True
    return importlib.util.find_spec("ipywidgets") is None


def _show_static(fig):
    """Show a figure once in a notebook; elsewhere leave it to the caller, who gets it returned."""
    if _in_kernel():
        from IPython.display import display

        display(fig)
        plt.close(fig)  # otherwise the inline backend draws it a second time at the end of the cell


def _run_analyze(analyze, batch, num_classes):
    """Call analyze(batch) and check what it returned, so a mistake is reported where it is made.

    Returns the probabilities and ``{name: MapSet}``; a plain ``(B, K, h, w)`` array (a learner's own
    analyze function) becomes a MapSet whose item is the map's name, or "item 1", "item 2", ... when there are several.
    """
    probabilities, maps = analyze(batch)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape != (len(batch), num_classes):
        raise ValueError(f"analyze() must return probabilities of shape (B={len(batch)}, "
                         f"num_classes={num_classes}), got {probabilities.shape}")
    if not isinstance(maps, dict) or not maps:
        raise ValueError("analyze() must return a non-empty dict: map name -> MapSet or (B, K, h, w) array")
    checked = {}
    for name, value in maps.items():
        if not isinstance(value, MapSet):
            value = np.asarray(value, dtype=np.float32)
            if value.ndim != 4:
                raise ValueError(f"map {name!r} must have shape (B={len(batch)}, K, h, w), got {value.shape}")
            value = MapSet(value, (name,) if value.shape[1] == 1 else numbered("item", value.shape[1]))
        if value.batch_size != len(batch):
            raise ValueError(f"map {name!r} must have shape (B={len(batch)}, K, h, w), got {value.values.shape}")
        checked[name] = value
    return probabilities, checked


def _prediction_title(probabilities, class_names, label=None):
    """'pred: dog 71%', with the true class and a check mark or cross when the label is known."""
    best = int(np.argmax(probabilities))
    predicted = f"pred: {class_names[best]} {probabilities[best]:.0%}"
    if label is None:
        return predicted
    return f"true: {class_names[label]}\n{predicted} {RIGHT if best == label else WRONG}"


def explore(analyze, images, labels=None, class_names=None, title=None, static=None, index=0, max_static_images=3):
    """Explore predictions and maps of `images`: widgets in a live notebook, a static figure elsewhere.

    analyze(batch uint8 (B, H, W, 3)) -> (probabilities (B, C), {map name: MapSet or (B, K, h, w)}).
    The static figure shows ``max_static_images`` images from ``index`` on; when ``labels`` are given it
    picks them so that right and wrong predictions both appear (when both occur among the next few images).
    Returns the top-level widget (already displayed) or the matplotlib Figure.
    """
    images = _check_images(images)
    class_names = list(class_names or CIFAR10_CLASSES)
    labels = None if labels is None else _label_vector(labels, len(images))
    if not 0 <= index < len(images):
        raise ValueError(f"index must be in [0, {len(images) - 1}] for {len(images)} images, got {index}")
    if max_static_images < 1:
        raise ValueError(f"max_static_images must be at least 1, got {max_static_images}")
    if not _use_static(static):
        from IPython.display import display

        widget = _Explorer(analyze, images, labels, class_names, title, index).widget
        display(widget)
        return widget
    pool_size = max_static_images if labels is None else STATIC_POOL_FACTOR * max_static_images
    pool = images[index:index + pool_size]
    probabilities, maps = _run_analyze(analyze, pool, len(class_names))
    rows = _static_rows(probabilities, None if labels is None else labels[index:index + len(pool)], max_static_images)
    maps = {name: MapSet(value.values[rows], value.items, value.signed, value.description) for name, value in maps.items()}
    row_labels = None if labels is None else labels[index:index + len(pool)][rows]
    fig = _static_explorer_figure(pool[rows], probabilities[rows], maps, class_names, row_labels, title)
    _show_static(fig)
    return fig


STATIC_POOL_FACTOR = 4  # the static figure looks this many times further ahead for a wrong prediction


def _static_rows(probabilities, labels, count):
    """Indices of the images the static figure shows: the first ``count``, with a right and a wrong one if possible."""
    rows = list(range(min(count, len(probabilities))))
    if labels is None or len(rows) < 2:
        return rows
    right = probabilities.argmax(axis=1) == labels
    for wanted in (False, True):  # all right: swap the last row for the first wrong one (and vice versa)
        if not any(right[row] == wanted for row in rows):
            candidate = next((row for row in range(len(right)) if right[row] == wanted), None)
            if candidate is not None:
                rows = rows[:-1] + [candidate]
    return rows


def _static_explorer_figure(batch, probabilities, maps, class_names, labels, title):
    """Rows = images; columns = the input, then one overlay column per entry of :func:`_static_columns`.

    Each overlay column shares one absolute scale over its rows, with a colour bar under it; the input
    column names the true and predicted class under each image.
    """
    columns = _static_columns(maps)
    ncols = 1 + len(columns)
    fig, axes = plt.subplots(len(batch), ncols, figsize=(1.55 * ncols, 1.75 * len(batch) + 0.9), squeeze=False,
                             layout="constrained")
    _constrained(fig)
    for row, image in enumerate(batch):
        label = None if labels is None else labels[row]
        axes[row, 0].imshow(image)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        axes[row, 0].set_xlabel(_prediction_title(probabilities[row], class_names, label), fontsize=7)
    axes[0, 0].set_title("input", fontsize=8)
    for column, (heading, name, item) in enumerate(columns, start=1):
        value = maps[name]
        per_image = value.values.mean(axis=1) if item is None else value.values[:, item]
        scale = map_scale(per_image, value.signed)
        for row, image in enumerate(batch):
            heading_text = textwrap.fill(heading, STATIC_TITLE_WIDTH) if row == 0 else None
            drawn = overlay(axes[row, column], image, per_image[row], title=heading_text, scale=scale)
        _colorbar(fig, drawn, axes[:, column])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _static_columns(maps):
    """``(heading, map name, item index or None for the mean)`` of each overlay column.

    The first map shows its items (up to ``MAX_STATIC_ITEMS``) and, when they are weights that can be
    averaged, their mean; a later map shows its mean, or its items when it is signed (a mean of gates of
    opposite sign would hide both). A map with one item is one column titled by the map's name.
    """
    columns = []
    for position, (name, value) in enumerate(maps.items()):
        count = len(value.items)
        if count == 1:
            columns.append((name, name, 0))
            continue
        if position == 0 or value.signed:
            columns += [(f"{name} \u00b7 {value.items[k]}", name, k) for k in range(min(count, MAX_STATIC_ITEMS))]
        if not value.signed:
            columns.append((f"{name} \u00b7 mean of {count}", name, None))
    return columns


def _redraw(output, make_figure):
    """Replace the contents of an Output widget with a freshly drawn figure."""
    from IPython.display import display

    with output:
        output.clear_output(wait=True)  # wait=True avoids flicker between the old and new figure
        fig = make_figure()
        display(fig)
        plt.close(fig)


class _Explorer:
    """State and widgets behind explore(): caches analyze() for the image on screen."""

    def __init__(self, analyze, images, labels, class_names, title, index):
        import ipywidgets as widgets

        self.analyze, self.images, self.labels, self.class_names = analyze, images, labels, class_names
        self._holding = True  # no redraws while the widgets are being wired up
        self.index_slider = widgets.IntSlider(value=index, min=0, max=len(images) - 1, description="image",
                                              continuous_update=False)  # analyze only where the drag ends
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="your image")
        self.item_dropdown = widgets.Dropdown(description="item")
        self.opacity_slider = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity",
                                                  continuous_update=False)  # each redraw takes a moment
        self.status = widgets.Label()
        self.output = widgets.Output()
        self.show_test_image(index)  # the first analysis tells which maps there are
        self.map_dropdown = widgets.Dropdown(options=list(self.maps), value=next(iter(self.maps)), description="show")
        self._update_items()
        self.index_slider.observe(lambda change: self.show_test_image(change["new"]), names="value")
        self.upload.observe(lambda change: self.show_upload(change["new"]), names="value")
        self.map_dropdown.observe(lambda change: self._update_items(), names="value")
        for control in (self.item_dropdown, self.opacity_slider):
            control.observe(lambda change: self.render(), names="value")
        rows = [widgets.HTML(f"<h3>{title}</h3>")] if title else []
        rows += [widgets.HBox([self.index_slider, self.upload]),
                 widgets.HBox([self.map_dropdown, self.item_dropdown, self.opacity_slider]), self.status, self.output]
        self.widget = widgets.VBox(rows)
        self.widget.explorer = self  # lets tests and curious learners reach the state
        self._holding = False
        self.render()

    def _analyze_one(self, image, label, source, hint=""):
        """Run analyze() once for the image now on screen and keep the result."""
        probabilities, maps = _run_analyze(self.analyze, image[None], len(self.class_names))
        self.image, self.label, self.source, self.probabilities = image, label, source, probabilities[0]
        self.maps = {name: value.values[0] for name, value in maps.items()}
        self.items = {name: value.items for name, value in maps.items()}
        self.signed = {name: value.signed for name, value in maps.items()}
        self.status.value = hint
        self.render()

    def show_test_image(self, index):
        """Back to (or on to) test image `index`."""
        label = None if self.labels is None else self.labels[index]
        self._analyze_one(self.images[index], label, f"test image {index}")

    def show_upload(self, value):
        """Analyze the first uploaded file, fitted to the size of the test images."""
        try:
            uploaded = uploaded_images(value)
        except ValueError as error:
            self.status.value = str(error)
            return
        if uploaded:
            image = fit_image(uploaded[0], *self.images.shape[1:3])
            self._analyze_one(image, None, "your image", "move the image slider to go back to the test images")

    def _update_items(self):
        """Offer each item of the chosen map (its count may differ per map), and 'mean of all' for several weights."""
        name, holding = self.map_dropdown.value, self._holding
        self._holding = True  # changing options fires value events; draw once at the end
        items = [(label, k) for k, label in enumerate(self.items[name])]
        averaged = len(items) > 1 and not self.signed[name]  # a mean of signed gates would hide both signs
        self.item_dropdown.options = [("mean of all", MEAN_OF_ALL)] + items if averaged else items
        self.item_dropdown.value = self.item_dropdown.options[0][1]
        self._holding = holding
        self.render()

    def selected_map(self):
        """The (h, w) map picked by the two dropdowns."""
        maps = self.maps[self.map_dropdown.value]
        item = self.item_dropdown.value
        return maps.mean(axis=0) if item in (None, MEAN_OF_ALL) else maps[item]

    def figure(self):
        """Input image, selected overlay and class-probability bars, side by side."""
        fig, (image_ax, overlay_ax, bar_ax) = plt.subplots(1, 3, figsize=(11, 3.6), layout="constrained",
                                                           gridspec_kw={"width_ratios": [1, 1, 1.4]})
        _constrained(fig)
        image_ax.imshow(self.image)
        image_ax.set_title(self.source)
        image_ax.axis("off")
        name = self.map_dropdown.value
        heading = name if len(self.items[name]) == 1 else f"{name} \u00b7 {self.item_dropdown.label}"
        drawn = overlay(overlay_ax, self.image, self.selected_map(), alpha=self.opacity_slider.value,
                        title=textwrap.fill(heading, 40), signed=self.signed[name])
        _colorbar(fig, drawn, overlay_ax, fontsize=8)
        best = int(np.argmax(self.probabilities))
        colors = ["tab:orange" if c == best else "tab:gray" for c in range(len(self.class_names))]
        bar_ax.barh(self.class_names, self.probabilities, color=colors)
        bar_ax.invert_yaxis()  # class 0 on top, in reading order
        bar_ax.set_xlim(0, 1)
        bar_ax.set_title(_prediction_title(self.probabilities, self.class_names, self.label).replace("\n", "  "))
        return fig

    def render(self):
        """Redraw the output area unless the widgets are being changed in bulk."""
        if not self._holding:
            _redraw(self.output, self.figure)


def plot_maps_over_time(frames, images, frame_labels, alpha=0.6, row_labels=None, signed=False):
    """Rows = images, columns = frames (T arrays of (B, h, w)) titled by ``frame_labels``.

    Every panel shares one absolute scale (colour bar at the bottom), so a map that fades or sharpens
    from one frame to the next shows it. Frames may differ in grid (a model with larger patches next to
    one with smaller). ``row_labels`` name the rows (default "image 1", ...).
    """
    images = _check_images(images)
    frames = _check_frames(frames, images, frame_labels)
    row_labels = [f"image {row + 1}" for row in range(len(images))] if row_labels is None else list(row_labels)
    if len(row_labels) != len(images):
        raise ValueError(f"expected one row label per image ({len(images)}), got {len(row_labels)}")
    scale = map_scale(np.concatenate([frame.ravel() for frame in frames]), signed)
    fig, axes = plt.subplots(len(images), len(frames), figsize=(1.6 * len(frames) + 0.8, 1.6 * len(images) + 0.7),
                             squeeze=False, layout="constrained")
    _constrained(fig)
    for row, image in enumerate(images):
        for column, frame in enumerate(frames):
            title = textwrap.fill(str(frame_labels[column]), STATIC_TITLE_WIDTH) if row == 0 else None
            drawn = overlay(axes[row, column], image, frame[row], alpha=alpha, title=title, scale=scale)
            if column == 0:  # axis("off") would hide the label: keep the frame, drop the ticks
                axes[row, 0].axis("on")
                axes[row, 0].set_xticks([])
                axes[row, 0].set_yticks([])
                axes[row, 0].set_ylabel(textwrap.fill(str(row_labels[row]), 14), fontsize=7)
    _colorbar(fig, drawn, axes[-1, :], fontsize=7)
    return fig


def _check_frames(frames, images, frame_labels):
    frames = [np.asarray(frame, dtype=np.float32) for frame in frames]
    if len(frame_labels) != len(frames):
        raise ValueError(f"expected one frame label per frame ({len(frames)}), got {len(frame_labels)}")
    for frame in frames:
        if frame.ndim != 3 or frame.shape[0] != len(images):
            raise ValueError(f"each frame must have shape (B={len(images)}, h, w), got {frame.shape}")
    return frames


def explore_over_time(frames, images, frame_labels, static=None, row_labels=None, signed=False):
    """Sliders over time and image in a live notebook; the :func:`plot_maps_over_time` figure elsewhere.

    Both share one absolute scale over all frames and images, so the slider shows maps fading or sharpening.
    """
    fig = plot_maps_over_time(frames, images, frame_labels, row_labels=row_labels, signed=signed)  # validates
    if _use_static(static):
        _show_static(fig)
        return fig
    plt.close(fig)
    import ipywidgets as widgets
    from IPython.display import display

    frames = _check_frames(frames, images, frame_labels)
    scale = map_scale(np.concatenate([frame.ravel() for frame in frames]), signed)
    time_slider = widgets.IntSlider(value=len(frames) - 1, min=0, max=len(frames) - 1, description="time")
    image_slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    output = widgets.Output()

    def draw():
        figure, ax = plt.subplots(figsize=(3, 3.6), layout="constrained")
        t, i = time_slider.value, image_slider.value
        drawn = overlay(ax, np.asarray(images)[i], frames[t][i], alpha=0.6, title=frame_labels[t], scale=scale)
        _colorbar(figure, drawn, ax, fontsize=8)
        return figure

    for slider in (time_slider, image_slider):
        slider.observe(lambda change: _redraw(output, draw), names="value")
    box = widgets.VBox([widgets.HBox([time_slider, image_slider]), output])
    _redraw(output, draw)
    display(box)
    return box
