"""The SSD meta-architecture: heads, training loss and post-processing, for any backbone.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016 (https://arxiv.org/abs/1512.02325). The module and
parameter names follow torchvision's and flowvision's ``SSD`` so that their checkpoints load unchanged; the
computation is batched (no Python loop over images or classes in the loss or the post-processing).
"""
import numpy as np
import oneflow as flow
import oneflow.nn.functional as F
from oneflow import nn

from cv.detection.models import box_ops
from cv.detection.models.layers import Conv2d


# Detections narrower or lower than this many pixels (of the network input) are dropped (see
# SSD.postprocess_detections); the value torchvision's other detectors use in remove_small_boxes.
MIN_BOX_SIZE = 1e-2
# Post-processing of CPU tensors in NumPy (SSD.postprocess_detections): OneFlow 0.9's per-operation overhead on CPU
# makes its fifty small operations cost more than the arithmetic. False: the OneFlow code everywhere.
CPU_POSTPROCESS_IN_NUMPY = True


def xavier_init(module):
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0.0)


class SSDScoringHead(nn.Module):
    """One 3x3 convolution per feature map; outputs ``[N, sum(H*W*anchors), num_columns]`` in anchor order."""

    def __init__(self, module_list, num_columns):
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, features):
        out = []
        for conv, x in zip(self.module_list, features):
            y = conv(x)
            n, _, h, w = y.shape
            # (N, A*K, H, W) -> (N, H*W*A, K): row, column, then anchor, as the default boxes are laid out.
            out.append(y.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_columns))
        return flow.cat(out, dim=1)


class SSDClassificationHead(SSDScoringHead):
    def __init__(self, in_channels, num_anchors, num_classes):
        convs = nn.ModuleList(Conv2d(c, num_classes * a, kernel_size=3, padding=1)
                              for c, a in zip(in_channels, num_anchors))
        xavier_init(convs)
        super().__init__(convs, num_classes)


class SSDRegressionHead(SSDScoringHead):
    def __init__(self, in_channels, num_anchors):
        convs = nn.ModuleList(Conv2d(c, 4 * a, kernel_size=3, padding=1) for c, a in zip(in_channels, num_anchors))
        xavier_init(convs)
        super().__init__(convs, 4)


class SSDHead(nn.Module):
    def __init__(self, in_channels, num_anchors, num_classes):
        super().__init__()
        self.classification_head = SSDClassificationHead(in_channels, num_anchors, num_classes)
        self.regression_head = SSDRegressionHead(in_channels, num_anchors)

    def forward(self, features):
        return {"bbox_regression": self.regression_head(features), "cls_logits": self.classification_head(features)}


class SSD(nn.Module):
    """SSD detector.

    Input: a list of ``[3, H, W]`` float tensors with values in 0-1, one per image; sizes may differ. Each image
    is resized to ``size`` and normalized with ``image_mean`` / ``image_std`` inside the model.

    Training (``model.train()``): ``model(images, targets)`` with one dict per image,
        ``boxes``: float ``[N, 4]``, ``[x1, y1, x2, y2]`` in pixels of that image, ``0 <= x1 < x2 <= W`` and
        ``0 <= y1 < y2 <= H``; ``labels``: int64 ``[N]`` in ``1 .. num_classes - 1`` (0 is background).
        ``N`` may be 0. Returns ``{"bbox_regression": loss, "classification": loss}``. Bad targets raise
        ``ValueError`` naming the image index and the box; inputs are never modified.

    Evaluation (``model.eval()``): ``model(images)`` returns one dict per image with ``boxes`` (float ``[D, 4]``,
    pixels of that image), ``scores`` (float ``[D]``, decreasing) and ``labels`` (int64 ``[D]``).

    Args:
        backbone: module returning the list (or dict) of feature maps; ``backbone.out_channels`` lists their
            channels.
        anchor_generator: a :class:`~cv.detection.models.anchors.DefaultBoxGenerator`.
        size: ``(height, width)`` the images are resized to.
        num_classes: including the background class 0.
        score_thresh, topk_candidates, nms_thresh, detections_per_img: post-processing; per class, keep the
            ``topk_candidates`` best boxes scoring above ``score_thresh``, suppress overlaps above
            ``nms_thresh`` IoU, then keep the ``detections_per_img`` best of all classes.
        iou_thresh: a default box is a positive when its IoU with a ground-truth box is at least this.
        positive_fraction: hard-negative mining keeps ``(1 - f) / f`` negatives per positive (3:1 for 0.25).
    """

    def __init__(self, backbone, anchor_generator, size, num_classes, image_mean, image_std, head=None,
                 score_thresh=0.01, nms_thresh=0.45, detections_per_img=200, iou_thresh=0.5, topk_candidates=400,
                 positive_fraction=0.25):
        super().__init__()
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        if head is None:
            head = SSDHead(backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes)
        self.head = head
        self.box_coder = box_ops.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.size = tuple(size)
        self.num_classes = num_classes
        # Buffers would change the state dict that published checkpoints have; plain lists keep it identical.
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.iou_thresh = iou_thresh
        self.topk_candidates = topk_candidates
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction

    # --- input ---------------------------------------------------------------------------------------------------

    def preprocess(self, images):
        """Resize every image to ``self.size`` (bilinear) and normalize: ``[N, 3, *size]``."""
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError(f"expected a non-empty list of [3, H, W] image tensors, got {type(images).__name__}")
        for i, img in enumerate(images):
            if not isinstance(img, flow.Tensor) or img.ndim != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, flow.Tensor) else type(img).__name__
                raise ValueError(f"image {i}: expected a [3, H, W] tensor, got {shape}")
            if not img.is_floating_point():
                raise ValueError(f"image {i}: expected a float tensor with values in 0-1, got {img.dtype}")
        if len({tuple(img.shape) for img in images}) == 1:
            # Same size: one interpolation call for the whole batch.
            batch = F.interpolate(flow.stack(list(images)), size=list(self.size), mode="bilinear", align_corners=False)
        else:
            batch = flow.cat([F.interpolate(img[None], size=list(self.size), mode="bilinear", align_corners=False)
                              for img in images])
        mean = flow.tensor(self.image_mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        std = flow.tensor(self.image_std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
        return (batch - mean) / std

    def check_targets(self, targets, image_sizes):
        """Raise ``ValueError`` naming the image and the box for any target the loss cannot use."""
        if targets is None:
            raise ValueError("in training mode, targets must be passed")
        if len(targets) != len(image_sizes):
            raise ValueError(f"{len(targets)} targets for {len(image_sizes)} images")
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i}: expected a dict with 'boxes' and 'labels'")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, flow.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
                shape = tuple(boxes.shape) if isinstance(boxes, flow.Tensor) else type(boxes).__name__
                raise ValueError(f"target {i}: boxes must be a float tensor of shape [N, 4], got {shape}")
            if not boxes.is_floating_point():
                raise ValueError(f"target {i}: boxes must be a float tensor, got {boxes.dtype}")
            if not isinstance(labels, flow.Tensor) or labels.dtype != flow.int64:
                got = labels.dtype if isinstance(labels, flow.Tensor) else type(labels).__name__
                raise ValueError(f"target {i}: labels must be an int64 tensor, got {got}")
            if tuple(labels.shape) != (boxes.shape[0],):
                raise ValueError(f"target {i}: {boxes.shape[0]} boxes but labels of shape {tuple(labels.shape)}")
            b, lab = boxes.numpy(), labels.numpy()
            bad = ~np.isfinite(b).all(1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise ValueError(f"target {i}: box {j} {b[j].tolist()} is degenerate: need x1 < x2 and y1 < y2")
            outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h)
            if outside.any():
                j = int(np.flatnonzero(outside)[0])
                raise ValueError(f"target {i}: box {j} {b[j].tolist()} lies outside the {w}x{h} (WxH) image")
            wrong = (lab < 1) | (lab >= self.num_classes)
            if wrong.any():
                j = int(np.flatnonzero(wrong)[0])
                raise ValueError(f"target {i}: box {j} has label {int(lab[j])}, outside 1..{self.num_classes - 1} "
                                 "(0 is the background)")

    # --- forward -------------------------------------------------------------------------------------------------

    def forward(self, images, targets=None):
        image_sizes = [tuple(img.shape[-2:]) for img in images] if isinstance(images, (list, tuple)) else []
        if self.training:
            self.check_targets(targets, image_sizes)
        x = self.preprocess(images)
        features = self.backbone(x)
        if isinstance(features, dict):
            features = list(features.values())
        head_outputs = self.head(features)
        grid_sizes = [f.shape[-2:] for f in features]
        if self.training:
            anchors = self.anchor_generator(grid_sizes, self.size, x.device, x.dtype)
            return self.compute_loss(targets, image_sizes, head_outputs, anchors)
        return self.detect(head_outputs, grid_sizes, image_sizes)

    def detect(self, head_outputs, grid_sizes, image_sizes):
        """Detections from the heads' outputs, for feature maps of ``grid_sizes`` and input images of
        ``image_sizes`` (``(h, w)`` each). The inference path after the network, shared with other backends."""
        logits = head_outputs["cls_logits"]
        anchors = self.anchor_generator(grid_sizes, self.size, logits.device, logits.dtype)
        return self.postprocess_detections(head_outputs, anchors, image_sizes)

    def scaled_targets(self, targets, image_sizes, device, num_gt=None):
        """Ground truth padded into ``boxes [B, G, 4]`` (in pixels of the resized input), ``labels [B, G]`` and
        ``valid [B, G]``; ``G`` is ``num_gt`` (a fixed size: graph mode) or the most boxes of any image, at least 1
        so the shapes stay usable when no image has a box."""
        most = max([0] + [t["boxes"].shape[0] for t in targets])
        assert num_gt is None or most <= num_gt, f"{most} boxes do not fit in {num_gt} rows"
        num_gt = max(1, most) if num_gt is None else num_gt
        boxes = np.zeros((len(targets), num_gt, 4), dtype=np.float32)
        boxes[..., 2:] = 1.0  # padding is a valid 1x1 box, so that encoding it stays finite
        labels = np.zeros((len(targets), num_gt), dtype=np.int64)
        valid = np.zeros((len(targets), num_gt), dtype=bool)
        out_h, out_w = self.size
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
            n = t["boxes"].shape[0]
            boxes[i, :n] = t["boxes"].numpy() * np.array([out_w / w, out_h / h] * 2, dtype=np.float32)
            labels[i, :n] = t["labels"].numpy()
            valid[i, :n] = True
        return (flow.tensor(boxes, device=device), flow.tensor(labels, device=device),
                flow.tensor(valid, device=device))

    def compute_loss(self, targets, image_sizes, head_outputs, anchors):
        """Smooth-L1 on the positives' box offsets plus cross-entropy on the positives and the hardest
        negatives (3 per positive), each divided by the number of positives in the batch (paper §2.2)."""
        gt_boxes, gt_labels, valid = self.scaled_targets(targets, image_sizes, head_outputs["cls_logits"].device)
        box_loss, cls_loss, num_positive = self.per_image_losses(head_outputs, anchors, gt_boxes, gt_labels, valid)
        num_positive = num_positive.sum().clamp(min=1)
        return {"bbox_regression": box_loss.sum() / num_positive, "classification": cls_loss.sum() / num_positive}

    def per_image_losses(self, head_outputs, anchors, gt_boxes, gt_labels, valid):
        """Per image (``[B]`` each): the smooth-L1 sum over its positives, the cross-entropy sum over its positives
        and hardest negatives, and its number of positives, from padded ground truth (:meth:`scaled_targets`).

        Static shapes throughout: every default box is encoded and scored, and masks select the positives and
        mined negatives (no boolean indexing, no host synchronisation), so the same code serves eager training and
        the ``nn.Graph`` training step of :mod:`cv.detection.engine.graph_mode`, which groups the sums per process to
        reproduce DistributedDataParallel's per-process normalisation.
        """
        bbox_regression, cls_logits = head_outputs["bbox_regression"], head_outputs["cls_logits"]
        with flow.no_grad():
            matches = box_ops.ssd_match(box_ops.box_iou(gt_boxes, anchors), valid, self.iou_thresh)  # [B, A]
            foreground = matches >= 0
            matched = matches.clamp(min=0)
            cls_targets = flow.gather(gt_labels, 1, matched).masked_fill(~foreground, 0)
            # Background default boxes are encoded against some real or padding box (finite: both have a positive
            # width and height) and masked out below.
            matched_boxes = flow.gather(gt_boxes, 1, matched[..., None].expand(*matched.shape, 4))
            target_regression = self.box_coder.encode(matched_boxes, anchors)
        box_loss = F.smooth_l1_loss(bbox_regression, target_regression, reduction="none", beta=1.0).sum(dim=2)
        box_loss = box_loss.masked_fill(~foreground, 0.0).sum(dim=1)  # (not a product: 0 * inf would be NaN)

        num_classes = cls_logits.shape[-1]
        cls_loss = F.cross_entropy(cls_logits.reshape(-1, num_classes), cls_targets.reshape(-1),
                                   reduction="none").reshape(cls_targets.shape)
        with flow.no_grad():
            # Hard negative mining: per image, the 3 * positives negatives with the highest loss.
            negative_loss = cls_loss.masked_fill(foreground, -float("inf"))
            _, order = negative_loss.sort(dim=1, descending=True)
            _, rank = order.sort(dim=1)
            num_positive = foreground.to(cls_loss.dtype).sum(dim=1)
            # Positives sort last (their loss here is -inf), so the first 3 * positives ranks are all negatives
            # unless an image has fewer negatives than that; positives are selected anyway.
            selected = foreground | (rank < self.neg_to_pos_ratio * num_positive[:, None])
        cls_loss = (cls_loss * selected.to(cls_loss.dtype)).sum(dim=1)
        return box_loss, cls_loss, num_positive

    def postprocess_detections(self, head_outputs, anchors, image_sizes):
        """Decode boxes, keep per class the best ``topk_candidates`` scoring above ``score_thresh``, NMS per
        class, keep the best ``detections_per_img``, and map boxes to each input image's own size.

        Unlike flowvision's (and torchvision's) SSD, boxes that clipping to the image collapsed to under
        ``MIN_BOX_SIZE`` pixels of width or height are dropped before NMS: they overlap nothing, so they can only
        cost precision, and users would see them as empty detections on the image border.

        On CPU the same steps run in NumPy (:mod:`cv.detection.models.postprocess_cpu`: bit-identical, several times
        faster) unless ``CPU_POSTPROCESS_IN_NUMPY`` is False.
        """
        if CPU_POSTPROCESS_IN_NUMPY and head_outputs["cls_logits"].device.type == "cpu":
            from cv.detection.models import postprocess_cpu

            return postprocess_cpu.postprocess_detections(self, head_outputs, anchors, image_sizes, MIN_BOX_SIZE)
        scores = F.softmax(head_outputs["cls_logits"], dim=-1)[..., 1:]  # [B, A, C-1], background dropped
        boxes = box_ops.clip_boxes_to_image(self.box_coder.decode(head_outputs["bbox_regression"], anchors), self.size)
        k = min(self.topk_candidates, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)  # [B, k, C-1]: per class, its k best default boxes
        nonempty = ((boxes[..., 2] - boxes[..., 0]) >= MIN_BOX_SIZE) & ((boxes[..., 3] - boxes[..., 1]) >= MIN_BOX_SIZE)
        out_h, out_w = self.size
        detections = []
        for i, (h, w) in enumerate(image_sizes):
            keep = (top_scores[i] > self.score_thresh) & nonempty[i][top_idx[i]]
            det_scores = top_scores[i][keep]
            det_boxes = boxes[i][top_idx[i][keep]]
            det_labels = flow.argwhere(keep)[:, 1].to(flow.int64) + 1  # argwhere gives int32
            kept = box_ops.batched_nms(det_boxes, det_scores, det_labels, self.nms_thresh)[: self.detections_per_img]
            scale = flow.tensor([w / out_w, h / out_h] * 2, dtype=det_boxes.dtype, device=det_boxes.device)
            detections.append({"boxes": det_boxes[kept] * scale, "scores": det_scores[kept],
                               "labels": det_labels[kept]})
        return detections
