"""Mechanics of the SSD meta-architecture, on a small model built from the same classes as SSD300."""
import numpy as np
import oneflow as flow
import oneflow.nn.functional as F
import pytest

from cv.detection.models import box_ops
from cv.detection.models.ssd import MIN_BOX_SIZE
from tests.conftest import tiny_ssd
from tests.test_box_ops import brute_force_nms


def sample_batch():
    g = flow.Generator()
    g.manual_seed(1)
    images = [flow.rand(3, 48, 80, generator=g), flow.rand(3, 64, 64, generator=g), flow.rand(3, 100, 70, generator=g)]
    targets = [
        {"boxes": flow.tensor([[2.0, 3.0, 30.0, 40.0], [40.0, 10.0, 78.0, 47.0], [5.0, 5.0, 12.0, 9.0]]),
         "labels": flow.tensor([1, 4, 2])},
        {"boxes": flow.zeros(0, 4), "labels": flow.zeros(0, dtype=flow.int64)},
        {"boxes": flow.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": flow.tensor([3])},
    ]
    return images, targets


def reference_loss(model, images, targets):
    """The SSD loss one image at a time, written plainly after torchvision's reference implementation."""
    x = model.preprocess(images)
    features = model.backbone(x)
    out = model.head(features)
    anchors = model.anchor_generator([f.shape[-2:] for f in features], model.size, "cpu").numpy()
    num_pos, box_loss, cls_loss_total = 0, 0.0, 0.0
    for i, (img, t) in enumerate(zip(images, targets)):
        h, w = img.shape[-2:]
        gt = t["boxes"].numpy() * np.array([64 / w, 64 / h] * 2, dtype=np.float32)
        labels = t["labels"].numpy()
        matches = np.full(len(anchors), -1)
        if len(gt):
            iou = box_ops.box_iou(flow.tensor(gt), flow.tensor(anchors)).numpy()
            best = iou.max(0)
            matches = np.where(best >= 0.5, iou.argmax(0), -1)
            for g in range(len(gt)):
                matches[iou[g].argmax()] = g
        fg = np.flatnonzero(matches >= 0)
        num_pos += len(fg)
        if len(fg):
            target = model.box_coder.encode(flow.tensor(gt[matches[fg]]), flow.tensor(anchors[fg]))
            predicted = out["bbox_regression"][i][flow.tensor(fg)]
            box_loss += float(F.smooth_l1_loss(predicted, target, reduction="sum", beta=1.0))
        cls_target = np.zeros(len(anchors), dtype=np.int64)
        cls_target[fg] = labels[matches[fg]]
        ce = F.cross_entropy(out["cls_logits"][i], flow.tensor(cls_target), reduction="none").numpy()
        negatives = np.flatnonzero(matches < 0)
        hardest = negatives[np.argsort(-ce[negatives], kind="stable")[: 3 * len(fg)]]
        cls_loss_total += ce[fg].sum() + ce[hardest].sum()
    n = max(1, num_pos)
    return box_loss / n, cls_loss_total / n


def test_batched_loss_equals_per_image_reference(tiny):
    images, targets = sample_batch()
    losses = tiny(images, targets)
    box_ref, cls_ref = reference_loss(tiny, images, targets)
    assert float(losses["bbox_regression"]) == pytest.approx(box_ref, rel=1e-5)
    assert float(losses["classification"]) == pytest.approx(cls_ref, rel=1e-5)
    assert box_ref > 0 and cls_ref > 0


def test_loss_of_a_hand_worked_example():
    """Five default boxes, one object, numbers worked out by hand (the reference above shares box_ops with the
    model; this one shares nothing)."""
    model = tiny_ssd(num_classes=2)
    anchors = flow.tensor([[0.0, 0.0, 20.0, 20.0],     # overlaps the object: IoU 360 / 440 = 0.82, positive
                           [40.0, 40.0, 60.0, 60.0],   # the other four touch nothing: negatives
                           [40.0, 0.0, 60.0, 20.0],
                           [0.0, 40.0, 20.0, 60.0],
                           [30.0, 30.0, 50.0, 50.0]])
    # A 64x64 image is the model's input size, so the object stays [2, 0, 22, 20]: centre (12, 10), 20x20.
    targets = [{"boxes": flow.tensor([[2.0, 0.0, 22.0, 20.0]]), "labels": flow.tensor([1])}]
    # Target offsets from default box 0 (centre (10, 10), 20x20), weights (10, 10, 5, 5):
    # (10 * (12 - 10) / 20, 10 * 0 / 20, 5 * ln(20 / 20), 5 * ln(20 / 20)) = (1, 0, 0, 0).
    # Predicted (0.5, -2, 0, 0): smooth L1 (beta 1) of the differences -0.5 and -2: 0.5 * 0.25 + (2 - 0.5) = 1.625.
    # The negatives' regression (5s) must not count.
    regression = flow.tensor([[[0.5, -2.0, 0.0, 0.0]] + [[5.0] * 4] * 4])
    # Cross-entropy -log softmax: logits (0, 0) -> ln 2 for either class; (0, ln 7) with target background ->
    # ln(1 + 7) = ln 8; (0, ln 3) -> ln 4; (ln 3, 0) -> ln(4 / 3). The positive (label 1): ln 2. Hard negative
    # mining keeps 3 negatives per positive, the 3 highest: ln 8 + ln 4 + ln 2 (not ln 4/3). Total ln 128 = 7 ln 2.
    logits = flow.tensor([[[0.0, 0.0], [0.0, np.log(7)], [0.0, np.log(3)], [0.0, 0.0], [np.log(3), 0.0]]],
                         dtype=flow.float32)
    losses = model.compute_loss(targets, [(64, 64)], {"bbox_regression": regression, "cls_logits": logits}, anchors)
    # Both divided by the number of positives, 1; float32 arithmetic (log-softmax of float32 logits) within 1e-5.
    assert float(losses["bbox_regression"]) == pytest.approx(1.625, rel=1e-6)
    assert float(losses["classification"]) == pytest.approx(7 * np.log(2), rel=1e-5)


def test_empty_targets_give_zero_box_loss_and_still_train(tiny):
    images, _ = sample_batch()
    empty = [{"boxes": flow.zeros(0, 4), "labels": flow.zeros(0, dtype=flow.int64)} for _ in images]
    losses = tiny(images, empty)
    assert float(losses["bbox_regression"]) == 0.0
    # No positives means no negatives are mined either: nothing to learn, but no NaN from 0/0.
    assert float(losses["classification"]) == 0.0
    sum(losses.values()).backward()


def test_every_trainable_parameter_receives_a_gradient(tiny):
    images, targets = sample_batch()
    sum(tiny(images, targets).values()).backward()
    missing = [n for n, p in tiny.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert missing == []


def test_inputs_are_not_modified(tiny):
    images, targets = sample_batch()
    before_images = [im.numpy().copy() for im in images]
    before_targets = [{k: v.numpy().copy() for k, v in t.items()} for t in targets]
    tiny(images, targets)
    tiny.eval()
    tiny(images)
    for im, b in zip(images, before_images):
        np.testing.assert_array_equal(im.numpy(), b)
    for t, b in zip(targets, before_targets):
        assert t.keys() == b.keys()
        for k in t:
            np.testing.assert_array_equal(t[k].numpy(), b[k])


@pytest.mark.parametrize("bad,message", [
    ({"boxes": flow.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": flow.tensor([1])},
     "target 1: box 0 [10.0, 10.0, 10.0, 20.0] is degenerate"),
    ({"boxes": flow.tensor([[1.0, 1.0, 5.0, 5.0], [30.0, 20.0, 10.0, 40.0]]), "labels": flow.tensor([1, 2])},
     "target 1: box 1 [30.0, 20.0, 10.0, 40.0] is degenerate"),
    ({"boxes": flow.tensor([[10.0, 10.0, 70.0, 20.0]]), "labels": flow.tensor([1])},
     "target 1: box 0 [10.0, 10.0, 70.0, 20.0] lies outside the 64x64"),
    ({"boxes": flow.tensor([[-1.0, 10.0, 20.0, 20.0]]), "labels": flow.tensor([1])}, "target 1: box 0 [-1.0"),
    ({"boxes": flow.tensor([[1.0, 1.0, float("nan"), 5.0]]), "labels": flow.tensor([1])},
     "target 1: box 0 [1.0, 1.0, nan"),
    ({"boxes": flow.tensor([[1, 1, 5, 5]]), "labels": flow.tensor([1])}, "target 1: boxes must be a float tensor"),
    ({"boxes": flow.tensor([1.0, 1.0, 5.0, 5.0]), "labels": flow.tensor([1])},
     "target 1: boxes must be a float tensor of shape [N, 4], got (4,)"),
    ({"boxes": [[1.0, 1.0, 5.0, 5.0]], "labels": flow.tensor([1])}, "got list"),
    ({"boxes": flow.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": flow.tensor([1.0])},
     "target 1: labels must be an int64 tensor"),
    ({"boxes": flow.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": flow.tensor([1, 2])},
     "target 1: 1 boxes but labels of shape (2,)"),
    ({"boxes": flow.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": flow.tensor([0])}, "target 1: box 0 has label 0"),
    ({"boxes": flow.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": flow.tensor([5])},
     "target 1: box 0 has label 5, outside 1..4"),
    ({"labels": flow.tensor([1])}, "target 1: expected a dict with 'boxes' and 'labels'"),
])
def test_bad_targets_raise_value_error_naming_image_and_box(tiny, bad, message):
    images, targets = sample_batch()
    targets[1] = bad
    with pytest.raises(ValueError) as err:
        tiny(images, targets)
    assert message in str(err.value)


def test_bad_images_and_missing_targets_raise_value_error(tiny):
    images, targets = sample_batch()
    with pytest.raises(ValueError, match="in training mode, targets must be passed"):
        tiny(images)
    with pytest.raises(ValueError, match="3 targets for 2 images"):
        tiny(images[:2], targets)
    tiny.eval()
    with pytest.raises(ValueError, match=r"image 1: expected a \[3, H, W\] tensor, got \(1, 64, 64\)"):
        tiny([images[0], flow.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="image 0: expected a float tensor"):
        tiny([(images[0] * 255).to(flow.uint8)])
    with pytest.raises(ValueError, match="non-empty list"):
        tiny(flow.stack([images[1]]))


def test_preprocess_batches_same_size_images_like_single_ones(tiny):
    images = [flow.rand(3, 50, 70) for _ in range(3)]
    batched = tiny.preprocess(images).numpy()
    single = np.concatenate([tiny.preprocess([im]).numpy() for im in images])
    np.testing.assert_allclose(batched, single, rtol=1e-6, atol=1e-6)
    mixed = tiny.preprocess([images[0], flow.rand(3, 20, 30)]).numpy()
    np.testing.assert_allclose(mixed[0], single[0], rtol=1e-6, atol=1e-6)


def reference_postprocess(model, head_outputs, anchors, image_sizes):
    """Post-processing one image and one class at a time, with the brute-force NMS."""
    scores = F.softmax(head_outputs["cls_logits"], dim=-1).numpy()
    results = []
    for i, (h, w) in enumerate(image_sizes):
        boxes = box_ops.clip_boxes_to_image(
            model.box_coder.decode(head_outputs["bbox_regression"][i], anchors), model.size).numpy()
        cand = []
        for c in range(1, scores.shape[-1]):
            s = scores[i, :, c]
            idx = np.argsort(-s, kind="stable")[: model.topk_candidates]
            box_w, box_h = boxes[idx, 2] - boxes[idx, 0], boxes[idx, 3] - boxes[idx, 1]
            idx = idx[(s[idx] > model.score_thresh) & (box_w >= MIN_BOX_SIZE) & (box_h >= MIN_BOX_SIZE)]
            keep = brute_force_nms(boxes[idx], s[idx], model.nms_thresh)
            cand += [(s[idx[k]], c, boxes[idx[k]]) for k in keep]
        cand.sort(key=lambda r: -r[0])
        cand = cand[: model.detections_per_img]
        scale = np.array([w / 64, h / 64] * 2)
        results.append({"scores": np.array([r[0] for r in cand]), "labels": np.array([r[1] for r in cand]),
                        "boxes": np.array([r[2] * scale for r in cand]).reshape(-1, 4)})
    return results


def test_postprocess_equals_per_class_reference():
    model = tiny_ssd(num_classes=6, topk_candidates=30, detections_per_img=40, score_thresh=0.05).eval()
    g = flow.Generator()
    g.manual_seed(3)
    num_anchors = 8 * 8 * 4 + 4 * 4 * 6 + 2 * 2 * 4
    head_outputs = {"cls_logits": flow.randn(2, num_anchors, 6, generator=g) * 2,
                    "bbox_regression": flow.randn(2, num_anchors, 4, generator=g)}
    anchors = model.anchor_generator([(8, 8), (4, 4), (2, 2)], model.size, "cpu")
    sizes = [(48, 80), (100, 70)]
    ours = model.postprocess_detections(head_outputs, anchors, sizes)
    expected = reference_postprocess(model, head_outputs, anchors, sizes)
    for o, e, (h, w) in zip(ours, expected, sizes):
        assert len(e["scores"]) == 40  # the cap on detections is reached
        np.testing.assert_allclose(o["scores"].numpy(), e["scores"], rtol=1e-6)
        np.testing.assert_array_equal(o["labels"].numpy(), e["labels"])
        np.testing.assert_allclose(o["boxes"].numpy(), e["boxes"], rtol=1e-5, atol=1e-4)
        b = o["boxes"].numpy()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w + 1e-4).all() and (b[:, 3] <= h + 1e-4).all()


def test_eval_output_contract(tiny):
    tiny.eval()
    images, _ = sample_batch()
    with flow.no_grad():
        detections = tiny(images)
    assert len(detections) == 3
    for det, img in zip(detections, images):
        h, w = img.shape[-2:]
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["labels"].dtype == flow.int64 and 0 < n <= tiny.detections_per_img
        s = det["scores"].numpy()
        assert (np.diff(s) <= 0).all() and (s > tiny.score_thresh).all()
        assert ((det["labels"].numpy() >= 1) & (det["labels"].numpy() < 5)).all()
        b = det["boxes"].numpy()
        assert (b[:, [0, 1]] >= 0).all() and (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()


def test_boxes_collapsed_by_clipping_are_dropped():
    model = tiny_ssd(num_classes=3).eval()
    num_anchors = 8 * 8 * 4 + 4 * 4 * 6 + 2 * 2 * 4
    logits = flow.zeros(1, num_anchors, 3)
    logits[0, :2, 1] = 10.0  # two confident class-1 detections ...
    regression = flow.zeros(1, num_anchors, 4)
    regression[0, 0, 0] = -200.0  # ... the first moved far off the left edge: clipped to zero width
    anchors = model.anchor_generator([(8, 8), (4, 4), (2, 2)], model.size, "cpu")
    det = model.postprocess_detections({"cls_logits": logits, "bbox_regression": regression}, anchors, [(64, 64)])[0]
    boxes = det["boxes"].numpy()
    assert len(boxes) >= 1 and (boxes[:, 2] - boxes[:, 0] > 0).all() and (boxes[:, 3] - boxes[:, 1] > 0).all()
    np.testing.assert_allclose(boxes[0], anchors[1].numpy().clip(0, 64), atol=1e-4)  # the second one is kept
