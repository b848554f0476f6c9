"""SSD post-processing on CPU in NumPy (:mod:`cv.detection.models.postprocess_cpu`) gives exactly what the OneFlow code
gives: the same boxes and scores bit for bit, the same labels in the same order."""
import numpy as np
import oneflow as flow
import pytest

from cv.detection.models import ssd
from tests.conftest import tiny_ssd

SSD300_GRIDS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def both_paths(model, head_outputs, grids, image_sizes, monkeypatch):
    anchors = model.anchor_generator(grids, model.size, "cpu")
    numpy_path = model.postprocess_detections(head_outputs, anchors, image_sizes)
    with monkeypatch.context() as m:
        m.setattr(ssd, "CPU_POSTPROCESS_IN_NUMPY", False)
        oneflow_path = model.postprocess_detections(head_outputs, anchors, image_sizes)
    return numpy_path, oneflow_path


def assert_identical(ours, reference):
    assert len(ours) == len(reference)
    for o, r in zip(ours, reference):
        for key in ("boxes", "scores", "labels"):
            assert o[key].dtype == r[key].dtype, key
            np.testing.assert_array_equal(o[key].numpy(), r[key].numpy(), err_msg=key)


@pytest.mark.parametrize("num_classes, scale, seed", [(7, 2.0, 0), (7, 6.0, 1), (91, 2.0, 2), (3, 0.5, 3)])
def test_ssd300_sized_random_outputs(num_classes, scale, seed, monkeypatch):
    """SSD300's 8,732 default boxes, two images of other sizes; logit scales from flat (every class above 0.01:
    400 candidates per class, the top-k cut matters) to peaked."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    model = ssd300_vgg16(num_classes=num_classes).eval()
    g = flow.Generator()
    g.manual_seed(seed)
    head = {"cls_logits": flow.randn(2, 8732, num_classes, generator=g) * scale,
            "bbox_regression": flow.randn(2, 8732, 4, generator=g)}
    ours, reference = both_paths(model, head, SSD300_GRIDS, [(480, 640), (300, 500)], monkeypatch)
    assert_identical(ours, reference)
    assert sum(len(r["scores"]) for r in reference) > 100


def test_exact_ties_and_collapsed_boxes(monkeypatch):
    """Saturated scores (exact ties within and across classes) keep the OneFlow order; boxes clipped to nothing
    are dropped alike; an image with nothing above the threshold gives empty results of the right shapes."""
    model = tiny_ssd(num_classes=4).eval()
    num_anchors = 8 * 8 * 4 + 4 * 4 * 6 + 2 * 2 * 4
    logits = flow.zeros(2, num_anchors, 4)
    logits[0, ::3, 1] = 30.0
    logits[0, 1::5, 2] = 30.0
    logits[0, ::7, 3] = 30.0
    logits[1, :, 0] = 50.0  # image 1: all background
    regression = flow.zeros(2, num_anchors, 4)
    regression[0, 0::11, 0] = -200.0  # pushed off the left edge: zero width after clipping
    ours, reference = both_paths(model, {"cls_logits": logits, "bbox_regression": regression},
                                 [(8, 8), (4, 4), (2, 2)], [(64, 64), (30, 90)], monkeypatch)
    assert_identical(ours, reference)
    assert len(reference[0]["scores"]) > 10 and len(reference[1]["scores"]) == 0
    assert tuple(ours[1]["boxes"].shape) == (0, 4)
