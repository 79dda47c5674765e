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

MEAN_OF_ALL = -1  # item-dropdown value meaning "average over every head / token / gate"
MAX_STATIC_ITEMS = 8  # more single-item columns than this is unreadable in a static figure
STATIC_TITLE_WIDTH = 18  # characters per line of a static column title


def upsample(heatmap, size):
    """Resize a coarse (h, w) map to (size, size), or to (H, W) when size is a tuple, bilinearly."""
    height, width = (size, size) if np.isscalar(size) else size
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32))  # float32 2-D -> mode "F"
    return np.asarray(image.resize((int(width), int(height)), Image.BILINEAR))


def normalize_map(heatmap):
    """Scale a map to [0, 1]; a constant map becomes all zeros instead of dividing by zero."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    span = float(heatmap.max() - heatmap.min())
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(heatmap)
    return (heatmap - heatmap.min()) / span


def overlay(ax, image, heatmap, alpha=0.5, cmap="inferno", title=None):
    """Draw a uint8 image with the upsampled, normalised heatmap on top of it."""
    image = np.asarray(image)
    ax.imshow(image)
    ax.imshow(normalize_map(upsample(heatmap, image.shape[:2])), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")


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
        try:
            image = Image.open(io.BytesIO(bytes(file["content"])))
            image = ImageOps.exif_transpose(image)  # phone photos are often stored sideways
        except OSError as error:
            raise ValueError(f"{name!r} is not an image PIL can read ({error})") from error
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        images.append(image.convert("RGB"))
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
    analyze function) becomes a MapSet whose items are the map's name, numbered when there are several.
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
            value = MapSet(value, (name,) if value.shape[1] == 1 else numbered(name, value.shape[1]))
        if value.batch_size != len(batch):
            raise ValueError(f"map {name!r} must have shape (B={len(batch)}, K, h, w), got {value.values.shape}")
        checked[name] = value
    return probabilities, checked


def _prediction_title(probabilities, class_names, label=None):
    """'true: cat / pred: dog 71%' (the first part only when the label is known)."""
    best = int(np.argmax(probabilities))
    predicted = f"pred: {class_names[best]} {probabilities[best]:.0%}"
    return predicted if label is None else f"true: {class_names[label]}\n{predicted}"


def explore(analyze, images, labels=None, class_names=None, title=None, static=None, index=0, max_static_images=3):
    """Explore predictions and maps of `images`: widgets in a live notebook, a static figure elsewhere.

    analyze(batch uint8 (B, H, W, 3)) -> (probabilities (B, C), {map name: (B, K, h, w)}).
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
    batch = images[index:index + max_static_images]
    probabilities, maps = _run_analyze(analyze, batch, len(class_names))
    fig = _static_explorer_figure(batch, probabilities, maps, class_names, labels, index, title)
    _show_static(fig)
    return fig


def _static_explorer_figure(batch, probabilities, maps, class_names, labels, index, title):
    """Rows = images; columns = input, each item of the first map, its mean, other maps' means."""
    ncols = 1 + len(_static_columns(maps, 0))
    fig, axes = plt.subplots(len(batch), ncols, figsize=(1.5 * ncols, 1.8 * len(batch)), squeeze=False)
    for row, image in enumerate(batch):
        label = None if labels is None else labels[index + row]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(_prediction_title(probabilities[row], class_names, label), fontsize=8)
        axes[row, 0].axis("off")
        for column, (heading, heatmap) in enumerate(_static_columns(maps, row), start=1):
            # Titles once, wrapped to the column's width: map names like "slow-stream attention, all chunks"
            # would otherwise run into the neighbouring columns.
            heading = textwrap.fill(heading, STATIC_TITLE_WIDTH) if row == 0 else None
            overlay(axes[row, column], image, heatmap, title=heading)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _static_columns(maps, row):
    """(title, map) of each overlay column for one image: the first map's items and mean, other means.

    A map with a single item is one column titled by the map's name (its mean would repeat it, and its
    item label alone may be the same in several maps, e.g. one modulator norm per stage).
    """
    names = list(maps)
    first = maps[names[0]]
    values = first.values[row]
    if len(values) == 1:
        columns = [(names[0], values[0])]
    else:
        columns = [(first.items[k], values[k]) for k in range(min(len(values), MAX_STATIC_ITEMS))]
        columns.append((f"{names[0]} mean", values.mean(axis=0)))
    for name in names[1:]:
        other = maps[name]
        heading = name if len(other.items) == 1 else f"{name} mean"
        columns.append((heading, other.values[row].mean(axis=0)))
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
        """Offer each item of the chosen map (its count may differ per map), and 'mean of all' when there are several."""
        name, holding = self.map_dropdown.value, self._holding
        self._holding = True  # changing options fires value events; draw once at the end
        items = [(label, k) for k, label in enumerate(self.items[name])]
        self.item_dropdown.options = items if len(items) == 1 else [("mean of all", MEAN_OF_ALL)] + items
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
        fig, (image_ax, overlay_ax, bar_ax) = plt.subplots(1, 3, figsize=(11, 3.4),
                                                           gridspec_kw={"width_ratios": [1, 1, 1.4]})
        image_ax.imshow(self.image)
        image_ax.set_title(self.source)
        image_ax.axis("off")
        overlay(overlay_ax, self.image, self.selected_map(), alpha=self.opacity_slider.value,
                title=f"{self.map_dropdown.value}: {self.item_dropdown.label}")
        best = int(np.argmax(self.probabilities))
        colors = ["tab:orange" if c == best else "tab:gray" for c in range(len(self.class_names))]
        bar_ax.barh(self.class_names, self.probabilities, color=colors)
        bar_ax.invert_yaxis()  # class 0 on top, in reading order
        bar_ax.set_xlim(0, 1)
        bar_ax.set_title(_prediction_title(self.probabilities, self.class_names, self.label).replace("\n", "  "))
        fig.tight_layout()
        return fig

    def render(self):
        """Redraw the output area unless the widgets are being changed in bulk."""
        if not self._holding:
            _redraw(self.output, self.figure)


def plot_maps_over_time(frames, images, frame_labels, alpha=0.6):
    """Rows = images, columns = recorded frames (T arrays of (B, h, w)) titled by frame_labels."""
    images = _check_images(images)
    frames = [np.asarray(frame, dtype=np.float32) for frame in frames]
    if len(frame_labels) != len(frames):
        raise ValueError(f"expected one frame label per frame ({len(frames)}), got {len(frame_labels)}")
    for frame in frames:
        if frame.ndim != 3 or frame.shape[0] != len(images):
            raise ValueError(f"each frame must have shape (B={len(images)}, h, w), got {frame.shape}")
    fig, axes = plt.subplots(len(images), len(frames), figsize=(1.6 * len(frames), 1.6 * len(images)),
                             squeeze=False)
    for row, image in enumerate(images):
        for column, frame in enumerate(frames):
            overlay(axes[row, column], image, frame[row], alpha=alpha, title=frame_labels[column] if row == 0 else None)
    fig.tight_layout()
    return fig


def explore_over_time(frames, images, frame_labels, static=None):
    """Sliders over time and image in a live notebook; the plot_maps_over_time figure elsewhere."""
    fig = plot_maps_over_time(frames, images, frame_labels)  # validates the inputs in both modes
    if _use_static(static):
        _show_static(fig)
        return fig
    plt.close(fig)
    import ipywidgets as widgets
    from IPython.display import display

    time_slider = widgets.IntSlider(value=len(frames) - 1, min=0, max=len(frames) - 1, description="time")
    image_slider = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    output = widgets.Output()

    def draw():
        figure, ax = plt.subplots(figsize=(3, 3))
        t, i = time_slider.value, image_slider.value
        overlay(ax, np.asarray(images)[i], np.asarray(frames[t])[i], alpha=0.6, title=frame_labels[t])
        return figure

    for slider in (time_slider, image_slider):
        slider.observe(lambda change: _redraw(output, draw), names="value")
    box = widgets.VBox([widgets.HBox([time_slider, image_slider]), output])
    _redraw(output, draw)
    display(box)
    return box
