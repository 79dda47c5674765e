"""Temporal Latent Bottleneck (Didolkar et al., 2022): a fast Transformer stream and a slow recurrent stream.

The image becomes a sequence of patch tokens, cut into consecutive *chunks* of ``chunk_size`` tokens (in
raster order). Two streams read that sequence:

- the **fast stream** (perceptual module) is a small Transformer that works inside one chunk at a time:
  ``depth`` self-attention blocks, and after self-attention layers ``0, r, 2r, ...`` a cross-attention
  block in which the chunk's tokens (queries) read the slow stream (keys and values);
- the **slow stream** (the temporal latent bottleneck) is a handful of latent vectors that is updated once
  per chunk, by a cross-attention block in which the latents (queries) read the chunk the fast stream just
  produced (keys and values). It is the only path from one chunk to the next: a compressed memory.

One step of the recurrence is :class:`TLBCell`; :class:`TemporalLatentBottleneck` runs it over the chunks
with ``keras.layers.RNN``, so the loop is part of the compiled graph (``tf.while_loop``, ``lax.scan``; on
JAX with dropout the RNN unrolls it at trace time, see :class:`TemporalLatentBottleneck`). The slow
stream's attention over each chunk is the RNN's per-step output, so the visualization model is the
training model with one more output, on the same weights. The classifier reads the final slow stream.

The module follows the course's model-module protocol (CONTRIBUTING.md)::

    model = build_model(**profile.model)
    baseline = build_baseline(**profile.model)    # the course's plain ViT, same width, depth and heads
    viz_model = visualization_model(model)
    probabilities, maps = analyze(viz_model, images)   # maps: {"slow-stream attention, ...": MapSet}

Public names:
    ChunkedPatchEmbedding, AttentionBlock, TLBCell, TemporalLatentBottleneck    layers
    build_model, build_baseline, visualization_model, analyze                   the protocol
    chunk_maps                                                                  attention -> maps on the patch grid
    PROFILES                                                                    smoke / workshop / full profiles
"""

import math

import keras
import numpy as np
from keras import layers, ops

from course_utils.analysis import MapSet, numbered
from course_utils.models.blocks import MLP, DotProductAttention, PatchEmbedding, PositionEmbedding
from course_utils.models.common import ImageModel, analysis, find_layer, image_input, predict_outputs, with_outputs
from course_utils.models.vit import build_vit_like, check_vit_arguments
from course_utils.profiles import Profile
from course_utils.validation import (
    PACKAGE,
    require_heads_divide,
    require_number_at_least,
    require_positive_int,
    require_rate,
)

BUILDER = "temporal_latent_bottleneck.build_model()"
LAYER_NORM_EPSILON = 1e-5
"""The arguments of :func:`build_model` that the plain ViT of :func:`build_baseline` does not take."""
ATTENTION_OUTPUT = "slow_stream_attention"
"""The visualization model's output: ``(batch, num_chunks, num_heads, num_latents, chunk_size)``."""


def _require_chunking(num_patches, chunk_size, grid=None):
    """Raise a ValueError unless ``chunk_size`` divides the number of patch tokens."""
    if num_patches % chunk_size != 0:
        divisors = [d for d in range(1, num_patches + 1) if num_patches % d == 0]
        where = f" (a {grid[0]}x{grid[1]} patch grid)" if grid else ""
        raise ValueError(
            f"chunk_size={chunk_size} does not divide the number of patches, {num_patches}{where}, so the "
            f"tokens cannot be cut into whole chunks. Choose a chunk_size among {divisors}, or change "
            f"image_size / patch_size."
        )


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class ChunkedPatchEmbedding(layers.Layer):
    """Turn an image into a sequence of chunks of patch tokens.

    Patches of ``patch_size x patch_size`` pixels are projected to ``embed_dim`` channels, a learned
    position vector is added, the tokens are layer-normalised and then cut, in raster order (row by row
    of the patch grid), into consecutive chunks of ``chunk_size`` tokens. Chunk ``k`` holds patch tokens
    ``k * chunk_size ... (k + 1) * chunk_size - 1``.

    Args:
        patch_size: side of a square patch in pixels; must divide the image side.
        embed_dim: channels per token.
        chunk_size: tokens per chunk; must divide the number of patches ``(side / patch_size) ** 2``.

    Shapes: ``(batch, height, width, channels)`` ->
    ``(batch, num_chunks, chunk_size, embed_dim)`` with ``num_chunks = num_patches / chunk_size``.

    Example:
    >>> tuple(ChunkedPatchEmbedding(4, 32, chunk_size=8)(keras.ops.ones((2, 32, 32, 3))).shape)
    (2, 8, 8, 32)
    """

    def __init__(self, patch_size, embed_dim, chunk_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = require_positive_int("patch_size", patch_size)
        self.embed_dim = require_positive_int("embed_dim", embed_dim)
        self.chunk_size = require_positive_int("chunk_size", chunk_size)

    def _grid(self, input_shape):
        return input_shape[1] // self.patch_size, input_shape[2] // self.patch_size

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                "ChunkedPatchEmbedding expects images shaped (batch, height, width, channels) with a known "
                f"height and width, got {tuple(input_shape)}."
            )
        self.patches = PatchEmbedding(self.patch_size, self.embed_dim, name="patches")
        self.patches.build(input_shape)  # checks that patch_size divides the image
        grid = self._grid(input_shape)
        num_patches = grid[0] * grid[1]
        _require_chunking(num_patches, self.chunk_size, grid)
        token_shape = (input_shape[0], num_patches, self.embed_dim)
        self.positions = PositionEmbedding(name="positions")
        self.positions.build(token_shape)
        self.norm = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm")
        self.norm.build(token_shape)

    def call(self, images):
        tokens = self.norm(self.positions(self.patches(images)))
        num_tokens = tokens.shape[1]
        return ops.reshape(tokens, (-1, num_tokens // self.chunk_size, self.chunk_size, self.embed_dim))

    def compute_output_shape(self, input_shape):
        grid = self._grid(input_shape)
        return (input_shape[0], grid[0] * grid[1] // self.chunk_size, self.chunk_size, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, embed_dim=self.embed_dim, chunk_size=self.chunk_size)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionBlock(layers.Layer):
    """Pre-norm Transformer block: attention then feed-forward, each on a residual path.

    ``x = x + Attention(LN(x), LN(context)); x = x + MLP(LN(x))``. With ``cross_attention=False`` the
    context is the queries themselves (self-attention); with ``cross_attention=True`` the block reads a
    second sequence (its own LayerNorm normalises it), e.g. a chunk reading the slow stream. The attention
    is :class:`course_utils.models.blocks.DotProductAttention` (what ``keras.layers.MultiHeadAttention``
    computes, in plain matrix products: the loop runs it 126 times per image in the ``full`` profile).

    Args:
        num_heads: attention heads; must divide the channels (each head gets ``channels / num_heads``).
        mlp_ratio: hidden width of the feed-forward network as a multiple of the channels.
        dropout_rate: dropout on the feed-forward network's output (once per token and channel, as in the
            reference example; random numbers are costly on a CPU, so not after the hidden layer too).
        attention_dropout: dropout on the attention probabilities.
        cross_attention: whether ``call`` takes a ``context`` sequence to attend to.

    Call arguments: ``query`` ``(batch, queries, channels)``; ``context`` ``(batch, keys, channels)``
    (required iff ``cross_attention``).

    Returns: ``(outputs, scores)``: ``outputs`` ``(batch, queries, channels)``; ``scores``, the attention
    probabilities, ``(batch, num_heads, queries, keys)`` (each row sums to 1).

    Example:
    >>> out, scores = AttentionBlock(num_heads=2)(keras.ops.ones((2, 8, 32)))
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 8, 32), (2, 2, 8, 8))
    """

    def __init__(
        self, num_heads, mlp_ratio=4, dropout_rate=0.0, attention_dropout=0.0, cross_attention=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.mlp_ratio = require_number_at_least("mlp_ratio", mlp_ratio, 1)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        self.cross_attention = bool(cross_attention)

    def build(self, query_shape, context_shape=None):
        channels = query_shape[-1]
        require_heads_divide(channels, self.num_heads)
        context_shape = tuple(query_shape) if context_shape is None else tuple(context_shape)
        self.norm_query = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm_query")
        self.norm_query.build(query_shape)
        if self.cross_attention:
            self.norm_context = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm_context")
            self.norm_context.build(context_shape)
        self.attention = DotProductAttention(self.num_heads, self.attention_dropout, name="attention")
        self.attention.build(query_shape, context_shape)
        self.norm_mlp = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="norm_mlp")
        self.norm_mlp.build(query_shape)
        self.mlp = MLP(int(round(self.mlp_ratio * channels)), name="mlp")
        self.mlp.build(query_shape)
        self.mlp_dropout = layers.Dropout(self.dropout_rate, name="mlp_dropout")

    def call(self, query, context=None, training=None):
        if self.cross_attention and context is None:
            raise ValueError(f"{self.name} is a cross-attention block: pass the sequence to read as `context`.")
        if not self.cross_attention and context is not None:
            raise ValueError(
                f"{self.name} is a self-attention block and takes no `context`; build it with "
                "cross_attention=True to attend to another sequence."
            )
        normed_query = self.norm_query(query)
        normed_context = normed_query if context is None else self.norm_context(context)
        attended, scores = self.attention(normed_query, normed_context, training=training)
        x = query + attended
        x = x + self.mlp_dropout(self.mlp(self.norm_mlp(x)), training=training)
        return x, scores

    def compute_output_shape(self, query_shape, context_shape=None):
        keys = query_shape[1] if context_shape is None else context_shape[1]
        return tuple(query_shape), (query_shape[0], self.num_heads, query_shape[1], keys)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            cross_attention=self.cross_attention,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TLBCell(layers.Layer):
    """One step of the Temporal Latent Bottleneck: read one chunk, update the slow stream.

    For a chunk ``x`` and the slow stream ``s`` (``num_latents`` vectors), in this order::

        for i in range(depth):
            x = self_attention[i](x)                    # fast stream, inside the chunk
            if i % r == 0:
                x = cross_attention[i // r](x, s)       # the chunk reads the slow stream (top-down)
        s, scores = latent_update(s, x)                 # the slow stream reads the chunk (bottom-up)

    Every block object is called exactly once per chunk. ``depth`` self-attention blocks,
    ``ceil(depth / r)`` perceptual cross-attention blocks and one latent-update block.

    This is a ``keras.layers.RNN`` cell, so its state and output are flat vectors:
    ``state_size = num_latents * embed_dim`` (the slow stream) and
    ``output_size = num_heads * num_latents * chunk_size`` (the latent update's attention probabilities,
    flattened from ``(num_heads, num_latents, chunk_size)``).

    Args:
        embed_dim: channels of the chunk tokens and of the latents.
        chunk_size: tokens per chunk.
        num_latents: vectors in the slow stream.
        depth: self-attention blocks in the perceptual module.
        r: a perceptual cross-attention follows self-attention layers ``0, r, 2r, ...``.
        num_heads, mlp_ratio, dropout_rate, attention_dropout: as in :class:`AttentionBlock`, for all blocks.

    Call arguments: ``inputs`` ``(batch, chunk_size, embed_dim)``; ``states`` a list holding
    ``(batch, num_latents * embed_dim)``.

    Returns: ``(scores, [new_state])``: ``(batch, num_heads * num_latents * chunk_size)`` and
    ``[(batch, num_latents * embed_dim)]``.

    Example:
    >>> cell = TLBCell(embed_dim=8, chunk_size=4, num_latents=3, depth=2, r=1, num_heads=2)
    >>> scores, [state] = cell(keras.ops.ones((5, 4, 8)), [keras.ops.zeros((5, 3 * 8))])
    >>> tuple(scores.shape), tuple(state.shape), cell.num_cross_attention
    ((5, 24), (5, 24), 2)
    """

    def __init__(
        self,
        embed_dim,
        chunk_size,
        num_latents,
        depth,
        r,
        num_heads=1,
        mlp_ratio=4,
        dropout_rate=0.0,
        attention_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.embed_dim = require_positive_int("embed_dim", embed_dim)
        self.chunk_size = require_positive_int("chunk_size", chunk_size)
        self.num_latents = require_positive_int("num_latents", num_latents)
        self.depth = require_positive_int("depth", depth)
        self.r = require_positive_int("r", r)
        self.num_heads = require_positive_int("num_heads", num_heads)
        require_heads_divide(embed_dim, num_heads)
        self.mlp_ratio = require_number_at_least("mlp_ratio", mlp_ratio, 1)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)
        # What keras.layers.RNN reads: the flat sizes of the state and of the per-step output.
        self.state_size = num_latents * embed_dim
        self.output_size = num_heads * num_latents * chunk_size

    @property
    def num_cross_attention(self):
        """How many perceptual cross-attention blocks there are: ``ceil(depth / r)``."""
        return math.ceil(self.depth / self.r)

    def build(self, inputs_shape, states_shape=None):
        expected = (self.chunk_size, self.embed_dim)
        if len(inputs_shape) != 3 or tuple(inputs_shape[1:]) != expected:
            raise ValueError(
                f"TLBCell was configured for chunks of shape (batch, {expected[0]}, {expected[1]}) "
                f"but received {tuple(inputs_shape)}: build it with the chunk_size and embed_dim of the "
                "ChunkedPatchEmbedding in front of it."
            )
        block = dict(
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
        )
        chunk_shape = (inputs_shape[0], self.chunk_size, self.embed_dim)
        latent_shape = (inputs_shape[0], self.num_latents, self.embed_dim)
        self.self_attention = []
        for i in range(self.depth):
            sa = AttentionBlock(**block, name=f"perceptual_self_attention_{i}")
            sa.build(chunk_shape)
            self.self_attention.append(sa)
        self.cross_attention = []
        for j in range(self.num_cross_attention):
            ca = AttentionBlock(**block, cross_attention=True, name=f"perceptual_cross_attention_{j}")
            ca.build(chunk_shape, latent_shape)
            self.cross_attention.append(ca)
        self.latent_update = AttentionBlock(**block, cross_attention=True, name="latent_update")
        self.latent_update.build(latent_shape, chunk_shape)

    def call(self, inputs, states, training=None):
        slow = ops.reshape(states[0], (-1, self.num_latents, self.embed_dim))
        fast = inputs
        for i, self_attention in enumerate(self.self_attention):
            fast, _ = self_attention(fast, training=training)
            if i % self.r == 0:
                fast, _ = self.cross_attention[i // self.r](fast, slow, training=training)
        slow, scores = self.latent_update(slow, fast, training=training)
        flat_scores = ops.reshape(scores, (-1, self.output_size))
        return flat_scores, [ops.reshape(slow, (-1, self.state_size))]

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            chunk_size=self.chunk_size,
            num_latents=self.num_latents,
            depth=self.depth,
            r=self.r,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TemporalLatentBottleneck(layers.Layer):
    """Run :class:`TLBCell` over a sequence of chunks with ``keras.layers.RNN``.

    The slow stream starts from ``num_latents`` learned vectors (the same for every image; the keras.io
    example starts from zeros) and is updated once per chunk, in order. The layer returns the final slow
    stream and, for every chunk, the attention probabilities of the slow-stream update over that chunk's
    tokens (the RNN's per-step outputs).

    On the JAX backend, a cell with dropout cannot run inside ``lax.scan`` (drawing random numbers
    advances a seed variable inside the traced loop), so there the loop is unrolled at trace time when
    dropout is active; TensorFlow (``tf.while_loop``) and PyTorch keep the loop. Same weights, same maths.

    Args:
        num_latents: vectors in the slow stream.
        depth, r, num_heads, mlp_ratio, dropout_rate, attention_dropout: see :class:`TLBCell`.

    Shapes: ``(batch, num_chunks, chunk_size, channels)`` -> ``(slow_stream, scores)`` with
    ``slow_stream`` ``(batch, num_latents, channels)`` and
    ``scores`` ``(batch, num_chunks, num_heads, num_latents, chunk_size)``.

    Example:
    >>> bottleneck = TemporalLatentBottleneck(num_latents=3, depth=2, r=1, num_heads=2)
    >>> slow_stream, scores = bottleneck(keras.ops.ones((5, 4, 8, 32)))
    >>> tuple(slow_stream.shape), tuple(scores.shape)
    ((5, 3, 32), (5, 4, 2, 3, 8))
    """

    cell_class = TLBCell  # a subclass may run another cell with the same arguments (e.g. for a benchmark)

    def __init__(
        self,
        num_latents,
        depth,
        r,
        num_heads=1,
        mlp_ratio=4,
        dropout_rate=0.0,
        attention_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_latents = require_positive_int("num_latents", num_latents)
        self.depth = require_positive_int("depth", depth)
        self.r = require_positive_int("r", r)
        self.num_heads = require_positive_int("num_heads", num_heads)
        self.mlp_ratio = require_number_at_least("mlp_ratio", mlp_ratio, 1)
        self.dropout_rate = require_rate("dropout_rate", dropout_rate)
        self.attention_dropout = require_rate("attention_dropout", attention_dropout)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in tuple(input_shape[1:]):
            raise ValueError(
                "TemporalLatentBottleneck expects chunks shaped (batch, num_chunks, chunk_size, channels) "
                f"with known sizes (see ChunkedPatchEmbedding), got {tuple(input_shape)}."
            )
        _, _, chunk_size, channels = input_shape
        self.initial_latents = self.add_weight(
            name="initial_latents",
            shape=(self.num_latents, channels),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self.cell = self.cell_class(
            embed_dim=channels,
            chunk_size=chunk_size,
            num_latents=self.num_latents,
            depth=self.depth,
            r=self.r,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
            name="cell",
        )
        has_dropout = self.dropout_rate > 0 or self.attention_dropout > 0
        self.recurrence = layers.RNN(
            self.cell,
            return_sequences=True,
            return_state=True,
            unroll=keras.backend.backend() == "jax" and has_dropout,
            name="recurrence",
        )
        self.recurrence.build(input_shape)

    def call(self, chunks, training=None):
        batch = ops.shape(chunks)[0]
        flat = ops.reshape(ops.cast(self.initial_latents, chunks.dtype), (1, -1))
        initial_state = ops.tile(flat, (batch, 1))
        scores, final_state = self.recurrence(chunks, initial_state=[initial_state], training=training)
        num_chunks, chunk_size, channels = chunks.shape[1], chunks.shape[2], chunks.shape[3]
        slow_stream = ops.reshape(final_state, (-1, self.num_latents, channels))
        scores = ops.reshape(scores, (-1, num_chunks, self.num_heads, self.num_latents, chunk_size))
        return slow_stream, scores

    def compute_output_shape(self, input_shape):
        batch, num_chunks, chunk_size, channels = input_shape
        return (
            (batch, self.num_latents, channels),
            (batch, num_chunks, self.num_heads, self.num_latents, chunk_size),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_latents=self.num_latents,
            depth=self.depth,
            r=self.r,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            dropout_rate=self.dropout_rate,
            attention_dropout=self.attention_dropout,
        )
        return config


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
def build_model(
    *,
    image_size=32,
    patch_size=4,
    embed_dim=64,
    chunk_size=8,
    num_latents=8,
    depth=4,
    r=2,
    num_heads=1,
    mlp_ratio=4,
    dropout_rate=0.0,
    attention_dropout=0.0,
    num_classes=10,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    name="temporal_latent_bottleneck",
):
    """Build the Temporal Latent Bottleneck classifier: uint8 images -> logits.

    ``preprocessing -> ChunkedPatchEmbedding -> TemporalLatentBottleneck -> LayerNorm -> mean over the
    latents -> Dense``. The classifier reads the final slow stream, so everything the model knows about
    the image has passed through the bottleneck (the keras.io example reads the fast stream of the last
    chunk instead, which the slow stream only conditions).

    Args:
        image_size: side of the square images the model sees (the inputs are resized and cropped to it).
        patch_size: patch side in pixels; must divide ``image_size``.
        embed_dim: token and latent width.
        chunk_size: patch tokens per chunk; must divide ``(image_size / patch_size) ** 2``.
        num_latents: vectors in the slow stream.
        depth: self-attention blocks in the perceptual module (the fast stream).
        r: a perceptual cross-attention to the slow stream follows self-attention layers 0, r, 2r, ...
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_ratio: feed-forward hidden width / ``embed_dim``.
        dropout_rate, attention_dropout: feed-forward and attention-probability dropout.
        num_classes: outputs of the classifier.
        input_size: side of the uint8 images the model is fed (32 for CIFAR-10).
        resize_to: side to resize to before the (random in training, centre at inference) crop; default
            ``image_size + image_size // 8``.
        include_preprocessing: if False the model takes float images ``(batch, image_size, image_size, 3)``
            in [0, 1] as they are.
        name: model name.

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 -> ``(batch, num_classes)`` logits.

    Example:
    >>> model = build_model(image_size=16, patch_size=4, embed_dim=8, chunk_size=4, num_latents=2, depth=1, r=1)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    """
    check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes)
    side = image_size // patch_size
    _require_chunking(side * side, require_positive_int("chunk_size", chunk_size), (side, side))
    bottleneck = TemporalLatentBottleneck(
        num_latents=num_latents,
        depth=depth,
        r=r,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        dropout_rate=dropout_rate,
        attention_dropout=attention_dropout,
        name="temporal_latent_bottleneck",
    )
    inputs, images = image_input(image_size, input_size, resize_to, include_preprocessing)
    chunks = ChunkedPatchEmbedding(patch_size, embed_dim, chunk_size, name="chunked_patches")(images)
    slow_stream, _ = bottleneck(chunks)
    x = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="final_norm")(slow_stream)
    x = layers.GlobalAveragePooling1D(name="mean_over_latents")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return ImageModel(inputs, logits, name=name)


def build_baseline(**model_args):
    """The course's plain ViT with the width, depth, heads, MLP ratio, patches and images of :func:`build_model`.

    ``model_args`` are :func:`build_model`'s (a profile's ``model``); the bottleneck's own (chunks,
    latents, ``r``) are dropped and the rest, with :func:`build_model`'s
    defaults for those not given (``num_heads=1``, ``mlp_ratio=4``, ...), go to
    :func:`course_utils.models.vit.build_vit`: ``depth`` Transformer blocks over *all* the patch tokens at
    once, no chunks and no slow stream. The name defaults to ``"vit"``.

    Example:
    >>> baseline = build_baseline(image_size=16, patch_size=4, embed_dim=8, chunk_size=4, num_latents=2, depth=1)
    >>> baseline.name, tuple(baseline.get_layer("block_0").output[0].shape)
    ('vit', (None, 16, 8))
    """
    return build_vit_like(build_model, model_args)


def visualization_model(model):
    """A model on the same weights as ``model`` that also returns the slow stream's attention.

    Outputs a dict: ``"logits"`` ``(batch, num_classes)`` and ``"slow_stream_attention"``
    ``(batch, num_chunks, num_heads, num_latents, chunk_size)``: for every chunk, how each latent of the
    slow stream spread its attention over that chunk's tokens when it was updated. Nothing is copied or
    unrolled: these are the RNN's per-step outputs of the very graph that ``fit`` trains. A ValueError for
    a model without a :class:`TemporalLatentBottleneck` (the ViT baseline has no slow stream to show).
    """
    _, scores = find_layer(model, TemporalLatentBottleneck, BUILDER).output
    return with_outputs(model, {ATTENTION_OUTPUT: scores})


def chunk_maps(scores):
    """Slow-stream attention per chunk, placed on the patch grid: a numpy ``(batch, num_chunks, grid, grid)``.

    ``scores`` ``(batch, num_chunks, num_heads, num_latents, chunk_size)`` (the visualization model's
    ``"slow_stream_attention"``) is averaged over heads and latents, so each chunk's map sums to 1, and put
    at the chunk's patches in raster order; patches outside the chunk are 0.

    Example:
    >>> scores = np.zeros((1, 2, 1, 1, 2))
    >>> scores[..., 0] = 1.0  # each chunk of two tokens attends to its first token
    >>> chunk_maps(scores)[0].tolist()
    [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]
    """
    scores = np.asarray(scores, dtype="float32")
    batch, num_chunks, _, _, chunk_size = scores.shape
    num_patches = num_chunks * chunk_size
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ValueError(f"Cannot lay {num_patches} patches ({num_chunks} chunks of {chunk_size}) on a square grid.")
    per_token = scores.mean(axis=(2, 3))  # (batch, num_chunks, chunk_size)
    maps = np.zeros((batch, num_chunks, num_patches), dtype="float32")
    for k in range(num_chunks):
        maps[:, k, k * chunk_size : (k + 1) * chunk_size] = per_token[:, k]
    return maps.reshape(batch, num_chunks, grid, grid)


def analyze(model, images, batch_size=128):
    """Class probabilities and slow-stream attention maps on the patch grid, for ``viz.explore``.

    ``model`` is a :func:`build_model` classifier or, cheaper when called often, its
    :func:`visualization_model`; ``images`` (uint8 CIFAR images for the course's models) are predicted
    ``batch_size`` at a time. The :class:`course_utils.analysis.Analysis` it returns holds softmax
    probabilities ``(batch, num_classes)`` and two unsigned :class:`MapSet` on the ``grid x grid`` patch grid:
    ``"slow-stream attention, chunk by chunk"`` ``(batch, num_chunks, grid, grid)`` with items ``("chunk 1",
    ...)`` (see :func:`chunk_maps`: the image read one chunk at a time) and ``"slow-stream attention, all
    chunks"`` ``(batch, 1, grid, grid)``, their sum: the whole image at the end of the sequence.
    """
    outputs = predict_outputs(model, visualization_model, images, batch_size)
    per_chunk = chunk_maps(outputs[ATTENTION_OUTPUT])
    description = "the slow stream's attention on a patch when it read the patch's chunk (mean over heads and latents)"
    maps = {
        "slow-stream attention, chunk by chunk": MapSet(
            per_chunk, items=numbered("chunk", per_chunk.shape[1]), signed=False,
            description=description + "; each chunk's map sums to 1",
        ),
        "slow-stream attention, all chunks": MapSet(
            per_chunk.sum(axis=1, keepdims=True), items=("all chunks",), signed=False,
            description=description + ", all chunks on one grid",
        ),
    }
    return analysis(outputs, maps)


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
        model=dict(
            image_size=32, patch_size=8, embed_dim=32, chunk_size=4, num_latents=4, depth=2, r=1,
            num_heads=1,
        ),
        note="a tiny model on 512 images: only checks that the notebook runs end to end",
    ),
    "workshop": Profile(
        name="workshop",
        epochs=4,
        batch_size=128,
        train_samples=8_000,
        eval_samples=2_000,
        learning_rate=3e-3,
        weight_decay=1e-4,
        warmup_epochs=0.5,
        model=dict(
            image_size=32, patch_size=4, embed_dim=64, chunk_size=16, num_latents=8, depth=2, r=1,
            num_heads=2,
        ),
        note=(
            "sized for a 2-core CPU: 64 patch tokens in 4 chunks of 16 (two patch rows each), 8 latents, "
            "2 perceptual layers each followed by a cross-attention to the slow stream; 4 epochs on 8,000 "
            "images. The notebook's committed outputs hold a measured run (time and accuracy)"
        ),
    ),
    "full": Profile(
        name="full",
        epochs=30,
        batch_size=1024,
        train_samples=None,
        eval_samples=None,
        learning_rate=5e-5,
        weight_decay=1e-4,
        model=dict(
            image_size=48, resize_to=52, patch_size=4, embed_dim=64, chunk_size=8, num_latents=8,
            depth=4, r=2, num_heads=1, mlp_ratio=4, dropout_rate=0.2, attention_dropout=0.2,
        ),
        note=(
            "the keras.io example's size and data (48 px crops of 52 px, 4 px patches, 18 chunks of 8, 4 "
            "perceptual layers, r=2, width 64, 1 head, MLP 4x, dropout 0.2 in the feed-forward networks and on "
            "the attention weights, AdamW wd 1e-4, 30 epochs on 40,000 images), except: batch 1024 at rate 5e-5 "
            "in float32 (its 2048 at 1e-4 in float16 does not fit a 16 GB T4 in float32; the rate is halved with "
            "the batch); cosine decay (its rate is constant); the classifier reads the final slow stream after a "
            "LayerNorm (it reads the last chunk's fast stream); the slow stream starts from 8 learned vectors "
            "(it starts from zeros, and ties their number to the chunk size); the fast stream runs 4 "
            "self-attention and 2 cross-attention blocks, each once per chunk (its loop makes 6 self-attention "
            "and 3 cross-attention passes); one LayerNorm for a cross-attention's keys and values (it normalises "
            "queries, keys and values separately); "
            "evaluation centre-crops the 52 px resize (it resizes to 48 px); batches reshuffled every epoch, none "
            "dropped (it shuffles once and drops the last partial batch); test accuracy reported (it reports "
            "validation)"
        ),
    ),
}
