"""COCO-format detection data: the dataset, its label mapping and COCO's category names.

Reads the COCO 2017 layout under a root folder::

    root/train2017/*.jpg  root/val2017/*.jpg  root/annotations/instances_{train,val}2017.json

Labels: on COCO itself the model's labels are COCO's category ids (1..90, the 91-way head of the published
weights). Any other COCO-format file gets contiguous labels 1..K in the order of its category ids, with the
label names and ``num_classes = K + 1`` read from the file, so users train on their own data without editing code.

Only what SSD uses is decoded: boxes and categories, never segmentation masks.
"""
import json
import logging
import math
import os
import warnings

import numpy as np

from cv.detection.data.base import DetectionDataset, ImageRecord, check_class_names

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
    names = ["__background__"] + [cats[i] for i in ids]
    return {label: cid for label, cid in enumerate(ids, start=1)}, names, len(ids) + 1


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


class CocoDetection(DetectionDataset):
    """A COCO-format split as (image, target) samples (see :class:`~cv.detection.data.base.DetectionDataset`).

    Args:
        root: dataset root (the COCO 2017 layout above).
        split: ``"train"`` or ``"val"`` (reads ``{split}2017/`` and ``instances_{split}2017.json``).
        transform, seed: as for :class:`~cv.detection.data.base.DetectionDataset`.
        train: training data skips what cannot be used (images without usable boxes, unreadable files), with
            counts and warnings; evaluation data keeps every image and raises on unreadable files. Default: true
            for the split named ``train``.
        labels: ``"auto"``, ``"coco"`` or ``"contiguous"`` (see :func:`label_mapping`).
        max_images: keep only the first N usable images (by image id), for quick runs.
        image_dir, annotation_file: the split's image folder and annotation file when they are not named as in
            COCO 2017 (a dataset YAML names them); ``root`` and ``split`` then only label the split.

    Boxes are clipped to the image; crowd annotations are ignored; boxes that are empty after clipping are
    dropped. Everything dropped is counted in ``self.stats`` and reported once in a warning.
    """

    def __init__(self, root, split="train", transform=None, train=None, labels="auto", seed=0, max_images=None,
                 image_dir=None, annotation_file=None):
        self.root = os.fspath(root)
        self.split = split
        image_dir = image_dir or os.path.join(self.root, f"{split}2017")
        annotation_file = annotation_file or os.path.join(self.root, "annotations", f"instances_{split}2017.json")
        train = split == "train" if train is None else train
        self.dataset = read_annotations(annotation_file)
        check_class_names([c.get("name", c.get("id")) for c in self.dataset["categories"]], annotation_file)
        label_to_category_id, label_names, _ = label_mapping(self.dataset["categories"], labels)
        self.stats = {"crowd_ignored": 0, "degenerate_dropped": 0, "images_without_boxes": 0,
                      "images_skipped_for_training": 0}
        records = self._records(image_dir, {c: label for label, c in label_to_category_id.items()}, train)
        if max_images is not None:
            records = records[:max_images]
        dropped = {k: v for k, v in self.stats.items() if v}
        if dropped:
            warnings.warn(f"{annotation_file}: " + ", ".join(f"{k.replace('_', ' ')}: {v}"
                                                           for k, v in dropped.items()))
        if not records:
            raise ValueError(f"{annotation_file}: no usable images in the '{split}' split")
        super().__init__(records, label_names, label_to_category_id, annotation_file, image_dir, transform=transform,
                         train=train, seed=seed)

    def _records(self, image_dir, category_to_label, train):
        anns_by_image = {}
        for ann in self.dataset["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        records = []
        for img in sorted(self.dataset["images"], key=lambda im: im["id"]):
            h, w = int(img["height"]), int(img["width"])
            boxes, labels = [], []
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
                labels.append(category_to_label[ann["category_id"]])
            if not boxes:
                self.stats["images_without_boxes"] += 1
                if train:
                    self.stats["images_skipped_for_training"] += 1
                    continue
            records.append(ImageRecord(img["id"], os.path.join(image_dir, img["file_name"]), h, w,
                                       np.array(boxes, dtype=np.float32).reshape(-1, 4),
                                       np.array(labels, dtype=np.int64)))
        return records

    def evaluator(self):
        """The evaluator of this split (:class:`cv.detection.evaluation.coco.CocoEvaluator`; its primary metric is
        ``AP``). Datasets of other formats have their own, with the same interface."""
        from cv.detection.evaluation.coco import CocoEvaluator

        return CocoEvaluator(self.dataset, self.label_to_category_id)


