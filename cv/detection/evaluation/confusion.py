"""The confusion matrix of a detector: which ground truth its detections found, confused or missed.

AP says how well the detections rank; it does not say *what* goes wrong. The matrix does, at one operating point:
the detections a user would see (score at least a threshold, by default infer.sh's ``--score-threshold``) matched
to the ground truth at one IoU (0.5). It is ``[K + 1, K + 1]`` counts over the classes ``0..K-1`` and the
background ``K``; **rows are the ground truth, columns the predictions**. Per image, exactly:

1. Detections with ``score >= score_threshold`` take part; the others are not counted anywhere.
2. Ground truth marked ``ignore`` (COCO's crowd regions, Pascal VOC's difficult objects) is never a row: it is
   neither found nor missed.
3. First pass, per class as COCO matches: the detections in order of score (highest first; ties in the given
   order), each takes the not yet taken ground-truth box *of its class* with the highest IoU, if that IoU is
   >= ``iou_threshold`` (the first such box on a tie). Each is counted on the diagonal ``[c, c]``.
4. Second pass, across classes: the detections still unmatched, in the same order, each takes the not yet taken
   box *of any class* with the highest IoU >= ``iou_threshold``: counted ``[true class, predicted class]``, a
   confusion. One detection per ground-truth box: a box taken in pass 3 or 4 takes no other detection.
5. Detections still unmatched: if one lies in an ignored region (intersection over the detection's own area
   >= ``iou_threshold``, COCO's rule for crowd regions) it is not counted; otherwise it is a false positive on
   background, ``[K, predicted class]`` (a duplicate of an already found object lands here too).
6. Ground truth still untaken is missed: ``[true class, K]``.

``[K, K]`` is always 0. A row's sum is the number of (not ignored) objects of that class; the background row's sum
the number of false positives on background. Matching the class first (3) before across classes (4) keeps a
correct detection on the diagonal when a higher-scored detection of another class overlaps the same object.
"""
import numpy as np

from cv.detection.models.box_ops_numpy import box_iou

# infer.sh's default --score-threshold: the matrix describes the detections a user sees drawn.
SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5


def _coverage(detections, regions):
    """``[D, R]``: the fraction of each detection's area inside each region (COCO's IoU for crowd regions)."""
    lt = np.maximum(detections[:, None, :2], regions[None, :, :2])
    rb = np.minimum(detections[:, None, 2:], regions[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = np.prod(np.clip(detections[:, 2:] - detections[:, :2], 0, None), axis=1)[:, None]
    return np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)


def _greedy(iou, allowed, taken, order, match, iou_threshold):
    """One pass of matching (steps 3 and 4): detections in ``order`` that have no ``match`` yet (-1) take the free
    box of highest IoU among ``allowed`` ``[D, G]``; ``taken`` and ``match`` are updated in place."""
    for d in order:
        if match[d] >= 0:
            continue
        candidates = np.where(allowed[d] & ~taken & (iou[d] >= iou_threshold), iou[d], -1.0)
        if len(candidates) and candidates.max() >= 0:
            g = int(candidates.argmax())
            match[d], taken[g] = g, True


def match_image(gt, detections, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD):
    """One image's contribution, as ``(gt_class, predicted_class)`` pairs with ``-1`` for the background (see the
    module docstring). ``gt``: ``(boxes [G, 4], classes [G], ignore [G] bool)``; ``detections``: ``(boxes [D, 4],
    scores [D], classes [D])``; boxes ``x1, y1, x2, y2``, classes ``0..K-1``."""
    gt_boxes, gt_classes, ignore = (np.asarray(a) for a in gt)
    det_boxes, scores, det_classes = (np.asarray(a) for a in detections)
    gt_boxes, det_boxes = gt_boxes.reshape(-1, 4).astype(np.float64), det_boxes.reshape(-1, 4).astype(np.float64)
    ignore = ignore.astype(bool)
    keep = scores >= score_threshold
    det_boxes, scores, det_classes = det_boxes[keep], scores[keep], det_classes[keep]
    regular_boxes, regular_classes = gt_boxes[~ignore], gt_classes[~ignore]
    order = np.argsort(-scores, kind="stable").tolist()
    iou = box_iou(det_boxes, regular_boxes)
    taken, match = np.zeros(len(regular_boxes), dtype=bool), np.full(len(det_boxes), -1)
    _greedy(iou, det_classes[:, None] == regular_classes[None, :], taken, order, match, iou_threshold)
    _greedy(iou, np.ones_like(iou, dtype=bool), taken, order, match, iou_threshold)
    pairs = [(int(regular_classes[g]), int(det_classes[d])) for d, g in enumerate(match.tolist()) if g >= 0]
    unmatched = match < 0
    if ignore.any() and unmatched.any():
        in_region = (_coverage(det_boxes, gt_boxes[ignore]) >= iou_threshold).any(axis=1)
        unmatched &= ~in_region
    pairs += [(-1, int(c)) for c in det_classes[unmatched].tolist()]
    pairs += [(int(c), -1) for c in regular_classes[~taken].tolist()]
    return pairs


def confusion_matrix(images, num_classes, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD):
    """The int64 ``[num_classes + 1, num_classes + 1]`` counts over ``images``, an iterable of ``(gt, detections)``
    as :func:`match_image` takes them; the last row and column are the background."""
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for gt, detections in images:
        for true, predicted in match_image(gt, detections, score_threshold, iou_threshold):
            counts[true, predicted] += 1  # -1: the background, the last row/column
    return counts
