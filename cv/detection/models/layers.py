"""Layers shared by the detectors."""
from oneflow import nn


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that, on CPU, adds its bias as a separate broadcast op.

    OneFlow 0.9's CPU convolution kernel adds the bias very slowly, far slower than the convolution itself for
    VGG's first layers, and a separate broadcast add costs little; results are bit-identical (README, "Speed", has
    the measurements). Parameters and state-dict keys are those of ``nn.Conv2d``; on CUDA (where cuDNN fuses the
    bias) it is ``nn.Conv2d``.
    """

    def forward(self, x):
        device_type = x.placement.type if x.is_global else x.device.type  # global: graph mode (graph_mode.py)
        if self.bias is None or device_type != "cpu":
            return super().forward(x)
        return self._conv_forward(x, self.weight, None) + self.bias.view(1, -1, 1, 1)
