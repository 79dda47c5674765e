"""Count a model's floating-point operations from its compiled graph.

The count comes from XLA's cost analysis of the model's inference graph (a multiply-add counts as two
operations), so it covers every layer, custom ones included, without a hand-written table per layer
type. XLA needs JAX: on the JAX backend the model is compiled in place; on TensorFlow or PyTorch it is
saved to a temporary ``.keras`` file and analysed in a JAX subprocess, which takes a few seconds.

Run as a script: ``python -m course_utils.flops MODEL.keras`` prints FLOPs per image.
"""

import importlib
import os
import subprocess
import sys
import tempfile

import keras


def count_flops(model, batch_size=1):
    """FLOPs of one forward pass (inference mode) per image.

    Args:
        model: a Keras model with one image input whose shape is fully known apart from the batch.
        batch_size: batch to compile with; the total is divided by it.

    Returns:
        An int: floating-point operations per image.
    """
    if keras.backend.backend() == "jax":
        return _flops_with_jax(model, batch_size)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
        completed = subprocess.run(
            [sys.executable, "-m", "course_utils.flops", path, str(batch_size)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(
            "Counting FLOPs needs JAX (XLA's cost analysis). Install it with `pip install jax`; "
            f"the JAX subprocess said:\n{completed.stderr[-2000:]}"
        )
    return int(completed.stdout.strip().splitlines()[-1])


def _flops_with_jax(model, batch_size):
    import jax

    if len(model.inputs) != 1:
        raise ValueError(f"count_flops expects a model with one input, {model.name!r} has {len(model.inputs)}.")
    shape = (batch_size,) + tuple(model.inputs[0].shape[1:])
    if None in shape:
        raise ValueError(f"count_flops needs a fully known input shape, got {shape}.")
    images = jax.ShapeDtypeStruct(shape, model.inputs[0].dtype)
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]

    def forward(trainable, non_trainable, images):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return outputs

    cost = jax.jit(forward).lower(trainable, non_trainable, images).compile().cost_analysis()
    # Older JAX versions wrap the dictionary in a one-element list.
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return int(round(cost["flops"] / batch_size))


def _main(argv):
    if keras.backend.backend() != "jax":
        raise SystemExit("Run this module with KERAS_BACKEND=jax.")
    importlib.import_module("course_utils.models").import_all()  # registers the course's layers so the model loads
    path, batch_size = argv[0], int(argv[1]) if len(argv) > 1 else 1
    print(_flops_with_jax(keras.saving.load_model(path), batch_size))


if __name__ == "__main__":
    _main(sys.argv[1:])
