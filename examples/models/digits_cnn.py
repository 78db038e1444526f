"""The bundled default model: a small CNN for 8x8 handwritten digits.

Trained by ``examples/train_digits.py`` on scikit-learn's ``load_digits()``
(pixel values scaled to [0, 1]).  Only Conv2d, ReLU, Flatten and Linear.
"""
from pathlib import Path

import torch
import torch.nn as nn

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CHECKPOINT = DATA_DIR / "digits_cnn.pt"
SAMPLES = DATA_DIR / "digits_samples.pt"


class DigitsCNN(nn.Module):
    """Input (N, 1, 8, 8) in [0, 1] -> logits (N, 10)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),              # 8 x 8 x 8
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),   # 16 x 4 x 4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.net(x)


def load_default(device="cpu") -> DigitsCNN:
    """The bundled trained DigitsCNN, in eval mode."""
    model = DigitsCNN()
    state = torch.load(CHECKPOINT, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def load_samples():
    """The 10 bundled test images (10, 1, 8, 8) float32 in [0, 1] and labels (10,) int64."""
    data = torch.load(SAMPLES, map_location="cpu", weights_only=True)
    return data["images"].float(), data["labels"].long()
