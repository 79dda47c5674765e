"""Preprocessing and augmentation that run inside the model, on the accelerator.

The models take the uint8 CIFAR-10 arrays directly: the first layers rescale to [0, 1], resize, crop and
flip. Random parts are active only in training. Nothing here runs per-sample Python, so the input path is
a plain array slice and never the bottleneck.
"""

import keras
from keras import layers, ops

from course_utils.validation import PACKAGE, require_positive_int


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomOrCenterCrop(layers.Layer):
    """Random crop in training, centre crop at inference, so both paths give ``size x size`` images.

    Keras's ``RandomCrop`` passes its input through unchanged at inference, which would hand the rest of
    the model a different image size than in training; it also declares itself unfit for XLA, which makes
    Keras train the *whole* model without compilation (op by op on JAX). This layer draws one offset per
    image with ``keras.random`` and gathers the window with ``keras.ops``, so it compiles on every backend.

    Args:
        size: side of the square crop; the images must be at least this large.
        seed: seed of the random offsets.

    Shapes: ``(batch, height, width, channels)`` -> ``(batch, size, size, channels)``.

    Example:
    >>> crop = RandomOrCenterCrop(size=32)
    >>> images = keras.ops.ones((2, 36, 36, 3))
    >>> tuple(crop(images, training=True).shape), tuple(crop(images, training=False).shape)
    ((2, 32, 32, 3), (2, 32, 32, 3))
    """

    def __init__(self, size, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.size = require_positive_int("size", size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.center_crop = layers.CenterCrop(size, size)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            raise ValueError(f"RandomOrCenterCrop needs images of known height and width, got {tuple(input_shape)}.")
        if height < self.size or width < self.size:
            raise ValueError(
                f"Cannot crop {self.size}x{self.size} out of {height}x{width} images: resize to at least "
                f"{self.size} pixels first."
            )

    def call(self, images, training=None):
        if not training:
            # Passed explicitly: CenterCrop's own default is training=True, which Keras would hand on to
            # every later layer of a model called without a training flag.
            return self.center_crop(images, training=False)
        batch = ops.shape(images)[0]
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        top = keras.random.randint((batch,), 0, height - self.size + 1, dtype="int32", seed=self.seed_generator)
        left = keras.random.randint((batch,), 0, width - self.size + 1, dtype="int32", seed=self.seed_generator)
        # One gather of whole pixels: the index of pixel (i, j) of image b's window among all the
        # batch's pixels, (batch, size, size). Cheaper than cropping rows, then columns.
        steps = ops.arange(self.size, dtype="int32")
        rows = top[:, None] + steps[None, :]
        columns = left[:, None] + steps[None, :]
        first_pixel = ops.arange(batch, dtype="int32") * (height * width)
        index = first_pixel[:, None, None] + rows[:, :, None] * width + columns[:, None, :]
        pixels = ops.reshape(images, (-1, channels))
        return ops.take(pixels, index, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Resize(layers.Resizing):
    """Keras's ``Resizing``, whose call does not default to ``training=True``.

    Keras's image layers declare ``call(data, training=True)``, and when a model is called directly
    (``model(images)``, as a learner would) with no training flag, Keras takes that default and hands it on
    to every later layer: the crops turned random, flips and dropout switched on, and every direct call gave
    a different answer. This layer and :class:`RandomHorizontalFlip` default to inference instead.

    Args:
        height: height of the output.
        width: width of the output (default: ``height``, a square).

    Shapes: ``(batch, in_height, in_width, channels)`` -> ``(batch, height, width, channels)``.

    Example:
    >>> tuple(Resize(36)(keras.ops.zeros((2, 32, 32, 3))).shape)
    (2, 36, 36, 3)
    """

    def __init__(self, height, width=None, **kwargs):
        super().__init__(height, height if width is None else width, **kwargs)

    def call(self, data, training=None):
        return super().call(data, training=False)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomHorizontalFlip(layers.RandomFlip):
    """Keras's ``RandomFlip("horizontal")``, flipping only when called with ``training=True``.

    ``RandomFlip.call`` defaults to ``training=True``, so a model called without a training flag flipped
    about half of its images at random (see :class:`Resize`). Here the default is inference.

    Args:
        seed: seed of the coin flips.

    Shapes: ``(batch, height, width, channels)`` -> the same.

    Example:
    >>> flip = RandomHorizontalFlip()
    >>> images = keras.ops.reshape(keras.ops.arange(4, dtype="float32"), (1, 1, 4, 1))
    >>> keras.ops.convert_to_numpy(flip(images))[0, 0, :, 0].tolist()
    [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, seed=None, **kwargs):
        kwargs.pop("mode", None)  # get_config() stores it; it is always "horizontal" here
        super().__init__(mode="horizontal", seed=seed, **kwargs)

    def call(self, data, training=None):
        return super().call(data, training=bool(training))


def preprocessing(image_size=32, resize_to=None, flip=True, name="preprocessing"):
    """Return the layers that turn uint8 images into the float images a model trains on.

    ``rescale to [0, 1] -> resize to resize_to -> crop image_size (random in training, centre at
    inference) -> random horizontal flip (training only)``.

    Args:
        image_size: side of the square images the model sees.
        resize_to: side to resize to before cropping; the margin ``resize_to - image_size`` sets how far a
            random crop can shift. Defaults to ``image_size + image_size // 8``.
        flip: add a random horizontal flip.

    Shapes: ``(batch, height, width, 3)`` uint8 -> ``(batch, image_size, image_size, 3)`` float32.

    Example:
    >>> images = keras.ops.zeros((2, 32, 32, 3), dtype="uint8")
    >>> tuple(preprocessing(image_size=24)(images).shape)
    (2, 24, 24, 3)
    """
    require_positive_int("image_size", image_size)
    resize_to = image_size + image_size // 8 if resize_to is None else require_positive_int("resize_to", resize_to)
    if resize_to < image_size:
        raise ValueError(f"resize_to={resize_to} is smaller than image_size={image_size}: it must be at least as large.")
    steps = [
        layers.Rescaling(1.0 / 255.0, name="rescale"),
        Resize(resize_to, name="resize"),
        RandomOrCenterCrop(image_size, name="crop"),
    ]
    if flip:
        steps.append(RandomHorizontalFlip(name="flip"))
    return keras.Sequential(steps, name=name)
