"""What every model module shares: the input stem, finding blocks, the visualization model, analysis.

The five model modules follow one protocol (see CONTRIBUTING.md): ``PROFILES``, ``build_model(...)``,
``visualization_model(model)`` and ``analyze(model, images)``. The pieces they would otherwise each
write again live here.
"""

import contextlib
import logging

import keras
import numpy as np

from course_utils.analysis import Analysis, softmax
from course_utils.augment import preprocessing
from course_utils.validation import PACKAGE, require_positive_int

LOGITS = "logits"
"""The name of the classifier's output among a visualization model's outputs."""


def image_input(image_size, input_size=32, resize_to=None, include_preprocessing=True):
    """The input stem every builder starts with: ``(inputs, images)``.

    With ``include_preprocessing`` the model takes uint8 images ``(batch, input_size, input_size, 3)``
    and ``images`` is :func:`course_utils.augment.preprocessing`'s output, ``(batch, image_size,
    image_size, 3)`` floats in [0, 1]; without it the model takes float images of ``image_size`` as they
    are (for weights ported from timm, or benchmarks).

    Example:
    >>> inputs, images = image_input(image_size=24, input_size=32)
    >>> tuple(inputs.shape), str(inputs.dtype), tuple(images.shape)
    ((None, 32, 32, 3), 'uint8', (None, 24, 24, 3))
    """
    require_positive_int("image_size", image_size)
    if not include_preprocessing:
        inputs = keras.Input((image_size, image_size, 3), name="images")
        return inputs, inputs
    require_positive_int("input_size", input_size)
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="images")
    return inputs, preprocessing(image_size, resize_to=resize_to)(inputs)


def require_pixel_values(model, images):
    """Return ``images``, or raise a ValueError if ``model`` reads uint8 pixels and they are floats outside 0..255.

    The rule every course model, ``train`` and ``evaluate`` share: a uint8 model accepts uint8 images and
    floats of the same values (0..255), which it rounds down to uint8; floats that all lie in [0, 1] (images
    divided by 255) or outside [0, 255] would be cast to near-black or wrapped-around pixels, so they are
    refused. Only numpy arrays are checked: tensors inside a compiled step have no values to look at.
    """
    dtype = getattr(images, "dtype", None)
    if not isinstance(images, np.ndarray) or not np.issubdtype(dtype, np.floating) or images.size == 0:
        return images
    if "int" not in str(model.inputs[0].dtype):
        return images  # a model built with include_preprocessing=False takes floats as they are
    low, high = float(np.min(images)), float(np.max(images))
    if 0 < high <= 1 and low >= 0:
        raise ValueError(
            f"The images are {dtype} in [0, 1] (from {low:g} to {high:g}), but {model.name!r} reads pixel values "
            f"0..255 and rescales them itself: as they are, they would be cast to 0 and 1 (black images). Pass "
            f"the uint8 images as loaded, or multiply yours by 255 (images * 255)."
        )
    if not (0 <= low and high <= 255):  # NaN fails both comparisons
        raise ValueError(
            f"The images are {dtype} from {low:g} to {high:g}, but {model.name!r} reads pixel values 0..255 "
            f"(uint8): values outside would wrap around when cast. Pass the uint8 images as loaded (not "
            f"normalized ones)."
        )
    return images


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageModel(keras.Model):
    """A functional ``keras.Model`` that checks numpy images with :func:`require_pixel_values` first.

    Keras casts a model's inputs to the input's dtype without a word, so a uint8 model fed images divided
    by 255 would train on black images. Every builder and ``with_outputs`` return this class; it is
    otherwise a plain functional model (``ImageModel(inputs, outputs, name=...)``).

    Example:
    >>> inputs = keras.Input((4, 4, 3), dtype="uint8")
    >>> model = ImageModel(inputs, keras.layers.Flatten()(inputs))
    >>> tuple(model(np.full((1, 4, 4, 3), 255.0)).shape)
    (1, 48)
    >>> model(np.full((1, 4, 4, 3), 0.5))
    Traceback (most recent call last):
    ...
    ValueError: The images are float64 in [0, 1] (from 0.5 to 0.5), ... multiply yours by 255 (images * 255).
    """

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(require_pixel_values(self, inputs), *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        return super().fit(require_pixel_values(self, x), *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(require_pixel_values(self, x), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(require_pixel_values(self, x), *args, **kwargs)


def find_layers(model, layer_type, builder):
    """The layers of ``model`` that are ``layer_type`` instances, in the order the model runs them.

    Raises a ValueError naming ``builder`` (the function that makes such models) when there is none.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dense(3)])
    >>> [layer.units for layer in find_layers(model, keras.layers.Dense, "keras.Sequential")]
    [2, 3]
    """
    found = [layer for layer in model.layers if isinstance(layer, layer_type)]
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no {layer_type.__name__} layer: pass a model made by {builder}."
        )
    return found


def find_layer(model, layer_type, builder):
    """The one ``layer_type`` layer of ``model``; a ValueError naming ``builder`` if there is not exactly one."""
    found = find_layers(model, layer_type, builder)
    if len(found) != 1:
        raise ValueError(
            f"Expected one {layer_type.__name__} layer in {model.name!r}, found {len(found)}: pass a model made "
            f"by {builder}."
        )
    return found[0]


def with_outputs(model, outputs):
    """A model on the same weights as ``model`` whose outputs are ``{"logits": model.output, **outputs}``.

    ``outputs`` maps names to symbolic tensors of ``model``'s graph (a layer's ``.output``). Nothing is
    copied: training ``model`` further changes what this model shows.
    """
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return ImageModel(inputs, {LOGITS: model.output, **outputs}, name=f"{model.name}_visualization")


def is_visualization_model(model):
    """True for a model whose outputs are a dict holding the logits (what ``visualization_model`` returns)."""
    return isinstance(model.output, dict) and LOGITS in model.output


def predict_outputs(model, make_visualization_model, images, batch_size=128):
    """Run a visualization model on ``images`` in inference mode; numpy outputs by name.

    ``model`` is either a visualization model or the classifier itself, which ``make_visualization_model``
    then turns into one (cheap, but pass the visualization model when calling many times). Up to
    ``batch_size`` images (the explorer sends one at a time) go through one direct call of the model;
    more go through ``predict`` in batches of exactly ``batch_size`` (the last one padded with copies of
    the last image, whose outputs are dropped). A direct call compiles nothing, and ``predict`` always sees
    one batch shape, so neither an explorer that sends a different number of images each time nor a
    notebook that analyzes several models makes TensorFlow retrace a prediction function (which it reports
    with a warning in the learner's notebook).
    """
    require_positive_int("batch_size", batch_size)
    viz_model = model if is_visualization_model(model) else make_visualization_model(model)
    images = np.asarray(images)
    count = len(images)
    if count <= batch_size:
        outputs = viz_model(images, training=False)
        return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}
    padding = -count % batch_size
    if padding:
        images = np.concatenate([images, np.repeat(images[-1:], padding, axis=0)])
    with _first_trace_of_a_new_model_is_not_a_retrace():
        outputs = viz_model.predict(images, batch_size=batch_size, verbose=0)
    return {name: np.asarray(value)[:count] for name, value in outputs.items()}


class _DropRetracingNotice(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _first_trace_of_a_new_model_is_not_a_retrace():
    """Hide TensorFlow's retracing notice while ``predict`` runs, and nothing else.

    Every Keras model's prediction function is one Python function, and TensorFlow counts the traces of
    all of them together; with whole batches each model traces once, but a notebook that analyzes five
    snapshots in a row still gets "5 out of the last N calls triggered tf.function retracing", a false
    alarm about its own code. (TensorFlow logs through Python's "tensorflow" logger; other backends
    print no such notice.)
    """
    logger, notice = logging.getLogger("tensorflow"), _DropRetracingNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def analysis(outputs, maps):
    """:class:`course_utils.analysis.Analysis` from predicted outputs (their logits) and built maps."""
    return Analysis(softmax(outputs[LOGITS]), maps)
