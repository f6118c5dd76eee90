"""LeNet-5 for 28x28 single-channel images, with the second convolution quantized.

conv1 5x5 (fp, 20 ch) -> ReLU -> max-pool 2 -> BN -> QuantConv2d 5x5 (50 ch) -> ReLU -> max-pool 2
-> fc 800 -> 500 (fp) -> ReLU -> fc 500 -> classes (fp).  Shapes: (B, 1, 28, 28) -> (B, classes).
The BN in front of the quantized conv centres its input, so signs of the activations carry information
(after a ReLU alone every sign would be +1).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..layers import QuantConv2d
from ._registry import register_model

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """Args: num_classes, in_chans, x_quant/w_quant/clamp/act_stats (conv2 only), channels (conv1, conv2), hidden."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, x_quant: str = "fp", w_quant: str = "fp",
                 clamp: float | None = None, act_stats: str = "off", channels=(20, 50), hidden: int = 500):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_chans, c1, 5)
        self.bn2 = nn.BatchNorm2d(c1)
        self.conv2 = QuantConv2d(c1, c2, 5, x_quant=x_quant, w_quant=w_quant, clamp=clamp, act_stats=act_stats)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.pool, self.relu = nn.MaxPool2d(2), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.conv1(x)))               # (B, 20, 12, 12)
        x = self.pool(self.relu(self.conv2(self.bn2(x))))     # (B, 50, 4, 4)
        return self.fc2(self.relu(self.fc1(x.flatten(1))))   # (B, classes)


@register_model
def lenet5(**options) -> LeNet5:
    """LeNet-5 (MNIST-style, 28x28); only conv2 is quantized, as in the official MNIST model."""
    return LeNet5(**options)
