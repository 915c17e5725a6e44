"""The lesson's conv/pool classifier (exactly its layers; 243,786 parameters).

Example::

    from training.model import build_model
    build_model().summary()
"""

from __future__ import annotations

import keras

from serving.contract import INPUT_KEY, INPUT_SHAPE, NUM_CLASSES, OUTPUT_PROBABILITIES

EXPECTED_PARAMS = 243_786


def build_model(seed: int | None = None) -> keras.Model:
    """Build the seed network: Conv(64,3x3) → MaxPool(2) → Conv(64,3x3) → MaxPool(2) → Dense(128) → Dense(10).

    Input: float32 ``[N,28,28,1]`` in [0,1]; output: softmax probabilities ``[N,10]``.
    ``seed`` makes the weight initialisation reproducible.
    """
    init = (
        (lambda i: keras.initializers.GlorotUniform(seed=seed + i))
        if seed is not None
        else (lambda i: "glorot_uniform")
    )
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name=INPUT_KEY),
            keras.layers.Conv2D(
                64, (3, 3), activation="relu", kernel_initializer=init(0), name="conv1"
            ),
            keras.layers.MaxPooling2D(2, 2, name="pool1"),
            keras.layers.Conv2D(
                64, (3, 3), activation="relu", kernel_initializer=init(1), name="conv2"
            ),
            keras.layers.MaxPooling2D(2, 2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", kernel_initializer=init(2), name="dense"),
            keras.layers.Dense(
                NUM_CLASSES,
                activation="softmax",
                kernel_initializer=init(3),
                name=OUTPUT_PROBABILITIES,
            ),
        ],
        name="fashion_mnist_convnet",
    )
