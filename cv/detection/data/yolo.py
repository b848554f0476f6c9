"""YOLO-format detection data, as ultralytics writes it and most labelling tools export it (Roboflow, CVAT, Label
Studio): a folder of images per split, and beside it a folder of label files.

**Images and label files.** A split is one or more image sources (:func:`image_files`): a folder (its images, in
sub-folders too), a ``.txt`` file listing images (one path a line; relative ones from the list's folder, see
:func:`_listed`) or one image file. Any file PIL can open counts as an image. The label file of
``.../images/train/a.jpg`` is ``.../labels/train/a.txt``: the last ``images`` component of the path becomes
``labels`` and the extension ``.txt`` (:func:`label_path`, ultralytics' rule); a path without an ``images``
component has its label file beside it. An image without a label file is an image without objects.

**Label lines**: ``class cx cy w h``: the 0-based class (an index into ``names``) and the box's centre and size,
normalised by the image's width and height (0-1). The image size is read from the file's header (no decoding),
turned as its EXIF orientation says: YOLO tools label the image as viewers show it (ultralytics reads it so), and
the samples are read the same way. A box may leave the image by :data:`BORDER_TOLERANCE` pixel (rounding in
exports) and is then clipped; a box empty after clipping is dropped, a line repeated in a file kept once.

**Labels**: the model's label is the class + 1 (0 is the background); ``label_names`` come from ``names``.
Evaluation uses COCO's protocol: :meth:`YoloDetection.coco_ground_truth` converts the split's labels to a COCO
dict (category id = class + 1, ``area`` = the box's) for :class:`cv.detection.evaluation.coco.CocoEvaluator`.

**Bad data**, as for COCO and VOC: a line with another field count than 5, a class outside ``names``, a
non-finite value, a negative size or a box outside the image, an unreadable label file or image header, is a
ValueError naming the file (and line) for evaluation data, and for training data a counted skip of that image,
reported once in a warning with the first reasons.

**Image ids** are stable whatever the process or run: a 52-bit hash of the image's path relative to the dataset
root, plus 2^52 (:func:`image_id`, as :func:`cv.detection.data.voc.image_id` does for names that are not VOC's):
the same file listed in two splits has the same id, and ids stay below 2^53 (exact in the evaluator's float64
gather).

Like the other dataset modules, this one does not import oneflow (it runs in DataLoader workers).
"""
import hashlib
import math
import os
import warnings

import numpy as np
from PIL import Image

from cv.detection.data.base import DetectionDataset, ImageRecord, check_class_names

# Pixels a box may leave the image by and still be clipped to it: what rounding of normalised coordinates produces.
BORDER_TOLERANCE = 1.0
# How many bad label files a training set's warning names (all are counted).
REASONS_SHOWN = 3
HASHED_IDS = 1 << 52
EXIF_ORIENTATION = 0x0112


def parse_names(names, nc, source):
    """The class names of a data.yaml: ``names`` as a list, or as a map from class id (0..K-1) to name; absent,
    ``class0``.. ``class{nc-1}`` as ultralytics names them. ``nc``, when given, must be their count."""
    if names is None and isinstance(nc, int) and not isinstance(nc, bool):
        names = [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: 'names' maps class ids to names; its keys must be integers") from None
        if ids != list(range(len(ids))):
            raise ValueError(f"{source}: the class ids of 'names' must be 0..{len(ids) - 1}, got {ids[:10]}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    elif names is None:
        names = []
    elif not isinstance(names, list):
        raise ValueError(f"{source}: 'names' must be a list of class names or a map from class id to name")
    names = check_class_names(names, source)
    if nc is not None and nc != len(names):
        raise ValueError(f"{source}: nc is {nc} but 'names' has {len(names)} classes")
    return names


def highest_class(folder):
    """The highest class id in the label files under ``folder`` (-1 if there is none). Lines that do not start with
    an integer are left to the datasets, which report them with their file and line."""
    highest = -1
    for parent, dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".txt"):
                with open(os.path.join(parent, name), encoding="utf-8", errors="replace") as f:
                    first = [line.split(None, 1)[0] for line in f if line.strip()]
                highest = max([highest] + [int(v) for v in first if v.isdigit()])
    return highest


def image_extensions():
    """The file extensions PIL can open (``.jpg``, ``.png``, ``.webp``, ...), lower case."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def image_files(source):
    """The images of one source (see the module docstring), sorted by path. A missing source is a
    FileNotFoundError naming it."""
    extensions = image_extensions()
    if os.path.isdir(source):
        found = []
        for folder, dirs, files in os.walk(source, followlinks=True):
            dirs.sort()
            found += [os.path.join(folder, f) for f in files if os.path.splitext(f)[1].lower() in extensions]
        return sorted(found)
    if os.path.isfile(source) and source.lower().endswith(".txt"):
        parent = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        return sorted(_listed(parent, line) for line in lines)
    if os.path.isfile(source):
        return [source]
    raise FileNotFoundError(f"no such image folder or list: {source}")


def _listed(parent, line):
    """The path a line of an image list names: ``./x`` from the list's folder (ultralytics' rule); another relative
    path from there too if it exists there (CVAT writes paths relative to the dataset), else from the current
    folder (ultralytics' rule)."""
    if line.startswith("./"):
        return os.path.join(parent, line[2:])
    beside = os.path.join(parent, line)
    return beside if not os.path.isabs(line) and os.path.exists(beside) else os.path.abspath(line)


def label_path(image_path):
    """The label file of an image: the last ``images`` path component becomes ``labels``, the extension ``.txt``."""
    parts = os.path.normpath(image_path).split(os.sep)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return os.path.splitext(os.sep.join(parts))[0] + ".txt"


def image_id(path, root):
    """A stable integer id of the image at ``path``: 2^52 + a 52-bit SHA-256 hash of its path relative to
    ``root``, with ``/`` separators."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root)).replace(os.sep, "/")
    return HASHED_IDS + int(hashlib.sha256(relative.encode()).hexdigest()[:13], 16)


def image_size(path):
    """``(width, height)`` of an image as viewers show it (after its EXIF orientation), from the header only.
    OSError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise OSError(f"image {path} cannot be read: {e}") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def parse_label_file(path, width, height, num_classes):
    """The boxes of one label file for an image of ``width`` x ``height`` pixels: ``(boxes float32 [N, 4] x1 y1 x2
    y2 in pixels, labels int64 [N] = class + 1, counts)``, ``counts`` with ``boxes_clipped``, ``degenerate_dropped``
    and ``duplicate_boxes_dropped``. A missing file is an image without objects. ValueError naming the file and
    line for anything wrong in it."""
    counts = {"boxes_clipped": 0, "degenerate_dropped": 0, "duplicate_boxes_dropped": 0}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), counts
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as text ({e})") from None
    boxes, labels, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        cls, box = _parse_line(fields, width, height, num_classes, f"{path}, line {number}")
        if (cls, *fields[1:]) in seen:
            counts["duplicate_boxes_dropped"] += 1
            continue
        seen.add((cls, *fields[1:]))
        inside = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height), min(max(box[2], 0.0), width),
                  min(max(box[3], 0.0), height)]
        counts["boxes_clipped"] += inside != box
        if not (inside[2] > inside[0] and inside[3] > inside[1]):
            counts["degenerate_dropped"] += 1
            continue
        boxes.append(inside)
        labels.append(cls + 1)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64), counts


def _parse_line(fields, width, height, num_classes, where):
    """``(class, [x1, y1, x2, y2] in pixels)`` of one label line; ValueError starting with ``where``."""
    if len(fields) != 5:
        raise ValueError(f"{where}: {len(fields)} fields, expected 5 (class cx cy w h)"
                         + ("; polygon (segmentation) labels are not read" if len(fields) > 5 else ""))
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise ValueError(f"{where}: not a number in {' '.join(fields)!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: a non-finite value in {' '.join(fields)!r}")
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise ValueError(f"{where}: class {fields[0]} is not one of the {num_classes} classes (0..{num_classes - 1})")
    cx, cy, w, h = values[1:]
    if w < 0 or h < 0:
        raise ValueError(f"{where}: negative width or height in {' '.join(fields)!r}")
    box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    if min(box[0], box[1]) < -BORDER_TOLERANCE or box[2] > width + BORDER_TOLERANCE or \
            box[3] > height + BORDER_TOLERANCE:
        raise ValueError(f"{where}: the box {' '.join(fields[1:])} leaves the image (normalised coordinates are "
                         f"0-1; at most {BORDER_TOLERANCE:g} px beyond the {width}x{height} image is clipped)")
    return int(cls), box


class YoloDetection(DetectionDataset):
    """A YOLO-format split as (image, target) samples (see :class:`~cv.detection.data.base.DetectionDataset`).

    Args:
        sources: the split's image sources (a path or a list; see :func:`image_files`).
        names: the class names, by class id (:func:`cv.detection.data.base.check_class_names`).
        root: the dataset root: image ids are hashes of paths relative to it (default: the first source's folder).
        split: the split's name, for messages; ``source`` names where it is described (a data.yaml).
        transform, seed: as for :class:`~cv.detection.data.base.DetectionDataset`.
        train: training data skips images without boxes and images whose label file or header is bad (counted,
            reported once in a warning); evaluation data keeps every image and raises. Default: true for the split
            named ``train``.
        max_images: keep only the first N usable images (in path order), for quick runs.

    Counts of what was dropped or skipped are in ``self.stats``.
    """

    exif_transpose = True  # YOLO labels refer to the image as viewers show it

    def __init__(self, sources, names, root=None, split="train", transform=None, train=None, seed=0,
                 max_images=None, source=None):
        sources = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
        self.root = os.fspath(root) if root else os.path.dirname(os.path.abspath(sources[0]))
        self.split = split
        names = check_class_names(names, source or sources[0])
        train = split == "train" if train is None else train
        self.stats = {"images_without_label_file": 0, "boxes_clipped": 0, "degenerate_dropped": 0,
                      "duplicate_boxes_dropped": 0, "images_without_boxes": 0, "images_skipped_for_training": 0,
                      "bad_files_skipped": 0}
        self._reasons = []
        description = f"{source or ', '.join(sources)} ({split})"
        records = self._records(sources, len(names), train, max_images)
        counts = {k: v for k, v in self.stats.items() if v}
        if counts:
            warnings.warn(f"{description}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())
                          + "".join(f"; {r}" for r in self._reasons))
        if not records:
            raise ValueError(f"{description}: no usable images in this split")
        image_dir = sources[0] if os.path.isdir(sources[0]) else os.path.dirname(sources[0])
        super().__init__(records, ["__background__", *names], {k: k for k in range(1, len(names) + 1)}, description,
                         image_dir, transform=transform, train=train, seed=seed)

    def _records(self, sources, num_classes, train, max_images):
        records, ids = [], {}
        for path in dict.fromkeys(p for s in sources for p in image_files(s)):
            try:
                record = self._record(path, num_classes)
            except (OSError, ValueError) as e:
                if not train:
                    raise ValueError(str(e)) from None
                self.stats["bad_files_skipped"] += 1
                if len(self._reasons) < REASONS_SHOWN:
                    self._reasons.append(str(e))
                continue
            if record.image_id in ids:  # two paths with the same 52-bit hash: astronomically unlikely
                raise ValueError(f"{path} and {ids[record.image_id]} have the same image id {record.image_id}")
            ids[record.image_id] = path
            if not len(record.labels):
                self.stats["images_without_boxes"] += 1
                if train:
                    self.stats["images_skipped_for_training"] += 1
                    continue
            records.append(record)
            if max_images is not None and len(records) == max_images:
                break
        return records

    def _record(self, path, num_classes):
        width, height = image_size(path)
        labels_file = label_path(path)
        if not os.path.exists(labels_file):
            self.stats["images_without_label_file"] += 1
        boxes, labels, counts = parse_label_file(labels_file, width, height, num_classes)
        for key, value in counts.items():
            self.stats[key] += value
        return ImageRecord(image_id(path, self.root), path, height, width, boxes, labels)

    def coco_ground_truth(self):
        """This split's boxes as a COCO annotation dict: category id = class + 1 (the model's label), ``bbox``
        ``[x, y, w, h]`` in pixels, ``area`` the box's (YOLO has no masks), no crowds."""
        images, annotations = [], []
        for record in self.images:
            images.append({"id": record.image_id, "file_name": os.path.relpath(record.path, self.root),
                           "width": record.width, "height": record.height})
            for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "category_id": label,
                                    "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        categories = [{"id": k, "name": name} for k, name in enumerate(self.label_names[1:], start=1)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def evaluator(self):
        """A :class:`cv.detection.evaluation.coco.CocoEvaluator` on :meth:`coco_ground_truth` (primary ``AP``)."""
        from cv.detection.evaluation.coco import CocoEvaluator

        return CocoEvaluator(self.coco_ground_truth(), self.label_to_category_id)
