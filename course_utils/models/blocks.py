"""Building blocks shared by several papers.

Every layer here builds its weights lazily in ``build``, returns every constructor argument from
``get_config``, and uses only ``keras.ops`` so it runs on TensorFlow, JAX and PyTorch.
"""

import keras
from keras import layers, ops

from course_utils.validation import (
    PACKAGE,
    require_heads_divide,
    require_image_shape,
    require_positive_int,
    require_positive_number,
    require_rate,
)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
def split_heads(x, num_heads):
    """``(batch, tokens, channels)`` -> ``(batch, heads, tokens, channels / heads)``."""
    if num_heads == 1:
        return ops.expand_dims(x, 1)  # the same result without a transpose (a copy of the tensor)
    batch, tokens = ops.shape(x)[0], ops.shape(x)[1]
    x = ops.reshape(x, (batch, tokens, num_heads, x.shape[-1] // num_heads))
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """``(batch, heads, tokens, head_channels)`` -> ``(batch, tokens, heads * head_channels)``."""
    if x.shape[1] == 1:
        return ops.squeeze(x, 1)
    batch, tokens = ops.shape(x)[0], ops.shape(x)[2]
    x = ops.transpose(x, (0, 2, 1, 3))
    return ops.reshape(x, (batch, tokens, x.shape[2] * x.shape[3]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class DotProductAttention(layers.Layer):
    """Multi-head scaled dot-product attention: the queries read the keys and values of a context.

    Per head ``h`` (each with ``channels / num_heads`` channels)::

        weights_h = softmax(q_h k_h^T / sqrt(channels / num_heads))     # over the keys
        outputs   = Dense(concat_h(dropout(weights_h) v_h))

    with ``q = Dense(query)``, ``k = Dense(context)``, ``v = Dense(context)``. This is the function
    ``keras.layers.MultiHeadAttention(num_heads, key_dim=channels // num_heads)`` computes (without its
    masks), written as four Dense layers and two matrix products: easier to read, and on a CPU faster
    for many short sequences, where the einsum projections of the Keras layer cost more than the
    products themselves (the Temporal Latent Bottleneck runs this on chunks of 8 tokens; see
    ``docs/benchmarks.md``).

    Args:
        num_heads: attention heads; must divide the query's channels.
        attention_dropout: dropout on the attention weights.

    Call arguments: ``query`` ``(batch, queries, channels)``; ``context`` ``(batch, keys, context_channels)``,
    the sequence to read (default: ``query`` itself, i.e. self-attention).

    Returns: ``(outputs, weights)``: ``outputs`` ``(batch, queries, channels)``; ``weights``, the attention
    probabilities before dropout, ``(batch, num_heads, queries, keys)`` (each row sums to 1).

    Example:
    >>> outputs, weights = DotProductAttention(num_heads=2)(keras.ops.ones((2, 5, 8)), keras.ops.ones((2, 3, 4)))
    >>> tuple(outputs.shape), tuple(weights.shape)
    ((2, 5, 8), (2, 2, 5, 3))
    """

    def __init__(self, num_heads, attention_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)

    def build(self, query_shape, context_shape=None):
        channels = query_shape[-1]
        require_heads_divide(channels, self.num_heads)
        context_shape = query_shape if context_shape is None else context_shape
        self.query = layers.Dense(channels, name="query")
        self.query.build(query_shape)
        self.key = layers.Dense(channels, name="key")
        self.key.build(context_shape)
        self.value = layers.Dense(channels, name="value")
        self.value.build(context_shape)
        self.projection = layers.Dense(channels, name="projection")
        self.projection.build(query_shape)
        self.weights_dropout = layers.Dropout(self.attention_dropout)

    def call(self, query, context=None, training=None):
        context = query if context is None else context
        scale = (query.shape[-1] // self.num_heads) ** -0.5
        queries = split_heads(self.query(query), self.num_heads) * scale
        keys = split_heads(self.key(context), self.num_heads)
        values = split_heads(self.value(context), self.num_heads)
        weights = ops.softmax(ops.matmul(queries, ops.swapaxes(keys, -1, -2)), axis=-1)
        attended = ops.matmul(self.weights_dropout(weights, training=training), values)
        return self.projection(merge_heads(attended)), weights

    def compute_output_shape(self, query_shape, context_shape=None):
        keys = query_shape[1] if context_shape is None else context_shape[1]
        return tuple(query_shape), (query_shape[0], self.num_heads, query_shape[1], keys)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, attention_dropout=self.attention_dropout)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLP(layers.Layer):
    """Two-layer feed-forward network of a Transformer block: Dense -> GELU -> Dense.

    Args:
        hidden_units: width of the hidden layer.
        output_units: width of the output; ``None`` keeps the input width.
        dropout_rate: dropout after each Dense layer.

    Shapes: ``(..., channels)`` -> ``(..., output_units or channels)``.

    Example:
    >>> tuple(MLP(hidden_units=256)(keras.ops.ones((2, 16, 64))).shape)
    (2, 16, 64)
    """

    def __init__(self, hidden_units, output_units=None, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = require_positive_int("hidden_units", hidden_units)
        self.output_units = None if output_units is None else require_positive_int("output_units", output_units)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.hidden = layers.Dense(self.hidden_units, activation="gelu", name="hidden")
        self.hidden.build(input_shape)
        self.project = layers.Dense(self.output_units or channels, name="project")
        self.project.build(tuple(input_shape[:-1]) + (self.hidden_units,))
        self.dropout = layers.Dropout(self.dropout_rate)

    def call(self, x, training=None):
        x = self.dropout(self.hidden(x), training=training)
        return self.dropout(self.project(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_units or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=self.hidden_units, output_units=self.output_units, dropout_rate=self.dropout_rate
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(layers.Layer):
    """Cut an image into non-overlapping square patches and project each to ``embed_dim``.

    A strided convolution does both at once: kernel = stride = ``patch_size``.

    Args:
        patch_size: side of a square patch in pixels; must divide the image size.
        embed_dim: channels of each patch token.
        flatten: return ``(batch, tokens, embed_dim)`` if True, else the grid
            ``(batch, height / patch_size, width / patch_size, embed_dim)``.

    Shapes: ``(batch, height, width, channels)`` -> see ``flatten``.

    Example:
    >>> tuple(PatchEmbedding(patch_size=4, embed_dim=16)(keras.ops.ones((2, 32, 32, 3))).shape)
    (2, 64, 16)
    >>> tuple(PatchEmbedding(4, 16, flatten=False)(keras.ops.ones((2, 32, 32, 3))).shape)
    (2, 8, 8, 16)
    """

    def __init__(self, patch_size, embed_dim, flatten=True, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = require_positive_int("patch_size", patch_size)
        self.embed_dim = require_positive_int("embed_dim", embed_dim)
        self.flatten = bool(flatten)

    def build(self, input_shape):
        require_image_shape(self.__class__.__name__, input_shape)
        for side_name, side in (("height", input_shape[1]), ("width", input_shape[2])):
            if side is not None and side % self.patch_size != 0:
                raise ValueError(
                    f"patch_size={self.patch_size} does not divide the image {side_name} ({side}). "
                    f"Pick a patch size that divides {side} (for example "
                    f"{', '.join(str(d) for d in range(2, side + 1) if side % d == 0)}) or resize the images."
                )
        self.projection = layers.Conv2D(
            self.embed_dim, self.patch_size, strides=self.patch_size, padding="valid", name="projection"
        )
        self.projection.build(input_shape)

    def call(self, images):
        grid = self.projection(images)
        if not self.flatten:
            return grid
        batch = ops.shape(grid)[0]
        return ops.reshape(grid, (batch, -1, self.embed_dim))

    def compute_output_shape(self, input_shape):
        height = None if input_shape[1] is None else input_shape[1] // self.patch_size
        width = None if input_shape[2] is None else input_shape[2] // self.patch_size
        if not self.flatten:
            return (input_shape[0], height, width, self.embed_dim)
        tokens = None if height is None or width is None else height * width
        return (input_shape[0], tokens, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, embed_dim=self.embed_dim, flatten=self.flatten)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(layers.Layer):
    """Add a learned position vector to every token.

    Args:
        initializer_stddev: standard deviation of the truncated-normal start values.

    Shapes: ``(batch, tokens, channels)`` -> same. The number of tokens is fixed at build time.

    Example:
    >>> tuple(PositionEmbedding()(keras.ops.zeros((2, 64, 16))).shape)
    (2, 64, 16)
    """

    def __init__(self, initializer_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None:
            raise ValueError(
                f"PositionEmbedding expects (batch, tokens, channels) with a known number of tokens, "
                f"got {tuple(input_shape)}."
            )
        self.embedding = self.add_weight(
            name="embedding",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
        )

    def call(self, tokens):
        return tokens + ops.cast(self.embedding, tokens.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(initializer_stddev=self.initializer_stddev)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(layers.Layer):
    """Multiply every channel by a learned scalar initialised small (CaiT, Touvron et al. 2021).

    ``y = gamma * x`` with ``gamma`` a vector of ``channels`` values, all ``layer_scale_init`` at the
    start, so a freshly initialised residual branch barely perturbs the identity path.

    Args:
        layer_scale_init: the start value of every entry of ``gamma``.

    Shapes: ``(..., channels)`` -> same.

    Example:
    >>> scaled = LayerScale(layer_scale_init=0.1)(keras.ops.ones((2, 3, 4)))
    >>> tuple(scaled.shape), round(float(keras.ops.convert_to_numpy(scaled)[0, 0, 0]), 6)
    ((2, 3, 4), 0.1)
    """

    def __init__(self, layer_scale_init=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.layer_scale_init = require_positive_number("layer_scale_init", layer_scale_init, example="1e-5")

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma", shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.layer_scale_init)
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(layer_scale_init=self.layer_scale_init)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(layers.Layer):
    """Drop a whole residual branch per sample during training (Huang et al., 2016).

    In training each sample's branch is zeroed with probability ``rate`` and the survivors are scaled
    by ``1 / (1 - rate)``; at inference the branch passes through unchanged.

    Args:
        rate: probability of dropping a sample's branch.
        seed: seed of the random choice.

    Shapes: ``(batch, ...)`` -> same.

    Example:
    >>> branch = keras.ops.ones((4, 3))
    >>> bool(keras.ops.all(StochasticDepth(rate=0.5)(branch, training=False) == branch))
    True
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = require_rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=x.dtype) < keep
        return ops.where(mask, x / keep, ops.zeros_like(x))

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(layers.Layer):
    """Pre-norm Transformer encoder block: ``x + Attention(LN(x))`` then ``x + MLP(LN(x))``.

    The attention is :class:`DotProductAttention`: each head attends with ``channels / num_heads``
    channels, so the block costs the same for any number of heads.

    Args:
        num_heads: attention heads; must divide the input width.
        mlp_ratio: hidden width of the MLP as a multiple of the input width.
        dropout_rate: dropout inside the MLP (after each of its Dense layers).
        attention_dropout: dropout on the attention weights.
        layer_norm_epsilon: epsilon of both LayerNorms.

    Call returns ``(outputs, attention_scores)``.
    Shapes: ``(batch, tokens, channels)`` -> ``(batch, tokens, channels)``,
    scores ``(batch, num_heads, tokens, tokens)`` (each row sums to 1).

    Example:
    >>> outputs, scores = TransformerBlock(num_heads=2)(keras.ops.ones((2, 16, 32)))
    >>> tuple(outputs.shape), tuple(scores.shape)
    ((2, 16, 32), (2, 2, 16, 16))
    """

    def __init__(
        self, num_heads, mlp_ratio=2.0, dropout_rate=0.0, attention_dropout=0.0, layer_norm_epsilon=1e-6, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.mlp_ratio = require_positive_number("mlp_ratio", mlp_ratio, example="2.0")
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.layer_norm_epsilon = require_positive_number("layer_norm_epsilon", layer_norm_epsilon, example="1e-6")

    def build(self, input_shape):
        channels = input_shape[-1]
        require_heads_divide(channels, self.num_heads)
        self.attention_norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="attention_norm")
        self.attention_norm.build(input_shape)
        self.attention = DotProductAttention(self.num_heads, self.attention_dropout, name="attention")
        self.attention.build(input_shape)
        self.mlp_norm = layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="mlp_norm")
        self.mlp_norm.build(input_shape)
        self.mlp = MLP(int(channels * self.mlp_ratio), dropout_rate=self.dropout_rate, name="mlp")
        self.mlp.build(input_shape)

    def call(self, x, training=None):
        attended, scores = self.attention(self.attention_norm(x), training=training)
        x = x + attended
        x = x + self.mlp(self.mlp_norm(x), training=training)
        return x, scores

    def compute_output_shape(self, input_shape):
        tokens = input_shape[1]
        return tuple(input_shape), (input_shape[0], self.num_heads, tokens, tokens)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
