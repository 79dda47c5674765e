"""``benchmarks/tlb_input_pipeline.py`` runs end to end and prints every row (timings are not checked).

The smoke configuration, 16-image batches and one timed step keep it short; the figures quoted in
docs/benchmarks.md come from the full configuration at batch 1024 on a quiet machine.
"""

import importlib.util
import pathlib
import re

import keras

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPOSITORY / "benchmarks" / "tlb_input_pipeline.py"


def load_script():
    spec = importlib.util.spec_from_file_location("tlb_input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_measurement_is_printed_with_a_positive_rate(capsys):
    script = load_script()
    rows = script.main(["--config", "smoke", "--batch-size", "16", "--steps", "1", "--example", "both"])
    names = [name for name, _ in rows]
    assert len(names) == 10 and len(set(names)) == 10
    assert all(value > 0 for _, value in rows)
    assert any("example-like model alone, mixed_float16" in name for name in names)
    printed = capsys.readouterr().out
    for name, _ in rows:
        assert re.search(re.escape(name) + r"\s+[\d,]+\s+[\d.]+", printed), name
    assert "training with in-model augmentation runs at" in printed
    assert re.search(r"matrix products take \d+% of the time of our model's training step", printed)


def test_training_products_cover_every_dense_layer_of_the_cell_three_times():
    """Forward, input gradient and weight gradient for each kernel; six attention products per block."""
    script = load_script()
    config = dict(script.tlb.PROFILES["full"].model, include_preprocessing=False)
    cell = script.find_layer(script.tlb.build_model(**config), script.tlb.TemporalLatentBottleneck,
                             script.tlb.BUILDER).cell
    batch = 3
    products = script.training_products(cell, batch)
    kernels = [weight for weight in cell.trainable_weights if weight.path.endswith("kernel")]
    blocks = cell.depth + cell.num_cross_attention + 1
    dense = [(left, right) for left, right in products if len(left) == 2]
    attention = [(left, right) for left, right in products if len(left) == 4]
    assert len(kernels) == 6 * blocks
    assert len(dense) == 3 * len(kernels) and len(attention) == 6 * blocks
    assert all(left[-1] == right[-2] for left, right in products)  # every product is well formed
    flops = sum(2 * left[0] * left[1] * right[1] for left, right in dense)
    forward = sum(2 * batch * cell.chunk_size * kernel.shape[0] * kernel.shape[1] for kernel in kernels)
    assert flops == 3 * forward  # chunk_size == num_latents in this config, so every layer sees the same rows


def test_example_like_cell_makes_the_examples_ten_block_calls_per_chunk():
    """4 layers, r = 2: 6 listed blocks, the ones at positions 0, 2, 4 called twice, plus the latent update."""
    script = load_script()
    config = dict(script.tlb.PROFILES["full"].model, image_size=16, resize_to=None)
    model = script.build_example_like(**config)
    calls = []
    cell = next(layer for layer in model.layers if isinstance(layer, script.ExampleLikeBottleneck)).cell
    for block in cell.listed + [cell.latent_update]:
        original = block.call

        def counting(*args, _block=block, _original=original, **kwargs):
            calls.append((_block.name, kwargs.get("stream", "fast")))
            return _original(*args, **kwargs)

        block.call = counting
    chunk = keras.ops.zeros((1, cell.chunk_size, cell.embed_dim))
    state = keras.ops.zeros((1, cell.state_size))
    cell(chunk, [state])
    assert len(calls) == 10
    assert [stream for _, stream in calls].count("slow") == 3
    assert calls[-1][0] == "latent_update"
