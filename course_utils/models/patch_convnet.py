"""PatchConvNet: a column-shaped convnet whose global pooling is one attention layer.

Touvron et al., "Augmenting Convolutional networks with attention-based aggregation" (2021). A plain
convnet ends with global average pooling: every position counts the same, so nothing in the model says
which part of the image decided the class. PatchConvNet replaces that pooling by a learnable class token
that attends once over the final feature map. The attention weights of that token are, by construction,
the importance of each patch in the pooled vector the classifier reads, so the model explains itself
without any gradient-based saliency method.

The network has three parts:

* ``ConvStem``: two 3x3 stride-2 convolutions turn the image into a grid of patch vectors
  (each vector sees a 4x4 pixel patch plus some context).
* A *non-pyramidal* trunk: ``depth`` residual ``TrunkBlock`` layers that all keep the grid resolution and
  width (a "column", as in a ViT), each with its own weights.
* ``AttentionPooling``: a class-attention block (class token attends over the patches, then an MLP) whose
  attention weights over the patches are returned alongside the pooled vector.

Configuration used by the reference example (keras.io, "Augmenting convnets with aggregated attention"):
width 256, two trunk blocks, squeeze-excitation ratio 8, one attention head, 48x48 inputs (CIFAR images
resized to 52 and cropped to 48), AdamW 1e-3 / weight decay 1e-4, 50 epochs, warmup over the first 15 %
of steps then cosine decay; it reports 84.59 % top-1 test accuracy. With every trunk block holding its own
weights, this configuration has 2,174,986 parameters (see ``tests/test_patch_convnet.py``). Two deliberate
differences from that example: its trunk blocks all shared one set of layers (here each block has its
own), and it evaluated on images resized straight to 48 px while training on 48 px crops of 52 px images;
here evaluation centre-crops the same 52 px resize, so objects have the same scale in training and test.
"""

import keras
import numpy as np
from keras import layers, ops

from course_utils.augment import preprocessing
from course_utils.models.blocks import (
    MLP,
)
from course_utils.validation import (
    PACKAGE,
    require_divisible,
    require_image_shape,
    require_positive_int,
    require_positive_number,
    require_rate,
)
from course_utils.profiles import Profile

STEM_STRIDE = 4  # two stride-2 convolutions: one patch vector per 4x4 pixels
POOLING_LAYER = "attention_pooling"
STEM_LAYER = "stem"


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvStem(layers.Layer):
    """Map pixels to a grid of patch vectors with two 3x3, stride-2 convolutions (GELU after each).

    The first convolution has ``dimensions // 2`` filters, the second ``dimensions``. Each output vector
    corresponds to a 4x4 block of input pixels.

    Args:
        dimensions: channels of the patch vectors (``d`` in the paper); must be even.

    Shapes: ``(batch, height, width, channels)`` -> ``(batch, height / 4, width / 4, dimensions)``;
    ``height`` and ``width`` must be multiples of 4.

    Example:
    >>> tuple(ConvStem(dimensions=64)(keras.ops.ones((2, 48, 48, 3))).shape)
    (2, 12, 12, 64)
    """

    def __init__(self, dimensions, **kwargs):
        super().__init__(**kwargs)
        self.dimensions = require_positive_int("dimensions", dimensions)
        if dimensions % 2 != 0:
            raise ValueError(
                f"`dimensions` must be even, because the first stem convolution has dimensions // 2 filters; "
                f"got {dimensions}. Use for example {dimensions - 1 or 2} or {dimensions + 1}."
            )

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        for side_name, side in (("height", input_shape[1]), ("width", input_shape[2])):
            if side is not None and side % STEM_STRIDE != 0:
                lower = side - side % STEM_STRIDE
                raise ValueError(
                    f"ConvStem halves the image twice, so its {side_name} must be a multiple of {STEM_STRIDE}; "
                    f"got {side}. Resize the images to {lower or STEM_STRIDE} or {lower + STEM_STRIDE} "
                    f"(for example with image_size=... in the model builder)."
                )
        settings = dict(kernel_size=3, strides=2, padding="same", activation="gelu")
        self.conv_1 = layers.Conv2D(self.dimensions // 2, name="conv_1", **settings)
        self.conv_1.build(input_shape)
        self.conv_2 = layers.Conv2D(self.dimensions, name="conv_2", **settings)
        self.conv_2.build(self.conv_1.compute_output_shape(input_shape))

    def call(self, images):
        return self.conv_2(self.conv_1(images))

    def compute_output_shape(self, input_shape):
        def shrink(side):
            return None if side is None else side // STEM_STRIDE

        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), self.dimensions)

    def get_config(self):
        config = super().get_config()
        config.update(dimensions=self.dimensions)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation (Hu et al., 2018): rescale each channel by a gate computed from the whole map.

    ``gate = sigmoid(W2 relu(W1 mean_hw(x)))``, ``y = x * gate``; ``W1`` shrinks the channels by ``ratio``
    and ``W2`` restores them (no biases). The gate lies in (0, 1) per sample and channel.

    Args:
        ratio: channel reduction of the bottleneck; must divide the number of input channels.

    Shapes: ``(batch, height, width, channels)`` -> same.

    Example:
    >>> tuple(SqueezeExcite(ratio=8)(keras.ops.ones((2, 12, 12, 64))).shape)
    (2, 12, 12, 64)
    """

    def __init__(self, ratio=8, **kwargs):
        super().__init__(**kwargs)
        self.ratio = require_positive_int("ratio", ratio)

    def build(self, input_shape):
        channels = input_shape[-1]
        require_divisible("channels", channels, "ratio", self.ratio)
        self.reduce = layers.Dense(channels // self.ratio, activation="relu", use_bias=False, name="reduce")
        self.reduce.build((input_shape[0], channels))
        self.expand = layers.Dense(channels, activation="sigmoid", use_bias=False, name="expand")
        self.expand.build((input_shape[0], channels // self.ratio))

    def call(self, x):
        summary = ops.mean(x, axis=(1, 2))  # (batch, channels)
        gate = self.expand(self.reduce(summary))
        return x * gate[:, None, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(ratio=self.ratio)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TrunkBlock(layers.Layer):
    """One residual block of the non-pyramidal trunk; resolution and width stay unchanged.

    ``y = x + Conv1x1(SE(GELU(Conv3x3(GELU(Conv1x1(LayerNorm(x)))))))``, all convolutions with as many
    filters as the input has channels. Every instance creates its own weights: stack several instances
    to get a deeper trunk (the reference example reused one set of layers in every block, which made
    all its blocks share weights).

    Args:
        se_ratio: channel reduction inside the squeeze-excitation; must divide the channels.
        epsilon: LayerNormalization epsilon.

    Shapes: ``(batch, height, width, channels)`` -> same.

    Example:
    >>> tuple(TrunkBlock(se_ratio=8)(keras.ops.ones((2, 12, 12, 64))).shape)
    (2, 12, 12, 64)
    """

    def __init__(self, se_ratio=8, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.se_ratio = require_positive_int("se_ratio", se_ratio)
        self.epsilon = require_positive_number("epsilon", epsilon, example="1e-6")

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        channels = input_shape[-1]
        require_divisible("channels", channels, "se_ratio", self.se_ratio)
        self.norm = layers.LayerNormalization(epsilon=self.epsilon, name="norm")
        self.norm.build(input_shape)
        self.expand = layers.Conv2D(channels, 1, activation="gelu", name="expand")
        self.expand.build(input_shape)
        self.spatial = layers.Conv2D(channels, 3, padding="same", activation="gelu", name="spatial")
        self.spatial.build(input_shape)
        self.squeeze_excite = SqueezeExcite(self.se_ratio, name="squeeze_excite")
        self.squeeze_excite.build(input_shape)
        self.project = layers.Conv2D(channels, 1, name="project")
        self.project.build(input_shape)

    def call(self, x):
        branch = self.spatial(self.expand(self.norm(x)))
        return x + self.project(self.squeeze_excite(branch))

    def get_config(self):
        config = super().get_config()
        config.update(se_ratio=self.se_ratio, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionPooling(layers.Layer):
    """Pool a set of patch vectors into one vector with a learnable class token (class attention, as in CaiT).

    ``tokens = LayerNorm([cls, patches])``; ``cls <- cls + Attention(query=tokens[0], keys=values=tokens)``;
    ``cls <- cls + MLP(LayerNorm(cls))``. The query is the class token alone, so the attention has one row
    per head: how much of each patch goes into the pooled vector. Those weights are returned for the
    patches only; the rest of each row (1 minus their sum) is the class token attending to itself.

    Args:
        num_heads: attention heads; must divide the channels (each head gets ``channels // num_heads``).
        dropout_rate: dropout on the attention weights and inside the MLP during training.
        epsilon: LayerNormalization epsilon.

    Shapes: ``(batch, patches, channels)`` -> ``[(batch, channels), (batch, num_heads, patches)]``:
    the pooled vector and the attention weights of the class token over the patches (inference weights
    are never dropped out; the returned weights are the ones before dropout).

    Example:
    >>> pooled, weights = AttentionPooling(num_heads=1)(keras.ops.ones((2, 144, 64)))
    >>> tuple(pooled.shape), tuple(weights.shape)
    ((2, 64), (2, 1, 144))
    """

    def __init__(self, num_heads=1, dropout_rate=0.2, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.epsilon = require_positive_number("epsilon", epsilon, example="1e-6")

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"AttentionPooling expects patch vectors shaped (batch, patches, channels), got "
                f"{tuple(input_shape)}. Flatten a (batch, height, width, channels) grid first."
            )
        channels = input_shape[-1]
        require_divisible("channels", channels, "num_heads", self.num_heads)
        self.class_token = self.add_weight(
            name="class_token",
            shape=(1, 1, channels),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        sequence_shape = (input_shape[0], None if input_shape[1] is None else input_shape[1] + 1, channels)
        query_shape = (input_shape[0], 1, channels)
        self.token_norm = layers.LayerNormalization(epsilon=self.epsilon, name="token_norm")
        self.token_norm.build(sequence_shape)
        self.attention = layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=channels // self.num_heads,
            dropout=self.dropout_rate,
            name="attention",
        )
        self.attention.build(query_shape, sequence_shape, sequence_shape)
        self.mlp_norm = layers.LayerNormalization(epsilon=self.epsilon, name="mlp_norm")
        self.mlp_norm.build(query_shape)
        self.mlp = MLP(hidden_units=channels, dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(query_shape)

    def call(self, patches, training=None):
        batch = ops.shape(patches)[0]
        channels = ops.shape(patches)[-1]
        cls = ops.broadcast_to(ops.cast(self.class_token, patches.dtype), (batch, 1, channels))
        tokens = self.token_norm(ops.concatenate([cls, patches], axis=1))
        attended, weights = self.attention(
            query=tokens[:, :1],
            value=tokens,
            key=tokens,
            return_attention_scores=True,
            training=training,
        )
        cls = cls + attended
        cls = cls + self.mlp(self.mlp_norm(cls), training=training)
        # weights: (batch, heads, 1 query, 1 + patches) -> drop the query axis and the class-token column.
        return cls[:, 0, :], weights[:, :, 0, 1:]

    def compute_output_shape(self, input_shape):
        return [(input_shape[0], input_shape[-1]), (input_shape[0], self.num_heads, input_shape[1])]

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, dropout_rate=self.dropout_rate, epsilon=self.epsilon)
        return config


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_patch_convnet(
    num_classes=10,
    dimensions=256,
    depth=2,
    se_ratio=8,
    num_heads=1,
    dropout_rate=0.2,
    image_size=48,
    resize_to=52,
    input_size=32,
    include_preprocessing=True,
    name="patch_convnet",
):
    """Build a PatchConvNet that maps images to logits.

    uint8 ``(batch, input_size, input_size, 3)`` -> preprocessing (rescale, resize to ``resize_to``, crop
    ``image_size``: random in training, centred at inference; random flip) -> ``ConvStem`` ->
    ``depth`` x ``TrunkBlock`` (layers ``trunk_block_0`` ...) -> flatten to ``(batch, patches, dimensions)``
    -> ``AttentionPooling`` (layer ``attention_pooling``) -> LayerNorm -> Dense -> logits
    ``(batch, num_classes)``. The attention map has ``(image_size / 4) ** 2`` patches (12x12 at 48 px).

    The defaults are the reference example's configuration (2,174,986 parameters).

    Args:
        num_classes: number of classes.
        dimensions: width of the stem output and of the whole trunk; even, divisible by ``se_ratio``
            and ``num_heads``.
        depth: number of trunk blocks, each with its own weights.
        se_ratio: squeeze-excitation reduction.
        num_heads: heads of the attention pooling (the reference example uses 1).
        dropout_rate: dropout on the pooling's attention weights and inside its MLP (training only).
        image_size: side of the images the stem sees (a multiple of 4).
        resize_to: side to resize to before cropping ``image_size`` (the augmentation margin).
        input_size: side of the uint8 input images.
        include_preprocessing: if False, the model takes float images ``(batch, image_size, image_size,
            3)`` already scaled, with no resizing or augmentation (``input_size`` and ``resize_to`` unused).
    """
    require_positive_int("num_classes", num_classes)
    require_positive_int("dimensions", dimensions)
    require_positive_int("depth", depth)
    require_positive_int("se_ratio", se_ratio)
    require_positive_int("num_heads", num_heads)
    require_positive_int("image_size", image_size)
    require_divisible("dimensions", dimensions, "se_ratio", se_ratio)
    require_divisible("dimensions", dimensions, "num_heads", num_heads)
    if image_size % STEM_STRIDE != 0:
        lower = image_size - image_size % STEM_STRIDE
        raise ValueError(
            f"`image_size` must be a multiple of {STEM_STRIDE} (the stem halves the image twice); got "
            f"{image_size}. Use for example image_size={lower or STEM_STRIDE} or {lower + STEM_STRIDE}."
        )

    if include_preprocessing:
        require_positive_int("input_size", input_size)
        inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="images")
        x = preprocessing(image_size=image_size, resize_to=resize_to)(inputs)
    else:
        inputs = keras.Input((image_size, image_size, 3), name="images")
        x = inputs
    grid = ConvStem(dimensions, name=STEM_LAYER)(x)
    for index in range(depth):
        grid = TrunkBlock(se_ratio=se_ratio, name=f"trunk_block_{index}")(grid)
    side = image_size // STEM_STRIDE
    patches = layers.Reshape((side * side, dimensions), name="flatten_patches")(grid)
    pooled, _ = AttentionPooling(num_heads=num_heads, dropout_rate=dropout_rate, name=POOLING_LAYER)(patches)
    pooled = layers.LayerNormalization(epsilon=1e-6, name="head_norm")(pooled)
    logits = layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs, logits, name=name)


def trunk_blocks(model):
    """The ``TrunkBlock`` layers of a model from :func:`build_patch_convnet`, in order."""
    return [layer for layer in model.layers if isinstance(layer, TrunkBlock)]


def visualization_model(model):
    """A model on the same weights as ``model`` that also returns the attention-pooling weights.

    Outputs a dict: ``"logits"`` ``(batch, num_classes)`` and ``"attention"``
    ``(batch, num_heads, grid, grid)``: the class token's weight on every patch, laid out on the stem's
    grid (row-major, as the patches were flattened). Training ``model`` further updates this model too.
    """
    try:
        pooling = model.get_layer(POOLING_LAYER)
        stem = model.get_layer(STEM_LAYER)
    except ValueError as error:
        raise ValueError(
            f"visualization_model needs a model from build_patch_convnet (with layers {STEM_LAYER!r} and "
            f"{POOLING_LAYER!r}); {model.name!r} has none."
        ) from error
    _, weights = pooling.output
    _, height, width, _ = stem.output.shape
    maps = layers.Reshape((pooling.num_heads, height, width), name="attention_grid")(weights)
    return keras.Model(model.input, {"logits": model.output, "attention": maps}, name=f"{model.name}_viz")


def analyze(viz_model, images, batch_size=128):
    """Run the visualization model in inference mode.

    Args:
        viz_model: from :func:`visualization_model`.
        images: uint8 ``(batch, height, width, 3)`` (or what the model takes).

    Returns:
        ``(probabilities, maps)``: softmax probabilities ``(batch, num_classes)`` and
        ``{"attention": (batch, num_heads, grid, grid)}`` as numpy arrays.
    """
    outputs = viz_model.predict(np.asarray(images), batch_size=batch_size, verbose=0)
    logits = np.asarray(outputs["logits"], dtype="float64")
    logits = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return probabilities.astype("float32"), {"attention": np.asarray(outputs["attention"])}


# --------------------------------------------------------------------------------------------
# Watching attention during training
# --------------------------------------------------------------------------------------------
class AttentionRecorder(keras.callbacks.Callback):
    """Record the attention maps of a fixed set of images while a PatchConvNet trains.

    At the end of epochs ``every``, ``2 * every``, ... (counting epochs from 1, as Keras's progress bar
    does) the maps of ``images`` are computed in inference mode on the current weights and appended to
    ``frames`` (one numpy array ``(batch, grid, grid)`` per recording, averaged over heads), with the epoch
    number in ``epochs``. With ``record_initial=True`` the untrained model's maps are recorded first, as
    epoch 0. Fitting again with the same recorder keeps appending (Keras numbers the epochs of each fit
    call from ``initial_epoch``).

    Args:
        images: the uint8 images to follow, ``(batch, height, width, 3)``; keep a handful.
        every: record every this many epochs.
        record_initial: also record before the first epoch.
        batch_size: batch size of the inference passes.
    """

    def __init__(self, images, every=5, record_initial=False, batch_size=128):
        super().__init__()
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"`images` must be shaped (batch, height, width, channels), got {images.shape}.")
        self.images = images
        self.every = require_positive_int("every", every)
        self.record_initial = bool(record_initial)
        self.batch_size = require_positive_int("batch_size", batch_size)
        self.frames = []
        self.epochs = []
        self._viz_model = None

    def on_train_begin(self, logs=None):
        self._viz_model = visualization_model(self.model)  # cheap: no new weights, just a new graph
        if self.record_initial and not self.epochs:
            self._record(0)

    def on_epoch_end(self, epoch, logs=None):
        finished = epoch + 1  # Keras passes the 0-based index of the epoch that just ended
        if finished % self.every == 0:
            self._record(finished)

    def _record(self, epoch):
        _, maps = analyze(self._viz_model, self.images, batch_size=self.batch_size)
        self.frames.append(maps["attention"].mean(axis=1))
        self.epochs.append(int(epoch))


# --------------------------------------------------------------------------------------------
# Is the map meaningful? Mask what it points at.
# --------------------------------------------------------------------------------------------
def _crop_geometry(viz_model, input_size):
    """``(resize_to, crop)`` of the model's preprocessing, or ``(input_size, input_size)`` without one."""
    for layer in viz_model.layers:
        if isinstance(layer, keras.Sequential) and layer.name == "preprocessing":
            resize = layer.get_layer("resize")
            crop = layer.get_layer("crop")
            return resize.height, crop.size
    return input_size, input_size


def _patch_of_pixel(input_size, resize_to, crop, grid):
    """For each input pixel row (or column), the index of the patch row (column) its centre falls in."""
    centres = (np.arange(input_size) + 0.5) * resize_to / input_size - (resize_to - crop) // 2
    return np.clip(np.floor(centres * grid / crop).astype(int), 0, grid - 1)


def mask_patches(viz_model, images, patch_indices, fill="mean"):
    """Copies of ``images`` with the given attention patches painted over in input-pixel space.

    The patch grid is mapped back through the model's resize and centre crop, so patch ``i`` (row-major
    on the attention grid) covers the input pixels the model sees in that patch. Pixels outside the crop
    are assigned to the nearest border patch.

    Args:
        viz_model: from :func:`visualization_model` (gives the grid size and the crop geometry).
        images: uint8 ``(batch, size, size, 3)``.
        patch_indices: int array ``(batch, k)`` of patches to mask for each image (``k`` may be 0).
        fill: ``"mean"`` (per-channel mean pixel of ``images``) or ``"zero"`` (black).

    Returns: a uint8 array shaped like ``images``.
    """
    images = np.asarray(images)
    patch_indices = np.asarray(patch_indices, dtype=int).reshape(len(images), -1)
    grid = viz_model.output["attention"].shape[-1]
    input_size = images.shape[1]
    if fill == "mean":
        value = np.round(images.reshape(-1, images.shape[-1]).mean(axis=0)).astype(images.dtype)
    elif fill == "zero":
        value = np.zeros(images.shape[-1], dtype=images.dtype)
    else:
        raise ValueError(f"`fill` must be 'mean' or 'zero', got {fill!r}.")
    if patch_indices.size and (patch_indices.min() < 0 or patch_indices.max() >= grid * grid):
        raise ValueError(f"patch indices must lie in [0, {grid * grid}) for a {grid}x{grid} attention grid.")
    patch_mask = np.zeros((len(images), grid * grid), dtype=bool)
    np.put_along_axis(patch_mask, patch_indices, True, axis=1)
    patch_mask = patch_mask.reshape(len(images), grid, grid)
    resize_to, crop = _crop_geometry(viz_model, input_size)
    rows = _patch_of_pixel(input_size, resize_to, crop, grid)
    pixel_mask = patch_mask[:, rows[:, None], rows[None, :]]  # (batch, size, size)
    masked = images.copy()
    masked[pixel_mask] = value
    return masked


def attention_masking_check(viz_model, images, labels, patches_to_mask, seed=0, fill="mean", batch_size=128):
    """Accuracy after masking the ``patches_to_mask`` most-attended patches versus as many random ones.

    If the attention map points at the evidence the classifier uses, hiding the most-attended patches
    should cost far more accuracy than hiding random patches of the same total area. The least-attended
    patches are measured too, as the opposite extreme. Patches are ranked by the map of each unmasked
    image (averaged over heads).

    Args:
        viz_model: from :func:`visualization_model`.
        images, labels: uint8 images ``(batch, size, size, 3)`` and integer labels ``(batch,)`` or
            ``(batch, 1)``.
        patches_to_mask: how many patches to hide per image, from 0 to the number of patches.
        seed: seed of the random choice.
        fill: what hidden pixels become, see :func:`mask_patches`.

    Returns: a dict with ``"unmasked"``, ``"most_attended"``, ``"random"`` and ``"least_attended"``
    accuracies in [0, 1], plus ``"patches_to_mask"`` and ``"patches"`` (patches per image).
    """
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"Got {len(images)} images but {len(labels)} labels.")
    _, height, width = viz_model.output["attention"].shape[1:]
    patches = height * width
    is_int = isinstance(patches_to_mask, (int, np.integer)) and not isinstance(patches_to_mask, bool)
    if not is_int or not 0 <= patches_to_mask <= patches:
        raise ValueError(
            f"`patches_to_mask` must be an integer from 0 to {patches} (the patches per image), "
            f"got {patches_to_mask!r}."
        )
    k = int(patches_to_mask)
    probabilities, maps = analyze(viz_model, images, batch_size=batch_size)
    attention = maps["attention"].mean(axis=1).reshape(len(images), patches)  # averaged over the heads
    ranking = np.argsort(-attention, axis=1, kind="stable")
    random_order = np.argsort(np.random.default_rng(seed).random(attention.shape), axis=1)
    choices = {
        "most_attended": ranking[:, :k],
        "random": random_order[:, :k],
        "least_attended": ranking[:, patches - k:],
    }

    def accuracy(probs):
        return float(np.mean(np.argmax(probs, axis=-1) == labels))

    result = {"patches_to_mask": k, "patches": patches, "unmasked": accuracy(probabilities)}
    for key, indices in choices.items():
        masked = mask_patches(viz_model, images, indices, fill=fill)
        result[key] = accuracy(analyze(viz_model, masked, batch_size=batch_size)[0])
    return result


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
PROFILES = {
    "smoke": Profile(
        name="smoke",
        epochs=1,
        batch_size=64,
        train_samples=512,
        eval_samples=256,
        test_samples=1000,
        learning_rate=1e-3,
        weight_decay=1e-4,
        warmup_epochs=0.0,
        model=dict(dimensions=32, depth=1, se_ratio=4, image_size=32, resize_to=36),
        note="a tiny model on 512 images: checks that everything runs, not that it learns",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=8,
        batch_size=64,
        train_samples=10000,
        eval_samples=1000,
        learning_rate=2e-3,
        weight_decay=1e-4,
        warmup_epochs=1.0,
        model=dict(dimensions=64, depth=2, se_ratio=8, num_heads=1, image_size=32, resize_to=36),
        note=(
            "width 64 on 32 px crops (an 8x8 map, one patch per 4x4 input pixels), 10,000 images x 8 epochs: "
            "about 140 s of training measured on a shared 2-core CPU (15-18 s per epoch)"
        ),
    ),
    "full": Profile(
        name="full",
        epochs=50,
        batch_size=128,
        train_samples=None,
        eval_samples=None,
        learning_rate=1e-3,
        weight_decay=1e-4,
        warmup_epochs=7.5,
        model=dict(dimensions=256, depth=2, se_ratio=8, num_heads=1, image_size=48, resize_to=52),
        note=(
            "the keras.io example's configuration (width 256, 2 trunk blocks, SE ratio 8, 48 px crops of "
            "52 px resizes, AdamW 1e-3 / wd 1e-4, 50 epochs, warmup over the first 15 % of steps); it "
            "reports 84.59 % top-1 test. Its batch of 128 already fits a 16 GB T4 easily (2.2 M parameters, "
            "12x12x256 feature maps), so batch size and learning rate are kept as they are"
        ),
    ),
}
