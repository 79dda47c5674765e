"""The course's one plain Vision Transformer: the baseline that notebooks 01, 04 and 05 compare against.

``uint8 images -> preprocessing -> patch embedding + positions -> depth x TransformerBlock -> LayerNorm ->
mean over tokens -> Dense logits``. :mod:`course_utils.models.token_learner` builds its model from the
same three pieces (:func:`patch_tokens`, :func:`transformer_blocks`, :func:`classifier_head`) with a
TokenLearner between two runs of blocks, so "ViT" and "ViT + TokenLearner" differ in that layer alone.
"""

import inspect

import keras
from keras import layers

from course_utils.models.blocks import PatchEmbedding, PositionEmbedding, TransformerBlock
from course_utils.models.common import ImageModel, image_input
from course_utils.validation import require_divisible, require_heads_divide, require_positive_int

LAYER_NORM_EPSILON = 1e-6


def patch_tokens(images, patch_size, embed_dim, dropout_rate=0.0):
    """Cut ``images`` into patches and embed them: ``(batch, side, side, 3)`` -> ``(batch, tokens, embed_dim)``.

    A learned position vector is added to every token, then dropout (layers ``patch_embedding``,
    ``position_embedding``, ``embedding_dropout``).
    """
    tokens = PatchEmbedding(patch_size, embed_dim, name="patch_embedding")(images)
    tokens = PositionEmbedding(name="position_embedding")(tokens)
    return layers.Dropout(dropout_rate, name="embedding_dropout")(tokens)


def transformer_blocks(tokens, indices, num_heads, mlp_ratio, dropout_rate=0.0, attention_dropout=0.0):
    """Apply one :class:`TransformerBlock` per index in ``indices`` (layers ``block_<index>``)."""
    for index in indices:
        tokens, _ = TransformerBlock(
            num_heads,
            mlp_ratio=mlp_ratio,
            dropout_rate=dropout_rate,
            attention_dropout=attention_dropout,
            layer_norm_epsilon=LAYER_NORM_EPSILON,
            name=f"block_{index}",
        )(tokens)
    return tokens


def classifier_head(tokens, num_classes):
    """``(batch, tokens, channels)`` -> LayerNorm -> mean over tokens -> Dense -> logits ``(batch, num_classes)``."""
    tokens = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="final_norm")(tokens)
    pooled = layers.GlobalAveragePooling1D(name="pool")(tokens)
    return layers.Dense(num_classes, name="logits")(pooled)


def check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes):
    """The checks every ViT-shaped builder makes, with messages that name the fix."""
    for name, value in (("image_size", image_size), ("patch_size", patch_size), ("embed_dim", embed_dim),
                        ("depth", depth), ("num_heads", num_heads), ("num_classes", num_classes)):
        require_positive_int(name, value)
    require_divisible("image_size", image_size, "patch_size", patch_size)
    require_heads_divide(embed_dim, num_heads)


def build_vit(
    image_size=32,
    patch_size=4,
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    dropout_rate=0.0,
    attention_dropout=0.0,
    num_classes=10,
    input_size=32,
    resize_to=None,
    include_preprocessing=True,
    name="vit",
):
    """A plain ViT classifier for CIFAR-10: uint8 images -> logits.

    Args:
        image_size: side of the (cropped) image the ViT sees; ``patch_size`` must divide it.
        patch_size: side of a square patch: ``(image_size / patch_size) ** 2`` tokens.
        embed_dim: token width; ``num_heads`` must divide it.
        depth: number of Transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        dropout_rate: dropout after the embedding and inside the MLPs.
        attention_dropout: dropout on the attention weights.
        num_classes: output logits.
        input_size: side of the uint8 images the model is fed (32 for CIFAR-10).
        resize_to: resize before the random/centre crop (default ``image_size + image_size // 8``).
        include_preprocessing: if False, the model takes float images ``(batch, image_size, image_size, 3)``
            in [0, 1] as they are.
        name: model name.

    Shapes: ``(batch, input_size, input_size, 3)`` uint8 -> ``(batch, num_classes)`` logits.

    Example:
    >>> model = build_vit(image_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    >>> model.input_shape, model.output_shape
    ((None, 32, 32, 3), (None, 10))
    """
    check_vit_arguments(image_size, patch_size, embed_dim, depth, num_heads, num_classes)
    inputs, images = image_input(image_size, input_size, resize_to, include_preprocessing)
    tokens = patch_tokens(images, patch_size, embed_dim, dropout_rate)
    tokens = transformer_blocks(tokens, range(depth), num_heads, mlp_ratio, dropout_rate, attention_dropout)
    return ImageModel(inputs, classifier_head(tokens, num_classes), name=name)


def builder_arguments(builder, model_args):
    """``builder``'s arguments as ``builder(**model_args)`` would see them, defaults filled in.

    An argument ``builder`` does not take is a TypeError that names it.

    Example:
    >>> def build_model(*, width=32, depth=2):
    ...     pass
    >>> builder_arguments(build_model, {"depth": 4})
    {'width': 32, 'depth': 4}
    """
    bound = inspect.signature(builder).bind(**model_args)
    bound.apply_defaults()
    return dict(bound.arguments)


def build_vit_like(builder, model_args, **overrides):
    """The plain ViT sized like ``builder(**model_args)``: the baseline a notebook compares a model with.

    ``model_args`` are ``builder``'s arguments (a profile's ``model``); with ``builder``'s defaults for the
    ones not given, every argument that :func:`build_vit` also takes is passed on (the same image sizes,
    patches, width, depth, heads, MLP ratio and dropout), the model's own ones (tokens, chunks, ...) are
    left out, and ``overrides`` set what has no counterpart under the same name. An argument ``builder``
    does not take is a TypeError. The model is named ``"vit"`` unless ``model_args`` names it.

    Example:
    >>> def build_model(*, embed_dim=32, depth=2, num_tokens=8, name="with_tokens"):
    ...     pass
    >>> baseline = build_vit_like(build_model, {"depth": 1}, image_size=16, num_heads=2)
    >>> baseline.name, len([layer for layer in baseline.layers if isinstance(layer, TransformerBlock)])
    ('vit', 1)
    """
    shared = set(inspect.signature(build_vit).parameters) - {"name"}
    arguments = {key: value for key, value in builder_arguments(builder, model_args).items() if key in shared}
    return build_vit(**{**arguments, **overrides, "name": model_args.get("name", "vit")})
