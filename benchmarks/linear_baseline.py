"""What a CIFAR-10 accuracy means: the test accuracy of a linear classifier on raw pixels.

A notebook's "47% after two minutes" reads differently once you know what the simplest model reaches. This
script trains softmax regression (one Dense layer on the 3,072 pixel values scaled to [0, 1], no hidden
layer, no augmentation) on the course's 40,000 training images with Adam, keeps the epoch with the best
accuracy on the 10,000 validation images, and prints its accuracy on the 10,000 test images with the device,
backend and date. The notebooks quote the number it printed.

Usage::

    python benchmarks/linear_baseline.py              # 30 epochs, about a minute on a 2-core CPU
    python benchmarks/linear_baseline.py --epochs 5
"""

import argparse
import datetime
import pathlib
import tempfile

import keras
import numpy as np

from course_utils.data import CLASS_NAMES, load_cifar10, train_val_split
from course_utils.distribute import describe_device


def linear_classifier(num_classes=len(CLASS_NAMES)):
    """Softmax regression on raw pixels: uint8 ``(batch, 32, 32, 3)`` -> logits ``(batch, num_classes)``."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    pixels = keras.layers.Rescaling(1 / 255)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(pixels), name="linear")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_cifar10()
    (x_train, y_train), (x_val, y_val) = train_val_split(x_train, y_train)  # the notebooks' 40,000 / 10,000
    model = linear_classifier()
    model.compile(keras.optimizers.Adam(args.learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    with tempfile.TemporaryDirectory() as folder:
        best = keras.callbacks.ModelCheckpoint(str(pathlib.Path(folder) / "best.weights.h5"), monitor="val_accuracy",
                                               save_best_only=True, save_weights_only=True)
        history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, batch_size=128,
                            callbacks=[best], verbose=0)
        model.load_weights(best.filepath)
    best_epoch = int(np.argmax(history.history["val_accuracy"])) + 1
    _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"| model | epochs (best) | validation | test | device | backend | date |\n|---|---:|---:|---:|---|---|---|")
    print(f"| linear classifier on raw pixels | {args.epochs} ({best_epoch}) | "
          f"{max(history.history['val_accuracy']):.1%} | {test_accuracy:.1%} | {describe_device()} | "
          f"{keras.backend.backend()} | {datetime.date.today()} |")


if __name__ == "__main__":
    main()
