"""Shared fixtures. The full SSD300 is slow on CPU (~2.5 s per image forward), so tests of mechanics use
:func:`tiny_ssd`, a small model built from the same classes, and the real model is built once per session."""
import oneflow as flow
import pytest
from oneflow import nn

from cv.detection.anchors import DefaultBoxGenerator
from cv.detection.layers import Conv2d
from cv.detection.ssd import SSD


class TinyBackbone(nn.Module):
    """Three feature maps (8x8, 4x4, 2x2 for a 64x64 input)."""

    out_channels = [8, 16, 16]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.down2 = nn.Sequential(Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        a = self.stem(x)
        b = self.down1(a)
        return [a, b, self.down2(b)]


def tiny_ssd(num_classes=5, seed=0, **kwargs):
    flow.manual_seed(seed)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2]], scales=[0.15, 0.35, 0.65, 1.0], steps=[8, 16, 32])
    return SSD(TinyBackbone(), anchors, (64, 64), num_classes, image_mean=[0.5] * 3, image_std=[0.25] * 3, **kwargs)


@pytest.fixture
def tiny():
    return tiny_ssd()


@pytest.fixture(scope="session")
def ssd300_pair():
    """flowvision's ssd300_vgg16 and ours, with identical (random) weights."""
    from flowvision.models.detection import ssd300_vgg16 as flowvision_ssd300_vgg16

    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    reference = flowvision_ssd300_vgg16(pretrained=False, pretrained_backbone=False)
    ours = ssd300_vgg16()
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small sample dataset (40 train, 12 val images), generated once per test session."""
    from cv.detection.sample_dataset import make_sample_dataset
    root = tmp_path_factory.mktemp("sample_coco")
    make_sample_dataset(root, seed=0, num_train=40, num_val=12)
    return root
