"""Box machinery shared by the detectors: IoU, the SSD box coder and matcher, and non-maximum suppression.

Boxes are ``[x1, y1, x2, y2]`` in pixels throughout. Everything here works on whole batches at once: the SSD loss
and post-processing call it without a Python loop over images or classes.
"""
import math

import numpy as np
import oneflow as flow
import oneflow.nn.functional as F


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """IoU of every box in ``boxes1 [..., N, 4]`` with every box in ``boxes2 [..., M, 4]``: ``[..., N, M]``.

    Leading dimensions broadcast, so a padded batch of ground truth ``[B, G, 4]`` against the default boxes
    ``[A, 4]`` gives ``[B, G, A]`` in one call.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = flow.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = flow.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[..., None, :] - inter)


def clip_boxes_to_image(boxes, size):
    """Clip ``boxes [..., 4]`` to an image of ``size = (height, width)``."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return flow.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


class BoxCoder:
    """Encodes boxes as offsets from reference (default) boxes and back, as in Faster R-CNN and SSD.

    ``weights = (wx, wy, ww, wh)`` scale the centre and log-size offsets; SSD uses (10, 10, 5, 5), the inverse of
    the "variances" (0.1, 0.2) of the original Caffe implementation.
    """

    # exp() of a log-size offset is clamped here: larger would turn a 16-pixel box into one over 1000 pixels,
    # which no real prediction needs and which overflows in float16.
    bbox_xform_clip = math.log(1000.0 / 16)

    def __init__(self, weights):
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes, reference):
        """Offsets ``[..., 4]`` that turn ``reference [..., 4]`` into ``boxes [..., 4]`` (broadcasting)."""
        wx, wy, ww, wh = self.weights
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        x = boxes[..., 0] + 0.5 * w
        y = boxes[..., 1] + 0.5 * h
        return flow.stack(
            [wx * (x - ref_x) / ref_w, wy * (y - ref_y) / ref_h, ww * flow.log(w / ref_w), wh * flow.log(h / ref_h)],
            dim=-1,
        )

    def decode(self, codes, reference):
        """Boxes ``[..., 4]`` from offsets ``codes [..., 4]`` relative to ``reference [..., 4]`` (broadcasting)."""
        wx, wy, ww, wh = self.weights
        reference = reference.to(codes.dtype)
        ref_w = reference[..., 2] - reference[..., 0]
        ref_h = reference[..., 3] - reference[..., 1]
        ref_x = reference[..., 0] + 0.5 * ref_w
        ref_y = reference[..., 1] + 0.5 * ref_h
        x = codes[..., 0] / wx * ref_w + ref_x
        y = codes[..., 1] / wy * ref_h + ref_y
        half_w = 0.5 * flow.exp((codes[..., 2] / ww).clamp(max=self.bbox_xform_clip)) * ref_w
        half_h = 0.5 * flow.exp((codes[..., 3] / wh).clamp(max=self.bbox_xform_clip)) * ref_h
        return flow.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=-1)


def ssd_match(iou, valid, threshold):
    """Assign each default box to a ground-truth box, for a whole batch.

    Args:
        iou: ``[B, G, A]`` IoU of the (padded) ground truth of each image with the ``A`` default boxes.
        valid: ``[B, G]`` bool, False for padding rows.
        threshold: a default box matches its best ground-truth box when their IoU is at least this.

    Returns:
        ``[B, A]`` int64: the matched ground-truth index, or -1 for background. As in the SSD paper (§2.2
        "Matching strategy") every real ground-truth box also keeps its single best default box, even below the
        threshold, so that no object goes without a positive.

    Static shapes and no host synchronisation (masks instead of boolean indexing and index_put), so the same code
    runs eagerly and inside an ``nn.Graph`` (:mod:`cv.detection.engine.graph_mode`), with global tensors too.
    """
    _, num_gt, num_anchors = iou.shape
    iou = iou.masked_fill(~valid[:, :, None], -1.0)
    best_iou, matches = iou.max(dim=1)
    matches = matches.masked_fill(best_iou < threshold, -1)
    best_anchor = iou.argmax(dim=2)  # [B, G]
    # [B, G, A]: 1 + g where default box a is real ground-truth box g's best, else 0. The max over g keeps the
    # highest g where several share a best default box, as the reference implementations' sequential assignment
    # (matches[best_anchor] = arange(G)) does.
    owner = F.one_hot(best_anchor, num_anchors) * (valid.to(flow.int64) * (_arange(num_gt, iou) + 1))[:, :, None]
    owner = owner.max(dim=1).values - 1  # [B, A]
    return flow.where(owner >= 0, owner, matches)


def _arange(n, like):
    """``arange(n)`` (int64) on ``like``'s device, or broadcast over its placement when ``like`` is global."""
    if like.is_global:
        return flow.arange(n, placement=like.placement, sbp=flow.sbp.broadcast)
    return flow.arange(n, device=like.device)


# --- non-maximum suppression ------------------------------------------------------------------------------------


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: indices (int64) of the boxes kept, by decreasing score; equal scores keep the lower index first.

    A box is dropped when its IoU with a higher-scoring kept box is greater than ``iou_threshold``.
    """
    one_group = flow.zeros(scores.shape[0], dtype=flow.int64, device=scores.device)
    return batched_nms(boxes, scores, one_group, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS done independently for each value of ``idxs`` (the category); result as for :func:`nms`.

    Uses ``flow.nms`` on CUDA. OneFlow 0.9 has no CPU kernel for it, so on CPU the suppression runs in NumPy,
    vectorized over categories (:func:`grouped_nms_numpy`).
    """
    if boxes.shape[0] == 0:
        return flow.zeros(0, dtype=flow.int64, device=boxes.device)
    if boxes.device.type == "cuda":
        return kernel_nms(boxes, scores, idxs, iou_threshold, flow.nms)
    kept = batched_nms_numpy(boxes.numpy(), scores.numpy(), idxs.numpy(), iou_threshold)
    return flow.tensor(kept, dtype=flow.int64, device=boxes.device)


def batched_nms_numpy(boxes_np, scores_np, idxs_np, iou_threshold):
    """:func:`batched_nms` on NumPy arrays (``[N, 4]``, ``[N]``, ``[N]``): the kept indices, int64."""
    if len(scores_np) == 0:
        return np.zeros(0, dtype=np.int64)
    # Group by category, and within a category by decreasing score (stable: ties keep the lower index first).
    order = np.lexsort((np.arange(len(scores_np)), -scores_np, idxs_np))
    _, group, counts = np.unique(idxs_np[order], return_inverse=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded = np.zeros((len(counts), counts.max(), 4), dtype=boxes_np.dtype)
    valid = np.zeros((len(counts), counts.max()), dtype=bool)
    padded[group, rank] = boxes_np[order]
    valid[group, rank] = True
    keep = grouped_nms_numpy(padded, valid, iou_threshold)[group, rank]
    kept = order[keep]
    # Across categories, the result is ordered by decreasing score (ties: lower index first).
    return kept[np.lexsort((kept, -scores_np[kept]))].astype(np.int64)


def kernel_nms(boxes, scores, idxs, iou_threshold, kernel):
    """:func:`batched_nms` through a single-class NMS kernel ``kernel(boxes, scores, iou_threshold) -> kept indices``
    (``flow.nms`` on CUDA), with the documented order whatever the kernel does with equal scores.

    Offsetting each category by more than the extent of all boxes makes boxes of different categories disjoint, so
    one NMS over everything keeps the categories apart. The kernel gets the boxes already in the documented order
    (decreasing score, ties by lower index) with strictly decreasing stand-in scores, so a kernel that sorts by
    score, stably or not, visits them in that order and suppresses exactly as greedy NMS in that order does.
    """
    scores_np = scores.detach().cpu().numpy()
    order = flow.tensor(np.lexsort((np.arange(len(scores_np)), -scores_np)), dtype=flow.int64, device=boxes.device)
    offsets = idxs.to(boxes.dtype) * (boxes.max() + 1)
    shifted = (boxes + offsets[:, None])[order]
    ranks = flow.arange(len(scores_np), 0, -1, device=boxes.device).to(boxes.dtype)
    return order[kernel(shifted, ranks, iou_threshold)]


# Elements of one [chunk, K, K] float32 temporary in grouped_nms_numpy (2.5 MB: fits a CPU's cache).
NMS_CHUNK_ELEMENTS = 640_000


def _overlaps(boxes, iou_threshold):
    """``[G, K, K]`` bool: IoU of box j and box i of each group above the threshold, tested as
    intersection > threshold * union (no division; two empty boxes give 0 > 0: no overlap)."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    inter = np.minimum(x2[:, :, None], x2[:, None, :])
    inter -= np.maximum(x1[:, :, None], x1[:, None, :])
    np.maximum(inter, 0, out=inter)
    height = np.minimum(y2[:, :, None], y2[:, None, :])
    height -= np.maximum(y1[:, :, None], y1[:, None, :])
    np.maximum(height, 0, out=height)
    inter *= height
    union = area[:, :, None] + area[:, None, :]
    union -= inter
    union *= iou_threshold
    return inter > union


def grouped_nms_numpy(boxes, valid, iou_threshold):
    """Greedy NMS in each of ``G`` groups at once.

    Args:
        boxes: ``[G, K, 4]`` array, each group's boxes already sorted by decreasing score.
        valid: ``[G, K]`` bool, False for padding (never kept, never suppresses).
    Returns:
        ``[G, K]`` bool: kept.

    Greedy NMS keeps box ``i`` iff no kept box before it overlaps it. That recurrence has one solution; iterating
    ``keep <- valid & ~any_j<i(keep_j & overlap_ji)`` from "all kept" reaches it after as many rounds as the
    longest chain of suppressions (box a suppresses b, which would have suppressed c, ...), since each round
    settles at least one more position. Real detections give chains of a few boxes, so this is a few batched
    matrix products instead of a Python loop over boxes.
    """
    num_groups, k, _ = boxes.shape
    if k == 0:
        return valid.copy()
    overlap = np.empty((num_groups, k, k), dtype=bool)
    # A few groups at a time, so that the [chunk, K, K] temporaries stay in the CPU cache: faster than all groups
    # at once (docs/performance.md), and no 58 MB arrays to allocate at 90 groups x 400 boxes.
    chunk = max(1, NMS_CHUNK_ELEMENTS // (k * k))
    for start in range(0, num_groups, chunk):
        overlap[start:start + chunk] = _overlaps(boxes[start:start + chunk], iou_threshold)
    # overlap[g, j, i]: box j would suppress box i (j comes first, both real, IoU above the threshold).
    overlap &= np.triu(np.ones((k, k), dtype=bool), 1)
    overlap &= valid[:, :, None]
    overlap &= valid[:, None, :]
    overlap = overlap.astype(np.float32)
    keep = valid.copy()
    for _ in range(k):
        suppressed = np.matmul(keep[:, None, :].astype(np.float32), overlap)[:, 0, :] > 0
        new_keep = valid & ~suppressed
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return keep
