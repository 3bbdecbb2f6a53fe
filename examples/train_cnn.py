"""Train a small CNN on scikit-learn's 8x8 handwritten digits with gpunn.

    PYTHONPATH=. python examples/train_cnn.py [--epochs 15] [--device cpu|emu|cuda]

The model (gpunn.train.build_model("cnn")): Conv2d(1, 16, 3, padding=1) -> ReLU ->
MaxPool2d(2) -> Conv2d(16, 32, 3, padding=1) -> ReLU -> MaxPool2d(2) -> Flatten ->
Linear(128, 10), trained with Adam on cross-entropy: 98-99% test accuracy in a few seconds on
a CPU. Importable: ``main(epochs=..., device=...)`` returns the result dict.
"""

from __future__ import annotations

from gpunn import train

MODEL = "cnn"


def main(epochs=None, batch_size=train.DEFAULT_BATCH_SIZE, lr=None, seed=0, device="cpu"):
    return train.run_example(
        MODEL, print, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device
    )


if __name__ == "__main__":
    train.example_main(MODEL)
