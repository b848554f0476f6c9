"""COCO-format detection data: the dataset, label mapping, and the loader.

Reads the COCO 2017 layout under a root folder::

    root/train2017/*.jpg  root/val2017/*.jpg  root/annotations/instances_{train,val}2017.json

Labels: on COCO itself the model's labels are COCO's category ids (1..90, the 91-way head of the published
weights). Any other COCO-format file gets contiguous labels 1..K in the order of its category ids, with the
label names and ``num_classes = K + 1`` read from the file, so users train on their own data without editing code.

Only what SSD uses is decoded: boxes and categories, never segmentation masks. This module does not import
oneflow: it runs in DataLoader worker processes, and samples stay NumPy arrays until the training process
turns a batch into tensors (:func:`to_tensors`).
"""
import itertools
import json
import logging
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from cv.detection.transforms import to_chw_float

log = logging.getLogger(__name__)

# COCO 2017's 80 categories by id (ids run to 90 with gaps: the 91-way head keeps the original id space).
COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}
COCO_NUM_CLASSES = 91
# Names by label for the 91-way COCO head (background first; unused ids "N/A").
COCO_LABEL_NAMES = ["__background__"] + [COCO_CATEGORIES.get(i, "N/A") for i in range(1, COCO_NUM_CLASSES)]


def label_mapping(categories, mode="auto"):
    """``(label_to_category_id, label_names, num_classes)`` for a COCO ``categories`` list.

    ``mode``: ``"coco"`` keeps COCO's ids as labels (91 classes); ``"contiguous"`` numbers the categories 1..K
    by id; ``"auto"`` picks ``"coco"`` when every category is one of COCO's (same id and name), else
    ``"contiguous"``. ``label_names[0]`` is ``"__background__"``; names of unused COCO ids are ``"N/A"``.
    """
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    if mode == "auto":
        mode = "coco" if cats and all(COCO_CATEGORIES.get(i) == n for i, n in cats.items()) else "contiguous"
    if mode == "coco":
        unknown = sorted(set(cats) - set(range(1, COCO_NUM_CLASSES)))
        if unknown:
            raise ValueError(f"category ids {unknown} are outside COCO's 1..90: use contiguous labels")
        return {i: i for i in sorted(cats)}, list(COCO_LABEL_NAMES), COCO_NUM_CLASSES
    if mode != "contiguous":
        raise ValueError(f"label mode must be 'auto', 'coco' or 'contiguous', got {mode!r}")
    ids = sorted(cats)
    return {label: cid for label, cid in enumerate(ids, start=1)}, ["__background__"] + [cats[i] for i in ids], len(ids) + 1


def read_annotations(path):
    """The annotation file as a dict, checked for what this module relies on; errors name the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or malformed '{key}' list")
    image_ids = set()
    for img in data["images"]:
        if not isinstance(img, dict):
            raise ValueError(f"{path}: an entry of 'images' is not an object: {str(img)[:80]}")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            value = img.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and key != "id" and value < 1):
                raise ValueError(f"{path}: image {img.get('id', '?')} has no valid '{key}' (got {value!r})")
        image_ids.add(img["id"])
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: an entry of 'annotations' is not an object: {str(ann)[:80]}")
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image id {ann.get('image_id')}")
        if ann.get("category_id") not in category_ids:
            raise ValueError(f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')}) refers to unknown "
                             f"category id {ann.get('category_id')}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and
                                                                  not isinstance(v, bool) for v in bbox)):
            raise ValueError(f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')}) has a malformed "
                             f"bbox {bbox!r}: expected [x, y, width, height]")
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError(f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')}) has a non-finite "
                             f"bbox {bbox!r}")
    return data


def load_rgb(path, exif_transpose=False):
    """The image at ``path`` as an RGB PIL image, whatever its mode; raises ``OSError`` for unreadable files.

    16-bit and 32-bit grayscale are scaled to 8 bits (PIL's own conversion would clip them to white); palette
    and alpha images are converted by PIL (alpha is dropped); CMYK and grayscale by PIL. The pixels are the stored
    ones (COCO's boxes refer to them) unless ``exif_transpose``: then turned as the EXIF orientation says, as image
    viewers show them. A "decompression bomb" (an image over twice Pillow's ``Image.MAX_IMAGE_PIXELS``, 179 million
    pixels by default) is an OSError too.
    """
    try:
        return _load_rgb(path, exif_transpose)
    except Image.DecompressionBombError as e:
        raise OSError(f"refused as a decompression bomb ({e})") from None


def _load_rgb(path, exif_transpose):
    with Image.open(path) as img:
        img.load()  # decode now: a truncated or corrupt file fails here, not later in a transform
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")


class DetectionDataset:
    """What detection datasets share however their annotations are stored (:class:`CocoDetection`,
    :class:`cv.detection.voc.VOCDetection`): reading a sample, the rules for unreadable images, the per-epoch
    augmentation seeding.

    A subclass fills ``images`` with ``(image_id, file path, height, width, boxes [N, 4] float32, labels [N]
    int64)`` per image, and sets ``transform``, ``train``, ``seed``, ``epoch = 0``, ``image_dir`` (named when no
    image can be read) and ``_unreadable = 0``.
    """

    def __len__(self):
        return len(self.images)

    def set_epoch(self, epoch):
        """Augmentation draws depend on the epoch: call this before iterating each epoch."""
        self.epoch = epoch

    def _read(self, index):
        image_id, path, h, w, boxes, labels = self.images[index]
        try:
            image = load_rgb(path)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing, corrupt, truncated files
            raise OSError(f"image {image_id} ({path}) cannot be read: {e}") from None
        if image.size != (w, h):
            raise OSError(f"image {image_id} ({path}) is {image.size[0]}x{image.size[1]} but the annotation file "
                          f"says {w}x{h}: its boxes would be wrong")
        return image, boxes, labels

    def __getitem__(self, index):
        # Training: an unreadable file is skipped (counted and named in a warning) by taking the next image, so
        # a batch keeps its size; evaluation: it is an error.
        for attempt in range(len(self.images)):
            i = (index + attempt) % len(self.images)
            try:
                image, boxes, labels = self._read(i)
                break
            except OSError as e:
                if not self.train:
                    raise
                self._unreadable += 1
                warnings.warn(f"skipped for training: {e} (unreadable images in this process so far: "
                              f"{self._unreadable})")
        else:
            raise OSError(f"no image of {self.image_dir} can be read")
        image_id, _, h, w, _, _ = self.images[i]
        if self.transform is None:
            image = to_chw_float(image)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, boxes, labels = self.transform(image, boxes, labels, rng)
        return image, {"boxes": boxes, "labels": labels, "image_id": image_id, "orig_size": (h, w)}


class CocoDetection(DetectionDataset):
    """A COCO-format split as (image, target) samples.

    Args:
        root: dataset root (the COCO 2017 layout above).
        split: ``"train"`` or ``"val"`` (reads ``{split}2017/`` and ``instances_{split}2017.json``).
        transform: ``transform(image, boxes, labels, rng) -> (image [3, H, W] float32, boxes, labels)``; without
            one, the image is only converted to float32 CHW.
        train: training data skips what cannot be used (images without usable boxes, unreadable files), with
            counts and warnings; evaluation data keeps every image and raises on unreadable files, since
            skipping would silently change the metric.
        labels: ``"auto"``, ``"coco"`` or ``"contiguous"`` (see :func:`label_mapping`).
        seed: augmentation randomness; sample ``i`` in epoch ``e`` uses ``default_rng([seed, e, i])``, so runs are
            reproducible whatever the number of workers.
        max_images: keep only the first N usable images (by image id), for quick runs.

    A sample is ``(image, target)``: ``image`` float32 ``[3, H, W]``; ``target`` a dict with ``boxes`` float32
    ``[N, 4]`` (``x1, y1, x2, y2`` in pixels of ``image``), ``labels`` int64 ``[N]``, ``image_id`` and
    ``orig_size`` ``(height, width)`` of the file.

    Boxes are clipped to the image; crowd annotations are ignored; boxes that are empty after clipping are
    dropped. Everything dropped is counted in ``self.stats`` and reported once in a warning.
    """

    def __init__(self, root, split="train", transform=None, train=None, labels="auto", seed=0, max_images=None):
        self.root = os.fspath(root)
        self.split = split
        self.image_dir = os.path.join(self.root, f"{split}2017")
        self.annotation_file = os.path.join(self.root, "annotations", f"instances_{split}2017.json")
        self.transform = transform
        self.train = split == "train" if train is None else train
        self.seed = seed
        self.epoch = 0
        self.dataset = read_annotations(self.annotation_file)
        self.label_to_category_id, self.label_names, self.num_classes = label_mapping(
            self.dataset["categories"], labels)
        category_to_label = {c: label for label, c in self.label_to_category_id.items()}
        self.stats = {"crowd_ignored": 0, "degenerate_dropped": 0, "images_without_boxes": 0,
                      "images_skipped_for_training": 0}
        anns_by_image = {}
        for ann in self.dataset["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        self.images = []  # (image_id, file path, height, width, boxes [N, 4] float32, labels [N] int64)
        for img in sorted(self.dataset["images"], key=lambda im: im["id"]):
            h, w = int(img["height"]), int(img["width"])
            boxes, labels_ = [], []
            for ann in anns_by_image.get(img["id"], []):
                if ann.get("iscrowd", 0):
                    self.stats["crowd_ignored"] += 1
                    continue
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                box = [min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)]
                if not (box[2] > box[0] and box[3] > box[1]):
                    self.stats["degenerate_dropped"] += 1
                    continue
                boxes.append(box)
                labels_.append(category_to_label[ann["category_id"]])
            if not boxes:
                self.stats["images_without_boxes"] += 1
                if self.train:
                    self.stats["images_skipped_for_training"] += 1
                    continue
            self.images.append((img["id"], os.path.join(self.image_dir, img["file_name"]), h, w,
                                np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels_, dtype=np.int64)))
        if max_images is not None:
            self.images = self.images[:max_images]
        dropped = {k: v for k, v in self.stats.items() if v}
        if dropped:
            warnings.warn(f"{self.annotation_file}: " + ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                                for k, v in dropped.items()))
        if not self.images:
            raise ValueError(f"{self.annotation_file}: no usable images in the '{split}' split")
        self._unreadable = 0
        self._coco = None

    def evaluator(self):
        """The evaluator of this split (:class:`cv.detection.coco_eval.CocoEvaluator`; its primary metric is
        ``AP``). Datasets of other formats have their own, with the same interface."""
        from cv.detection.coco_eval import CocoEvaluator

        return CocoEvaluator(self.dataset, self.label_to_category_id)


def collate(batch):
    """A batch as ``(images, targets)`` lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def to_tensors(images, targets, device="cpu"):
    """Turn a collated batch into the model's input: lists of oneflow tensors, images on ``device``. Targets stay
    on the host: the loss reads them there to pad the batch, then moves the padded batch once."""
    import oneflow as flow

    images = [flow.tensor(im, device=device) for im in images]
    targets = [{"boxes": flow.tensor(t["boxes"], dtype=flow.float32).reshape(-1, 4),
                "labels": flow.tensor(t["labels"], dtype=flow.int64).reshape(-1),
                "image_id": t["image_id"]} for t in targets]
    return images, targets


def make_loader(dataset, batch_size, workers=2, shuffle=True, distributed=False, drop_last=False, seed=0):
    """A DataLoader over ``dataset`` with :func:`collate`.

    The order depends only on ``seed`` and the epoch (call :func:`set_epoch` before each epoch), never on how
    many epochs this loader has run, and an epoch can begin part-way: a resumed run sees the same batches as an
    uninterrupted one. With ``distributed``, each rank reads its own shard; the last shard is padded with repeated
    images, which the evaluator de-duplicates.
    """
    from oneflow.utils.data import DataLoader, DistributedSampler

    class Sampler(DistributedSampler):
        """OneFlow's DistributedSampler (the epoch-seeded order and the sharding), from index ``start`` on."""

        start = 0

        def __iter__(self):
            return itertools.islice(super().__iter__(), self.start, None)

        def __len__(self):
            return super().__len__() - self.start

    if distributed:
        sampler = Sampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = Sampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      drop_last=drop_last)


def set_epoch(loader, epoch, start=0):
    """Select the epoch's shuffle and augmentation draws; the epoch's batches begin at batch ``start``."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.start = start * loader.batch_size
    loader.dataset.set_epoch(epoch)
