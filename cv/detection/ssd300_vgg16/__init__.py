"""SSD300-VGG16: ``from cv.detection.ssd300_vgg16 import ssd300_vgg16``."""
from cv.detection.ssd import SSD
from cv.detection.ssd300_vgg16.model import SSD300_CONFIG, WEIGHTS, ssd300_vgg16

__all__ = ["SSD", "SSD300_CONFIG", "WEIGHTS", "ssd300_vgg16"]
