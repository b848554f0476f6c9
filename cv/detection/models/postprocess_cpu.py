"""SSD post-processing on the CPU in NumPy: :meth:`SSD.postprocess_detections` for CPU tensors.

The same steps as the OneFlow code in :mod:`cv.detection.models.ssd`, in the same float32 arithmetic and order
(the two transcendental functions, softmax's and the box sizes' exp, by OneFlow itself), giving the same detections,
bit for bit (tested against the OneFlow path and a per-class reference): softmax, box decoding, clipping, per class
the ``topk_candidates`` best boxes (ties to the lower default-box index, as OneFlow's ``topk``) of which those above
``score_thresh`` and not empty are kept, NMS per class (the shared :func:`box_ops.batched_nms`), the
``detections_per_img`` best, and scaling to each image.

Why: on CPU, OneFlow 0.9 has a fixed cost on every eager operation whatever its size, and the post-processing is
some fifty small ones; once the network itself is fast (int8, ONNX Runtime), that overhead was a large share of the
time per image (docs/performance.md has the numbers). Only candidates above the score threshold
are sorted (the rest can never be kept), so a 91-class head costs little more than a 7-class one.
"""
import numpy as np
import oneflow as flow
import oneflow.nn.functional as F

from cv.detection.models import box_ops


def size_factors(codes, weights, clip):
    """``exp`` of the clamped log-size offsets (``[..., 2]``), by OneFlow: NumPy's exp differs from OneFlow's in the
    last bit for a third of all values. A OneFlow tensor (not waited for)."""
    return (codes[..., 2:] / flow.tensor(np.float32(weights[2:]))).clamp(max=clip).exp()


def decode(codes, sizes, reference, weights):
    """:meth:`box_ops.BoxCoder.decode` in NumPy (float32, the same operations in the same order), given
    :func:`size_factors` as an array."""
    wx, wy, _, _ = weights
    reference = reference.astype(codes.dtype, copy=False)
    ref_w = reference[..., 2] - reference[..., 0]
    ref_h = reference[..., 3] - reference[..., 1]
    ref_x = reference[..., 0] + np.float32(0.5) * ref_w
    ref_y = reference[..., 1] + np.float32(0.5) * ref_h
    x = codes[..., 0] / np.float32(wx) * ref_w + ref_x
    y = codes[..., 1] / np.float32(wy) * ref_h + ref_y
    half_w = np.float32(0.5) * sizes[..., 0] * ref_w
    half_h = np.float32(0.5) * sizes[..., 1] * ref_h
    return np.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=-1)


def postprocess_detections(model, head_outputs, anchors, image_sizes, min_box_size):
    """:meth:`SSD.postprocess_detections` of ``model`` for CPU tensors; returns the same list of dicts of OneFlow
    tensors (``boxes``, ``scores``, ``labels``)."""
    # The softmax by OneFlow (one operation), as the exp of the box sizes: NumPy's exp differs from OneFlow's in the
    # last bit, and scores one bit apart would order some detections differently. Both queued, then one wait.
    probabilities = F.softmax(head_outputs["cls_logits"], dim=-1)
    sizes = size_factors(head_outputs["bbox_regression"], model.box_coder.weights, model.box_coder.bbox_xform_clip)
    scores = probabilities.numpy()[..., 1:]  # [B, A, C-1], background dropped
    out_h, out_w = model.size
    boxes = decode(head_outputs["bbox_regression"].numpy(), sizes.numpy(), anchors.numpy(), model.box_coder.weights)
    boxes[..., 0::2] = boxes[..., 0::2].clip(0, out_w)
    boxes[..., 1::2] = boxes[..., 1::2].clip(0, out_h)
    nonempty = ((boxes[..., 2] - boxes[..., 0]) >= min_box_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_box_size)
    k = min(model.topk_candidates, scores.shape[1])
    detections = []
    for i, (h, w) in enumerate(image_sizes):
        anchor, label = np.nonzero(scores[i] > model.score_thresh)
        score = scores[i][anchor, label]
        # Each class's candidates by decreasing score, ties by lower anchor: their rank in that class.
        order = np.lexsort((anchor, -score, label))
        grouped = label[order]
        rank = np.arange(len(order)) - np.searchsorted(grouped, grouped, side="left")
        top = rank < k
        chosen, rank = order[top], rank[top]
        usable = nonempty[i][anchor[chosen]]
        chosen, rank = chosen[usable], rank[usable]
        # The OneFlow path lists candidates rank by rank, classes in order within a rank (a boolean mask over the
        # [k, C-1] top-k table): NMS breaks exact score ties across classes by that position.
        chosen = chosen[np.lexsort((label[chosen], rank))]
        det_boxes = boxes[i][anchor[chosen]]
        det_scores = score[chosen]
        det_labels = label[chosen].astype(np.int64) + 1
        kept = box_ops.batched_nms_numpy(det_boxes, det_scores, det_labels, model.nms_thresh)
        kept = kept[: model.detections_per_img]
        scale = np.array([w / out_w, h / out_h] * 2, dtype=det_boxes.dtype)
        detections.append({"boxes": flow.tensor(det_boxes[kept] * scale), "scores": flow.tensor(det_scores[kept]),
                           "labels": flow.tensor(det_labels[kept])})
    return detections
