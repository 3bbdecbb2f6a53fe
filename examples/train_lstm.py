"""Train an LSTM on scikit-learn's 8x8 handwritten digits with gpunn.

    PYTHONPATH=. python examples/train_lstm.py [--epochs 20] [--device cpu|emu|cuda]

Each digit is read top to bottom as a sequence of 8 rows of 8 pixels (T=8, I=8); the model
(gpunn.train.build_model("lstm")) is LSTM(8, 64) -> the last hidden state -> Linear(64, 10),
trained with Adam on cross-entropy: about 97-99% test accuracy in a few seconds on a CPU.
Importable: ``main(epochs=..., device=...)`` returns the result dict.
"""

from __future__ import annotations

from gpunn import train

MODEL = "lstm"


def main(epochs=None, batch_size=train.DEFAULT_BATCH_SIZE, lr=None, seed=0, device="cpu"):
    return train.run_example(
        MODEL, print, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device
    )


if __name__ == "__main__":
    train.example_main(MODEL)
