"""SSD300-VGG16: ``from cv.detection.ssd300_vgg16 import Detector`` (images to named boxes, see
:mod:`~cv.detection.ssd300_vgg16.detector`), or ``ssd300_vgg16`` (the OneFlow module).

The defaults of this model's programs (``train.sh``, ``infer.sh``) live in the repository: COCO in ``data/coco``,
the generated sample dataset in ``data/sample_coco``, outputs in ``output/ssd300_vgg16``.
"""
import os

from cv.detection.models.ssd import SSD
from cv.detection.ssd300_vgg16.detector import Detections, Detector
from cv.detection.ssd300_vgg16.model import SSD300_CONFIG, ssd300_vgg16
from cv.detection.ssd300_vgg16.weights import WEIGHTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COCO_DIR = os.path.join(REPO, "data", "coco")
SAMPLE_DATA = os.path.join(REPO, "data", "sample_coco")
OUTPUT_DIR = os.path.join(REPO, "output", "ssd300_vgg16")

__all__ = ["Detector", "Detections", "SSD", "SSD300_CONFIG", "WEIGHTS", "ssd300_vgg16", "REPO", "COCO_DIR",
           "SAMPLE_DATA", "OUTPUT_DIR"]
