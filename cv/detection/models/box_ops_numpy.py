"""Box IoU in NumPy, for code that must not import OneFlow: the training augmentation (it runs in data-loader worker
processes, :mod:`cv.detection.data.transforms`) and the VOC evaluation. :mod:`box_ops` is the OneFlow counterpart.

Boxes are ``[x1, y1, x2, y2]``, continuous: a box's area is ``(x2 - x1) * (y2 - y1)``.
"""
import numpy as np


def box_iou(boxes1, boxes2):
    """IoU ``[N, M]`` of every box in ``boxes1 [N, 4]`` with every box in ``boxes2 [M, 4]``; 0 for boxes that do not
    overlap, also two empty ones (no division by a zero union)."""
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area1 = np.prod(boxes1[:, 2:] - boxes1[:, :2], axis=1)
    area2 = np.prod(boxes2[:, 2:] - boxes2[:, :2], axis=1)
    union = area1[:, None] + area2[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)
