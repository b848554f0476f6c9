import math

import numpy as np
import oneflow as flow

from cv.detection.models.anchors import DefaultBoxGenerator
from cv.detection.ssd300_vgg16 import SSD300_CONFIG

GRIDS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def ssd300_generator():
    c = SSD300_CONFIG
    return DefaultBoxGenerator(c["aspect_ratios"], scales=c["scales"], steps=c["steps"])


def test_ssd300_has_8732_default_boxes():
    gen = ssd300_generator()
    assert gen.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    assert gen(GRIDS, (300, 300), "cpu").shape == (8732, 4)


def test_ssd300_default_boxes_hand_checked():
    boxes = ssd300_generator()(GRIDS, (300, 300), "cpu").numpy()
    # First cell of the 38x38 map: centre (4, 4) px; scale 0.07 (21 px), then sqrt(0.07 * 0.15), then ratio 2, 1/2.
    s, s2 = 0.07 * 300, math.sqrt(0.07 * 0.15) * 300
    w2, h2 = 0.07 * math.sqrt(2) * 300, 0.07 / math.sqrt(2) * 300
    expected = [[4 - s / 2, 4 - s / 2, 4 + s / 2, 4 + s / 2], [4 - s2 / 2, 4 - s2 / 2, 4 + s2 / 2, 4 + s2 / 2],
                [4 - w2 / 2, 4 - h2 / 2, 4 + w2 / 2, 4 + h2 / 2], [4 - h2 / 2, 4 - w2 / 2, 4 + h2 / 2, 4 + w2 / 2]]
    np.testing.assert_allclose(boxes[:4], expected, rtol=1e-5)
    # Second cell moves right by one step (8 px), same shapes.
    np.testing.assert_allclose(boxes[4:8] - boxes[:4], [[8, 0, 8, 0]] * 4, atol=1e-4)
    # The 1x1 map: one cell centred at 150; 0.87 * sqrt(2) > 1 is clipped to the whole image width.
    last = boxes[-4:]
    np.testing.assert_allclose(last[0], [150 - 130.5, 150 - 130.5, 150 + 130.5, 150 + 130.5], rtol=1e-5)
    np.testing.assert_allclose(last[2], [0, 150 - 0.87 / math.sqrt(2) * 150, 300, 150 + 0.87 / math.sqrt(2) * 150],
                               rtol=1e-5, atol=1e-4)
    # First box of the 19x19 map: centre (8, 8), scale 0.15.
    np.testing.assert_allclose(boxes[38 * 38 * 4], [8 - 22.5, 8 - 22.5, 8 + 22.5, 8 + 22.5], rtol=1e-5)


def test_default_boxes_equal_flowvisions():
    from flowvision.models.detection.anchor_utils import DefaultBoxGenerator as FlowvisionGenerator
    from flowvision.models.detection.image_list import ImageList

    c = SSD300_CONFIG
    reference = FlowvisionGenerator(c["aspect_ratios"], scales=c["scales"], steps=c["steps"])
    features = [flow.zeros(1, 1, h, w) for h, w in GRIDS]
    expected = reference(ImageList(flow.zeros(1, 3, 300, 300), [(300, 300)]), features)[0].numpy()
    np.testing.assert_allclose(ssd300_generator()(GRIDS, (300, 300), "cpu").numpy(), expected, rtol=1e-5, atol=1e-4)


def test_default_boxes_are_cached_per_device_and_dtype():
    gen = ssd300_generator()
    a = gen(GRIDS, (300, 300), "cpu")
    assert gen(GRIDS, (300, 300), "cpu") is a
    b = gen(GRIDS, (300, 300), "cpu", flow.float64)
    assert b.dtype == flow.float64 and b is not a
