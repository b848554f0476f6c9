"""A detecting SSD without pretrained weights: its heads fitted to a few images over a frozen, randomly initialised
trunk.

Measuring what a change of backend does to accuracy (int8 quantization: ``tests/test_int8.py``, ``benchmark.py
--sections int8``) needs a model that really detects objects, with detections whose scores and boxes are worth
comparing. There are no pretrained weights without a network, and training SSD300 on a CPU costs seconds per image
per step. Most of that is the trunk: VGG16 up to conv4_3 is 80% of the arithmetic, and the backward pass doubles it.
Here the trunk (backbone) stays as initialised and runs once per training view; only the heads (the twelve 3x3
convolutions that turn the six feature maps into class scores and box offsets) are trained, on the cached feature
maps, with the model's own loss (:meth:`SSD.compute_loss`: IoU matching, smooth-L1, hard-negative mining).

Random convolutional features are rich enough for the heads to learn the sample dataset's shapes on the images
they were fitted to (its float32 AP there is the number to look at; see :func:`fit_heads`). The training views are
the images as the model sees them at inference, plus views drawn by the SSD training augmentation (photometric
distortion, zoom-out, IoU crop, flip): as in real training, the heads then have to work on varied pixels rather
than memorise one exact feature vector per box. A model fitted without them places its boxes on its training
images to a small fraction of a pixel, which no trained detector does, and any change to the network's arithmetic
then costs AP at the strict IoU thresholds.
"""
import time

import numpy as np
import oneflow as flow

from cv.detection.data.coco import CocoDetection


def _targets(boxes, labels):
    return {"boxes": flow.tensor(np.asarray(boxes, np.float32)).reshape(-1, 4),
            "labels": flow.tensor(np.asarray(labels, np.int64)).reshape(-1)}


@flow.no_grad()
def _features(model, images, chunk=4):
    """The backbone's feature maps for a list of ``[3, H, W]`` tensors, computed ``chunk`` images at a time."""
    maps = None
    for start in range(0, len(images), chunk):
        out = model.backbone(model.preprocess(images[start:start + chunk]))
        out = list(out.values()) if isinstance(out, dict) else list(out)
        maps = [[f] for f in out] if maps is None else [m + [f] for m, f in zip(maps, out)]
    return [flow.cat(m) for m in maps]


class PhotometricFlip:
    """The SSD augmentation's photometric distortion and horizontal flip, without its zoom-out and crop: views of the
    same objects at the same scale, in other colours and mirrored. As a ``transform`` of :class:`CocoDetection`."""

    def __init__(self):
        from cv.detection.data.transforms import Compose, HorizontalFlip, PhotometricDistort

        self.chain = Compose([PhotometricDistort(), HorizontalFlip()])

    def __call__(self, image, boxes, labels, rng):
        from cv.detection.data.transforms import to_chw_float

        image, boxes, labels = self.chain(image, boxes, labels, rng)
        return to_chw_float(image), boxes, labels


def training_views(model, root, num_images, augmented_views=3, augmentation="photometric", split="train", seed=0):
    """Feature maps and targets of the first ``num_images`` images of the COCO-format split ``root/split``: each
    image as inference sees it (resized whole), then ``augmented_views`` draws of the SSD training augmentation.

    Returns ``(features, targets, image_sizes, dataset)``: ``features`` the list of the backbone's maps over all
    views (the plain views first, in image order), ``targets`` and ``image_sizes`` per view as
    :meth:`SSD.compute_loss` takes them, ``dataset`` the plain :class:`CocoDetection` of those images.
    """
    from cv.detection.ssd300_vgg16.model import train_transform

    plain = CocoDetection(root, split, max_images=num_images)
    images, targets, sizes = [], [], []
    for i in range(len(plain)):
        image, t = plain[i]
        images.append(flow.tensor(image))
        targets.append(_targets(t["boxes"], t["labels"]))
        sizes.append(tuple(image.shape[-2:]))
    transform = {"photometric": PhotometricFlip, "ssd": train_transform}[augmentation]()
    augmented = CocoDetection(root, split, transform=transform, max_images=num_images, seed=seed)
    for view in range(augmented_views):
        augmented.set_epoch(view)
        for i in range(len(augmented)):
            image, t = augmented[i]
            images.append(flow.tensor(image))
            targets.append(_targets(t["boxes"], t["labels"]))
            sizes.append(tuple(image.shape[-2:]))
    return _features(model, images), targets, sizes, plain


def _unfolded(features):
    """Each feature map's 3x3 neighbourhoods (im2col), ``[V, C * 9, H * W]`` in the order of a convolution weight's
    ``(C, 3, 3)``, computed once: the features never change, so every step's head convolutions become plain matrix
    products, which OneFlow's CPU runs several times faster than its convolutions with the heads' few output
    channels. Built with NumPy: OneFlow's ``unfold`` is far slower on the CPU."""
    columns = []
    for f in features:
        x = np.pad(f.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
        v, c, h, w = f.shape
        shifted = np.stack([x[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=2)
        columns.append(flow.tensor(shifted.reshape(v, c * 9, h * w)))
    return columns


def _scores(scoring_head, columns, grid_sizes):
    """What ``scoring_head`` (an :class:`~cv.detection.models.ssd.SSDScoringHead`: 3x3 convolutions, padding 1)
    outputs for views whose unfolded maps are ``columns``, in its layout (``[N, H * W * A, K]`` per map,
    concatenated)."""
    out = []
    for conv, u, (h, w) in zip(scoring_head.module_list, columns, grid_sizes):
        y = flow.matmul(conv.weight.view(conv.weight.shape[0], -1), u) + conv.bias.view(1, -1, 1)
        k = scoring_head.num_columns
        out.append(y.view(y.shape[0], -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(y.shape[0], -1, k))
    return flow.cat(out, dim=1)


def head_outputs(head, columns, grid_sizes):
    """``head(features)`` (an :class:`~cv.detection.models.ssd.SSDHead`) from the features' :func:`_unfolded`
    maps."""
    return {"bbox_regression": _scores(head.regression_head, columns, grid_sizes),
            "cls_logits": _scores(head.classification_head, columns, grid_sizes)}


def fit_heads(model, features, targets, image_sizes, steps=150, batch_size=8, lr=1e-3, weight_decay=0.0, seed=0,
              log=None):
    """Train ``model.head`` (everything else frozen) on cached ``features`` (from :func:`training_views`) with
    :meth:`SSD.compute_loss` and Adam, ``batch_size`` views per step, the views reshuffled every pass (seeded).
    ``log(step, losses, seconds)`` is called every 25 steps and at the end. Returns ``model``, in eval mode."""
    params = list(model.head.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = flow.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    grid_sizes = [tuple(f.shape[-2:]) for f in features]
    anchors = model.anchor_generator(grid_sizes, model.size, features[0].device, features[0].dtype)
    columns = _unfolded(features)
    rng = np.random.default_rng(seed)
    order, start = [], time.perf_counter()
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.permutation(len(targets)).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        index = flow.tensor(batch, dtype=flow.int64)
        # index_select: indexing with a tensor (u[index]) gives the same rows far more slowly on OneFlow's CPU.
        head = head_outputs(model.head, [flow.index_select(u, 0, index) for u in columns], grid_sizes)
        losses = model.compute_loss([targets[i] for i in batch], [image_sizes[i] for i in batch], head, anchors)
        loss = sum(losses.values())
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite loss at step {step}: "
                                     + ", ".join(f"{k}={float(v)}" for k, v in losses.items()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log is not None and (step % 25 == 0 or step == steps - 1):
            log(step, {k: float(v) for k, v in losses.items()}, time.perf_counter() - start)
    for p in params:
        p.requires_grad_(False)
    return model.eval()


@flow.no_grad()
def detect_from_features(model, features, image_sizes):
    """The model's detections from cached backbone features (the plain views: see :func:`training_views`)."""
    head = model.head(features)
    return model.detect(head, [tuple(f.shape[-2:]) for f in features], image_sizes)


def fitted_ssd300(root, num_images, augmented_views=3, steps=150, batch_size=8, lr=1e-3, seed=0, log=None):
    """SSD300-VGG16 (random trunk, ``seed``) with its heads fitted to the first ``num_images`` of the COCO-format
    training split in ``root`` (see :func:`training_views`, :func:`fit_heads`). Returns ``(model, dataset)``:
    the model in eval mode and the plain :class:`CocoDetection` of those images (what it detects on)."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(seed)
    model = ssd300_vgg16(num_classes=CocoDetection(root, "train", max_images=1).num_classes).eval()
    features, targets, sizes, dataset = training_views(model, root, num_images, augmented_views, seed=seed)
    fit_heads(model, features, targets, sizes, steps=steps, batch_size=batch_size, lr=lr, seed=seed, log=log)
    return model, dataset
