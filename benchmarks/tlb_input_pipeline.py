"""How fast does the Temporal Latent Bottleneck train, and what does the input path cost?

Prints one table, measured in one run on the current machine and Keras backend:

1. in-model augmentation alone: uint8 arrays -> ``fit`` of the preprocessing layers (rescale, resize,
   random crop, random flip) followed by a linear probe, i.e. the input path our models use with almost
   no model behind it;
2. per-sample Python augmentation alone: a ``keras.utils.PyDataset`` whose ``__getitem__`` resizes,
   crops and flips every image on its own in Python (the reference example's design), timed without a
   model, once with PIL/numpy and once with Keras layers called on each image as the example does;
3. the TLB model alone, fed images that were augmented beforehand (float arrays in memory);
4. the TLB model with in-model augmentation (uint8 arrays -> ``fit``): what the course does;
5. the TLB model fed by the per-sample Python pipeline;
6. (``--example``) a stand-in for the reference example's model, timed alone like row 3: the same
   configuration, the example's kind of block (``keras.layers.MultiHeadAttention`` behind three
   LayerNorms) and its per-chunk call pattern (see ``ExampleLikeCell``), in float32 and/or under the
   ``mixed_float16`` policy the example sets globally;
7. the matrix products alone: every product one training step of the TLB computes (forward and
   backward; for its dense layers, then for those and its attentions), timed in one compiled function on
   arrays of the same shapes and nothing else. Against row 3 it shows what share of the model's step is
   matrix products and what share is everything else (see ``matrix_products_alone``).

Throughput is measured in steady state: the first step of every ``fit`` (tracing and compilation) is
left out, and images/s come from the time between the ends of the remaining steps.

Usage::

    python benchmarks/tlb_input_pipeline.py --config full --batch-size 1024 --steps 3
    KERAS_BACKEND=jax python benchmarks/tlb_input_pipeline.py --config workshop --steps 10

On a shared machine the numbers move with the load of other processes; compare rows of one run.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from course_utils.distribute import describe_device  # noqa: E402
from course_utils.models import temporal_latent_bottleneck as tlb  # noqa: E402
from course_utils.models.common import find_layer, image_input  # noqa: E402
from course_utils.training import classification_loss  # noqa: E402

# Measured by the issue author with the reference example's own code on the course's 2-core CPU,
# TensorFlow backend, its configuration (the `full` profile's model) at batch 1024.
PER_SAMPLE_OPS = {"pil": "PIL/numpy per image", "keras": "Keras layers per image, like the example"}
EXAMPLE_FIGURES = {"python_pipeline_alone": 230.0, "model_alone": 106.0, "model_with_pipeline": 83.0}


class StepTimer(keras.callbacks.Callback):
    """Record when each training step ends."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def steady_images_per_second(ends, batch_size):
    """Images/s from step end times, leaving out the first step (tracing and compilation)."""
    if len(ends) < 2:
        raise ValueError("Need at least two steps (the first is left out): raise --steps.")
    return batch_size * (len(ends) - 1) / (ends[-1] - ends[0])


def fit_throughput(model, data, batch_size, labels=None):
    """Compile ``model`` and fit it once over ``data``; return steady-state images/s."""
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-4),
        loss=classification_loss(),
    )
    timer = StepTimer()
    if labels is None:  # a PyDataset yields (images, labels) itself
        model.fit(data, epochs=1, callbacks=[timer], verbose=0)
    else:
        model.fit(data, labels, batch_size=batch_size, epochs=1, shuffle=False, callbacks=[timer], verbose=0)
    return steady_images_per_second(timer.ends, batch_size)


def compiled(function):
    """``function`` compiled as ``fit`` compiles a training step on this backend (PyTorch: run as is)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return function


def products_seconds(shapes, repeats):
    """Seconds to compute ``keras.ops.matmul(left, right)`` for every ``(left_shape, right_shape)`` in ``shapes``.

    All products run in one compiled function, independent of one another (so the backend may run them
    side by side), on float32 arrays passed in as arguments; the best of ``repeats`` calls is returned.
    Each product is summed to one number so that none of them can be dropped as unused.
    """
    arrays = [(keras.random.normal(left), keras.random.normal(right)) for left, right in shapes]

    def all_products(arrays):
        return [keras.ops.sum(keras.ops.matmul(left, right)) for left, right in arrays]

    run = compiled(all_products)
    keras.ops.convert_to_numpy(run(arrays)[-1])  # tracing and compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        results = run(arrays)
        for result in results:  # waits for every product on backends that dispatch asynchronously (JAX)
            keras.ops.convert_to_numpy(result)
        best = min(best, time.perf_counter() - start)
    return best


def training_products(cell, batch_size):
    """The matrix products one training step of ``cell`` computes per chunk, as ``(left, right)`` shapes.

    For each Dense layer ``y = x W`` applied to ``rows`` tokens: ``x W`` forward, then ``dy W^T`` (the
    gradient for ``x``) and ``x^T dy`` (the gradient for ``W``). For each attention: ``q k^T`` and
    ``weights v`` forward and the four products of their gradients. A block's query-side layers (query,
    projection, feed-forward) run on the queries' tokens; its key and value layers on the context's.
    """
    roles = [(block, cell.chunk_size, cell.chunk_size) for block in cell.self_attention]
    roles += [(block, cell.chunk_size, cell.num_latents) for block in cell.cross_attention]
    roles += [(cell.latent_update, cell.num_latents, cell.chunk_size)]
    products = []
    for block, queries, keys in roles:
        attention, mlp = block.attention, block.mlp
        query_rows, context_rows = batch_size * queries, batch_size * keys
        dense_rows = [(attention.query, query_rows), (attention.key, context_rows), (attention.value, context_rows),
                      (attention.projection, query_rows), (mlp.hidden, query_rows), (mlp.project, query_rows)]
        for dense, rows in dense_rows:
            fan_in, fan_out = dense.kernel.shape
            products += [((rows, fan_in), (fan_in, fan_out)),      # x W
                         ((rows, fan_out), (fan_out, fan_in)),     # dy W^T
                         ((fan_in, rows), (rows, fan_out))]        # x^T dy
        heads = (batch_size, cell.num_heads)
        width = cell.embed_dim // cell.num_heads
        products += [((*heads, queries, width), (*heads, width, keys)),    # q k^T
                     ((*heads, queries, keys), (*heads, keys, width)),     # weights v
                     ((*heads, queries, keys), (*heads, keys, width)),     # d(scores) k
                     ((*heads, keys, queries), (*heads, queries, width)),  # d(scores)^T q
                     ((*heads, queries, width), (*heads, width, keys)),    # d(out) v^T
                     ((*heads, keys, queries), (*heads, queries, width))]  # weights^T d(out)
    return products


def matrix_products_alone(model_kwargs, batch_size, repeats=5):
    """Images/s if a TLB training step computed only its matrix products: ``(dense layers only, all products)``.

    Times the products of :func:`training_products` for one chunk (see :func:`products_seconds`) and scales
    the time to all of an image's chunks. The patch embedding, the classifier and all element-wise work
    (LayerNorm, GELU, softmax, dropout, residual additions, the optimizer) are left out, and the products
    here may all run side by side, where the model must run most of them one after another.
    """
    model = tlb.build_model(**{**model_kwargs, "include_preprocessing": False})
    bottleneck = find_layer(model, tlb.TemporalLatentBottleneck, tlb.BUILDER)
    num_chunks = bottleneck.input.shape[1]
    products = training_products(bottleneck.cell, batch_size)
    dense = [(left, right) for left, right in products if len(left) == 2]
    return tuple(batch_size / (num_chunks * products_seconds(shapes, repeats)) for shapes in (dense, products))


class ExampleLikeBlock(keras.layers.Layer):
    """Timing stand-in for one entry of the reference example's perceptual module (and of its latent update).

    Like the example's block it holds two attention sub-layers, one for reading the chunk ("fast") and one
    for reading the slow stream ("slow"), and one feed-forward network that both share. Each attention
    normalises its query, key and value with three separate LayerNorms and runs
    ``keras.layers.MultiHeadAttention``; the feed-forward network is LayerNorm, Dense(4d, GELU), Dense(d),
    dropout, on a residual path. Only the amount and kind of work matter here, so the layer has no config.
    """

    def __init__(self, num_heads, mlp_ratio, dropout_rate, attention_dropout, streams=("fast", "slow"), **kwargs):
        super().__init__(**kwargs)
        self.stream_names = streams
        self.num_heads, self.mlp_ratio = num_heads, mlp_ratio
        self.dropout_rate, self.attention_dropout = dropout_rate, attention_dropout

    def build(self, query_shape, context_shape):
        channels = query_shape[-1]
        self.streams = {}
        for stream in self.stream_names:  # built here, not inside the traced loop
            norms = [keras.layers.LayerNormalization(epsilon=tlb.LAYER_NORM_EPSILON) for _ in range(3)]
            for norm, shape in zip(norms, (query_shape, context_shape, context_shape)):
                norm.build(shape)
            attention = keras.layers.MultiHeadAttention(self.num_heads, channels // self.num_heads,
                                                        dropout=self.attention_dropout)
            attention.build(query_shape, context_shape)
            self.streams[stream] = (norms, attention)
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=tlb.LAYER_NORM_EPSILON)
        self.ffn_norm.build(query_shape)
        self.ffn = keras.Sequential([keras.layers.Dense(int(self.mlp_ratio * channels), activation="gelu"),
                                     keras.layers.Dense(channels), keras.layers.Dropout(self.dropout_rate)])
        self.ffn.build(query_shape)

    def call(self, query, context, stream="fast", training=None):
        (query_norm, key_norm, value_norm), attention = self.streams[stream]
        attended, scores = attention(query_norm(query), value_norm(context), key_norm(context),
                                     return_attention_scores=True, training=training)
        x = query + attended
        return x + self.ffn(self.ffn_norm(x), training=training), scores


class ExampleLikeCell(tlb.TLBCell):
    """Timing stand-in for the reference example's recurrent cell (same configuration, same amount of work).

    The example keeps one list in which each self-attention entry is followed, at every r-th layer, by a
    cross-attention entry, and walks it applying every entry to the chunk, then applying the entries at
    positions 0, r, 2r, ... of that list a second time, against the slow stream. With 4 layers and r = 2
    that is 9 attention + feed-forward applications per chunk instead of the paper's 6, plus the latent
    update. This cell reproduces that count and order with :class:`ExampleLikeBlock`, the example's kind
    of block; it exists only to be timed.
    """

    def build(self, inputs_shape, states_shape=None):
        chunk_shape = (inputs_shape[0], self.chunk_size, self.embed_dim)
        latent_shape = (inputs_shape[0], self.num_latents, self.embed_dim)
        settings = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
                        attention_dropout=self.attention_dropout)
        names = []
        for i in range(self.depth):
            names.append(f"listed_self_{i}")
            if i % self.r == 0:
                names.append(f"listed_cross_{i}")
        # Blocks whose "slow" attention the example never calls never build it there: left out here too.
        self.listed = [
            ExampleLikeBlock(**settings, streams=("fast", "slow") if position % self.r == 0 else ("fast",), name=name)
            for position, name in enumerate(names)
        ]
        self.latent_update = ExampleLikeBlock(**settings, streams=("fast",), name="latent_update")
        for block in self.listed:
            block.build(chunk_shape, chunk_shape)
        self.latent_update.build(latent_shape, chunk_shape)

    def call(self, inputs, states, training=None):
        slow = keras.ops.reshape(states[0], (-1, self.num_latents, self.embed_dim))
        fast = inputs
        for position, block in enumerate(self.listed):
            fast, _ = block(fast, fast, stream="fast", training=training)
            if position % self.r == 0:
                fast, _ = block(fast, slow, stream="slow", training=training)
        slow, scores = self.latent_update(slow, fast, training=training)
        return keras.ops.reshape(scores, (-1, self.output_size)), [keras.ops.reshape(slow, (-1, self.state_size))]


class ExampleLikeBottleneck(tlb.TemporalLatentBottleneck):
    cell_class = ExampleLikeCell


def build_example_like(image_size, patch_size, embed_dim, chunk_size, num_latents, depth, r, num_heads=1,
                       mlp_ratio=4, dropout_rate=0.0, attention_dropout=0.0, num_classes=10, **unused):
    """The reference example's amount of work per image, on pre-augmented float images."""
    inputs = keras.Input((image_size, image_size, 3))
    chunks = tlb.ChunkedPatchEmbedding(patch_size, embed_dim, chunk_size)(inputs)
    slow, _ = ExampleLikeBottleneck(num_latents, depth, r, num_heads, mlp_ratio, dropout_rate,
                                    attention_dropout)(chunks)
    pooled = keras.layers.GlobalAveragePooling1D()(slow)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(pooled))


def example_like_alone(model_kwargs, pre_augmented, labels, batch_size, policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return fit_throughput(build_example_like(**model_kwargs), pre_augmented, batch_size, labels)
    finally:
        keras.config.set_dtype_policy(previous)


class PerSampleAugmentation(keras.utils.PyDataset):
    """Augment every image on its own, in Python, the way the reference example feeds its model.

    For each image: resize 32 -> ``resize_to`` (PIL, bilinear), take a random ``image_size`` crop, flip it
    left-right with probability 1/2, rescale to [0, 1]. Batches are stacked with numpy. Unlike the
    reference, the order is reshuffled every epoch and the last partial batch is kept.

    ``ops="keras"`` runs Keras preprocessing layers eagerly on each image instead of PIL/numpy, which is
    closer to what the reference example literally does (and much slower).
    """

    def __init__(self, images, labels, batch_size, image_size, resize_to, ops="pil", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.batch_size, self.image_size, self.resize_to = batch_size, image_size, resize_to
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images))
        self.ops = ops
        if ops == "keras":
            self.resize = keras.layers.Resizing(resize_to, resize_to)
            self.crop = keras.layers.RandomCrop(image_size, image_size)
            self.flip = keras.layers.RandomFlip("horizontal")

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.images))

    def augment_pil(self, image):
        resized = np.asarray(Image.fromarray(image).resize((self.resize_to, self.resize_to), Image.BILINEAR))
        top, left = self.rng.integers(0, self.resize_to - self.image_size + 1, size=2)
        crop = resized[top : top + self.image_size, left : left + self.image_size]
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        return crop.astype("float32") / 255.0

    def augment_keras(self, image):
        x = keras.ops.convert_to_tensor(image.astype("float32") / 255.0)
        x = self.flip(self.crop(self.resize(x), training=True), training=True)
        return keras.ops.convert_to_numpy(x)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        augment = self.augment_pil if self.ops == "pil" else self.augment_keras
        batch = np.stack([augment(self.images[i]) for i in rows])
        return batch, self.labels[rows]


def python_pipeline_alone(dataset, batch_size):
    """Images/s of producing batches with ``dataset`` and no model, leaving out the first batch."""
    ends = []
    for index in range(len(dataset)):
        dataset[index]
        ends.append(time.perf_counter())
    return steady_images_per_second(ends, batch_size)


def in_model_augmentation_alone(images, labels, batch_size, image_size, resize_to):
    """Images/s of uint8 arrays -> in-model augmentation -> a linear probe, under ``fit``."""
    inputs, x = image_input(image_size, input_size=32, resize_to=resize_to)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    return fit_throughput(model, images, batch_size, labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=list(tlb.PROFILES), default="full",
                        help="which PROFILES entry's model to time (default: full, the reference example's; "
                             "smoke only checks that the script runs)")
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="images per step (default 1024, as in the measurements quoted in issue 6)")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps per measurement; one more is run first and left out (default 4)")
    parser.add_argument("--per-sample-ops", choices=["pil", "keras"], default="keras",
                        help="how the Python pipeline that feeds the model augments each image: Keras layers "
                             "called eagerly per image, like the reference example (default), or PIL/numpy, a "
                             "faster per-sample pipeline; both are timed alone")
    parser.add_argument("--example", choices=["none", "float32", "mixed_float16", "both"], default="float32",
                        help="also time a stand-in for the reference example's model alone (see ExampleLikeCell), "
                             "in float32 and/or under the mixed_float16 policy the example sets (default float32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be positive")

    keras.utils.set_random_seed(args.seed)
    model_kwargs = dict(tlb.PROFILES[args.config].model)
    image_size = model_kwargs.get("image_size", 32)
    resize_to = model_kwargs.get("resize_to") or image_size + image_size // 8
    batch, count = args.batch_size, args.batch_size * (args.steps + 1)
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(count, 1)).astype("int32")
    pipeline = PerSampleAugmentation(images, labels, batch, image_size, resize_to, ops=args.per_sample_ops)

    print(f"backend {keras.backend.backend()} on {describe_device()}; config {args.config} "
          f"({image_size}px, model {model_kwargs}); batch {batch}; {args.steps} timed steps + 1 left out")
    rows = []

    def measure(name, function):
        start = time.perf_counter()
        value = function()
        rows.append((name, value))
        print(f"  measured {name}: {value:,.0f} images/s ({time.perf_counter() - start:.0f} s)", flush=True)
        return value

    aug_alone = measure("input path alone: in-model augmentation (uint8 arrays -> fit)",
                        lambda: in_model_augmentation_alone(images, labels, batch, image_size, resize_to))
    python_alone = {}
    for ops in ("pil", "keras"):
        per_sample = PerSampleAugmentation(images, labels, batch, image_size, resize_to, ops=ops)
        python_alone[ops] = measure(f"input path alone: per-sample Python pipeline ({PER_SAMPLE_OPS[ops]})",
                                    lambda: python_pipeline_alone(per_sample, batch))
    pre_augmented = np.stack([pipeline.augment_pil(image) for image in images])
    bare = {**model_kwargs, "include_preprocessing": False}
    model_alone = measure("TLB model alone (pre-augmented float arrays)",
                          lambda: fit_throughput(tlb.build_model(**bare), pre_augmented, batch, labels))
    ours = measure("TLB model + in-model augmentation (ours)",
                   lambda: fit_throughput(tlb.build_model(**model_kwargs), images, batch, labels))
    with_python = measure(f"TLB model + per-sample Python pipeline ({PER_SAMPLE_OPS[args.per_sample_ops]})",
                          lambda: fit_throughput(tlb.build_model(**bare), pipeline, batch))
    policies = {"none": [], "both": ["float32", "mixed_float16"]}.get(args.example, [args.example])
    example_rows = {}
    for policy in policies:
        example_rows[policy] = measure(
            f"example-like model alone, {policy} (stand-in, see ExampleLikeCell)",
            lambda: example_like_alone(model_kwargs, pre_augmented, labels, batch, policy),
        )

    dense_rate, products_rate = matrix_products_alone(model_kwargs, batch)  # one timing gives both rows
    dense_alone = measure("matrix products alone: the TLB's dense layers (forward + backward)", lambda: dense_rate)
    products_alone = measure("matrix products alone: dense layers + attentions (forward + backward)",
                             lambda: products_rate)

    print()
    print(f"{'measurement':78s} {'images/s':>10s} {'s/step':>8s}")
    for name, value in rows:
        print(f"{name:78s} {value:10,.0f} {batch / value:8.2f}")
    print()
    for ops, value in python_alone.items():
        target = " (target >= 20x)" if ops == "keras" else " (for comparison: a leaner per-sample pipeline)"
        print(f"input path: in-model augmentation delivers {aug_alone / value:,.1f}x the per-sample pipeline "
              f"({PER_SAMPLE_OPS[ops]}){target}")
    print(f"training with in-model augmentation runs at {ours / model_alone:.0%} of the model alone; "
          f"with the per-sample pipeline at {with_python / model_alone:.0%}")
    print(f"matrix products take {model_alone / products_alone:.0%} of the time of our model's training step "
          f"(its dense layers' products: {model_alone / dense_alone:.0%}); the rest is element-wise work and "
          f"overhead (LayerNorm, GELU, softmax, dropout, residuals, the optimizer)")
    for policy, value in example_rows.items():
        print(f"our model alone vs the example-like model alone ({policy}), same run: {model_alone / value:.1f}x")
    if args.config == "full":
        example = EXAMPLE_FIGURES
        print(f"reference example, same configuration, measured by the issue author on the 2-core course CPU: "
              f"Python pipeline {example['python_pipeline_alone']:.0f}, model alone {example['model_alone']:.0f}, "
              f"together {example['model_with_pipeline']:.0f} images/s")
        print(f"our model alone vs the example's model alone: {model_alone / example['model_alone']:.1f}x "
              f"(target >= 3x; meaningful only on that CPU at batch 1024)")
        print(f"our model's matrix products alone vs the example's model alone: "
              f"{products_alone / example['model_alone']:.1f}x")
        print(f"our training (in-model augmentation) vs the example's training: "
              f"{ours / example['model_with_pipeline']:.1f}x")
    return rows


if __name__ == "__main__":
    main()
