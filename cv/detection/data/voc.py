"""Pascal VOC detection data: VOC2007, VOC2012, or your own data in VOC's layout.

A VOC "year" folder holds::

    VOC2007/Annotations/<name>.xml  VOC2007/ImageSets/Main/{train,val,trainval,test}.txt  VOC2007/JPEGImages/<name>.jpg

``root`` may be such a folder, a folder holding several (``VOCdevkit/`` with ``VOC2007/`` and ``VOC2012/``), or a
folder holding ``VOCdevkit/`` (where VOC's tarballs extract to). A year is named by its folder without the ``VOC``
prefix (``VOC2007`` -> ``2007``; any other folder name stands for itself).

**Splits** (:func:`parse_split`): a comma-separated list of ``[YEAR-]SET``, each an image set of
``ImageSets/Main/SET.txt``: ``2007-trainval,2012-trainval`` is the SSD paper's "07+12" training data, ``2007-test``
its VOC2007 test set; a bare ``SET`` means that set of every year that has it. Defaults
(:func:`default_val_split`, :func:`default_train_split`):
evaluation on ``2007-test`` if VOC2007 has a test set, else on ``val`` of every year; training on ``trainval`` of
every year, but on ``train`` for a year whose ``val`` is evaluated (no image is trained and evaluated on).

**Labels**: VOC's 20 classes in VOC's order (aeroplane = 1, ..., tvmonitor = 20), 0 the background:
``num_classes = 21``. VOC has no category ids: ``label_to_category_id`` maps each label to itself.

**Boxes**: VOC's coordinates are 1-based pixel indices, inclusive (a box over a whole W x H image is 1, 1, W, H);
the model's are continuous, 0 to W. ``xmin - 1, ymin - 1, xmax, ymax`` converts one into the other (as Detectron2
does), so a box's width ``x2 - x1`` is the devkit's ``xmax - xmin + 1`` and an IoU of converted boxes is the
devkit's. Annotation tools often write 0-based coordinates (0..W): a box that leaves the image by at most
:data:`BORDER_TOLERANCE` pixel is clipped to it (counted in ``stats["boxes_clipped"]``); further out is an error.

**"difficult" objects** (VOC marks objects that are hard to recognise) are not training targets unless
``keep_difficult``; evaluation ignores them, as the devkit does (:mod:`cv.detection.evaluation.voc`), so the
ground truth keeps them, flagged.

**Bad data**, as for COCO (:mod:`cv.detection.data.coco`): an annotation file that is missing or not valid XML, that
lacks a field, names a class outside the 20, or holds a box outside the image is an error naming the file for
evaluation data (skipping it would change the metric), and for training data a counted skip of that image,
reported once in a warning with the first reasons. A missing, corrupt or mis-sized image is the same rule, applied
when it is read (:class:`cv.detection.data.base.DetectionDataset`).

Like :mod:`cv.detection.data.coco`, this module does not import oneflow (it runs in DataLoader workers).
"""
import hashlib
import os
import re
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from cv.detection.data.base import DetectionDataset, ImageRecord

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_LABEL_NAMES = ["__background__", *VOC_CLASSES]

# Pixels a box may leave the image by and still be clipped to it: what 0-based tools (0..W) and rounding produce.
BORDER_TOLERANCE = 1.0
# How many bad annotation files a training set's warning names (all are counted).
REASONS_SHOWN = 3

_YEAR_FOLDER = re.compile(r"^VOC(\d{4})$")
_VOC_NAME = re.compile(r"^(\d{4}_)?\d{6}$")   # VOC's own image names: 000005 (2007), 2008_000123 (2008 on)
# Image ids: VOC's own names give readable ids below 10^14 (year * 10^10 + the name's digits), any other name a
# 52-bit hash above HASHED_IDS. Both stay below 2^53, so they travel exactly through float64 (voc_eval's gather).
HASHED_IDS = 1 << 52


def is_year_folder(path):
    """True if ``path`` has VOC's three folders (Annotations, ImageSets/Main, JPEGImages)."""
    return all(os.path.isdir(os.path.join(path, d)) for d in ("Annotations", os.path.join("ImageSets", "Main"),
                                                               "JPEGImages"))


def year_name(folder):
    """``VOC2007`` -> ``2007``; any other folder name stands for itself."""
    name = os.path.basename(os.path.normpath(folder))
    match = _YEAR_FOLDER.match(name)
    return match.group(1) if match else name


def find_years(root):
    """``{year: folder}`` of the VOC year folders at ``root`` (itself one, or the folders in it, or in its
    ``VOCdevkit/``), in name order; ``{}`` if there are none."""
    root = os.fspath(root)
    if is_year_folder(root):
        return {year_name(root): root}
    for base in (root, os.path.join(root, "VOCdevkit")):
        if os.path.isdir(base):
            folders = sorted(os.path.join(base, d) for d in os.listdir(base) if is_year_folder(os.path.join(base, d)))
            if folders:
                return {year_name(f): f for f in folders}
    return {}


def image_sets(folder):
    """The image set names of a year folder (``ImageSets/Main/*.txt`` without VOC's per-class lists)."""
    main = os.path.join(folder, "ImageSets", "Main")
    names = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt"))
    per_class = {n for n in names if "_" in n and n.split("_", 1)[0] in VOC_CLASSES}
    return [n for n in names if n not in per_class]


def parse_split(spec, years):
    """``[(year, set), ...]`` for a split ``spec`` (see the module docstring) over ``years`` (``{year: folder}``).

    ``YEAR-SET`` names one year's set; a bare ``SET`` that set of every year that has it. ValueError naming what is
    missing (an unknown year, a set without its ``ImageSets/Main/SET.txt``) and what exists."""
    pairs = []
    for item in (s.strip() for s in str(spec).split(",")):
        if not item:
            raise ValueError(f"split {spec!r}: an empty item (the syntax is [YEAR-]SET[,[YEAR-]SET...])")
        if re.match(r"^VOC\d{4}-", item):
            item = item[3:]  # VOC2007-test: the folder's name
        # Longest year first: a year (folder) name may itself contain "-".
        year = next((y for y in sorted(years, key=len, reverse=True) if item.startswith(f"{y}-")), None)
        if year is None and re.match(r"^\d{4}-", item):
            raise ValueError(f"split {spec!r}: no year {item.split('-')[0]!r} here (found: {', '.join(years)})")
        if year is None:
            found = [(y, item) for y, folder in years.items() if item in image_sets(folder)]
            if not found:
                raise ValueError(f"split {spec!r}: no year has an image set {item!r} (ImageSets/Main/{item}.txt); "
                                 + "; ".join(f"{y}: {', '.join(image_sets(f))}" for y, f in years.items()))
            pairs += found
            continue
        name = item[len(year) + 1:]
        if name not in image_sets(years[year]):
            raise ValueError(f"split {spec!r}: {os.path.join(years[year], 'ImageSets', 'Main', name + '.txt')} does "
                             f"not exist (the sets of {year}: {', '.join(image_sets(years[year]))})")
        pairs.append((year, name))
    return list(dict.fromkeys(pairs))


def format_split(pairs):
    return ",".join(f"{year}-{name}" for year, name in pairs)


def default_val_split(years):
    """The evaluation split by default: ``2007-test`` when VOC2007 has a test set, else ``val`` of every year that
    has one (ValueError if none has)."""
    if "2007" in years and "test" in image_sets(years["2007"]):
        return "2007-test"
    val = format_split((y, "val") for y, f in years.items() if "val" in image_sets(f))
    if not val:
        raise ValueError(f"no year of {', '.join(years.values())} has a val or (VOC2007) test set: choose the "
                         "evaluation split with --val-split")
    return val


def default_train_split(years, val):
    """The training split by default, given the evaluation split ``val``: ``trainval`` of every year, but ``train``
    where the year has no ``trainval`` or where its ``val`` (or ``trainval``) is evaluated, so that no evaluated
    image is trained on. ``val`` None: nothing is evaluated apart (a validation part is carved from training)."""
    evaluated = set(parse_split(val, years)) if val else set()
    train = []
    for year, folder in years.items():
        sets = image_sets(folder)
        if (year, "trainval") in evaluated:
            continue
        if "trainval" in sets and (year, "val") not in evaluated:
            train.append((year, "trainval"))
        elif "train" in sets and (year, "train") not in evaluated:
            train.append((year, "train"))
    if not train:
        raise ValueError(f"no year of {', '.join(years.values())} has a training set (trainval or train) apart from "
                         f"the evaluation split {val}: choose it with --train-split")
    return format_split(train)


def read_image_set(folder, name):
    """The image names listed in ``ImageSets/Main/<name>.txt`` (first word of each line), in file order."""
    path = os.path.join(folder, "ImageSets", "Main", f"{name}.txt")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def image_id(year, name):
    """A stable integer id for image ``name`` of ``year``, the same in every process and run: VOC's own names give
    ``year * 10^10 + digits`` (2007 ``000005`` -> 20070000000005; 2012 ``2008_000123`` -> 20122008000123), other
    names a 52-bit SHA-256 hash of ``year/name`` plus 2^52."""
    if year.isdigit() and len(year) == 4 and _VOC_NAME.match(name):
        return int(year) * 10 ** 10 + int(name.replace("_", ""))
    digest = hashlib.sha256(f"{year}/{name}".encode()).hexdigest()
    return HASHED_IDS + int(digest[:13], 16)


def _text(node, tag, path, what):
    found = node.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{path}: {what} has no <{tag}>")
    return found.text.strip()


def _number(node, tag, path, what, kind=float):
    text = _text(node, tag, path, what)
    try:
        value = kind(float(text)) if kind is int else float(text)
    except ValueError:
        raise ValueError(f"{path}: {what} has a <{tag}> that is not a number ({text!r})") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}: {what} has a non-finite <{tag}> ({text!r})")
    return value


def _flag(node, tag, path, what):
    """VOC's 0/1 flags; absent means 0 (some VOC2012 objects have no <difficult>)."""
    found = node.find(tag)
    if found is None or found.text is None or not found.text.strip():
        return False
    text = found.text.strip()
    if text not in ("0", "1"):
        raise ValueError(f"{path}: {what} has <{tag}>{text}</{tag}>; expected 0 or 1")
    return text == "1"


def parse_annotation(path, classes=VOC_CLASSES):
    """One annotation file, checked: a dict with ``filename`` (as the file says, or None), ``width``, ``height``,
    ``boxes`` float32 ``[N, 4]`` (``x1, y1, x2, y2``, continuous pixels, clipped), ``labels`` int64 ``[N]``
    (1-based index into ``classes``), ``difficult`` and ``truncated`` bool ``[N]``, ``clipped`` (boxes clipped).

    Raises FileNotFoundError for a missing file, ValueError for anything else wrong; both name the file (and the
    object: its position, 0-based, and class)."""
    path = os.fspath(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: no <size> (the image's width and height)")
    width, height = (_number(size, tag, path, "<size>", int) for tag in ("width", "height"))
    if width < 1 or height < 1:
        raise ValueError(f"{path}: the image size {width}x{height} is empty")
    filename = root.find("filename")
    boxes, labels, difficult, truncated, clipped = [], [], [], [], 0
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path, f"object {k}")
        what = f"object {k} ({name})"
        if name not in classes:
            listed = ", ".join(classes) if len(classes) <= 20 else f"{len(classes)} names"
            raise ValueError(f"{path}: {what} has an unknown class {name!r} (the classes: {listed})")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{path}: {what} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bndbox, tag, path, what) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}: {what} has an empty box (xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, "
                             f"ymax {ymax:g})")
        box = [xmin - 1, ymin - 1, xmax, ymax]  # 1-based inclusive -> continuous (see the module docstring)
        inside = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height), min(box[2], width), min(box[3], height)]
        if max(abs(a - b) for a, b in zip(box, inside)) > BORDER_TOLERANCE or not (
                inside[2] > inside[0] and inside[3] > inside[1]):
            raise ValueError(f"{path}: {what} lies outside the {width}x{height} image (xmin {xmin:g}, ymin {ymin:g}, "
                             f"xmax {xmax:g}, ymax {ymax:g}: VOC's pixels are 1..{width} and 1..{height}, and at "
                             f"most {BORDER_TOLERANCE:g} px beyond is clipped)")
        clipped += inside != box
        boxes.append(inside)
        labels.append(classes.index(name) + 1)
        difficult.append(_flag(obj, "difficult", path, what))
        truncated.append(_flag(obj, "truncated", path, what))
    return {"filename": None if filename is None or not filename.text else os.path.basename(filename.text.strip()),
            "width": width, "height": height, "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64), "difficult": np.array(difficult, dtype=bool),
            "truncated": np.array(truncated, dtype=bool), "clipped": clipped}


class VOCDetection(DetectionDataset):
    """A Pascal VOC split as (image, target) samples; the interface of :class:`cv.detection.data.coco.CocoDetection`.

    Args:
        root: a VOC layout (see the module docstring).
        split: ``[YEAR-]SET[,...]`` (:func:`parse_split`); default: :func:`default_val_split` when ``train``
            is false, else :func:`default_train_split`.
        transform: as for CocoDetection.
        train: training data (targets without difficult objects unless ``keep_difficult``; images without targets
            and bad files skipped, counted) or evaluation data (every image, errors for bad files). Default: true
            when every set of the split is a ``train`` or ``trainval``.
        seed, max_images: as for CocoDetection (the first N usable images in split order).
        keep_difficult: train on difficult objects too (they are never targets of evaluation).
        metric: the AP of :meth:`evaluator`: ``"2007"`` (11-point) or ``"2010"`` (area); see
            :mod:`cv.detection.evaluation.voc`.
        classes: the class names in label order (default VOC's 20): your own data in VOC's layout may name
            others.

    Images are taken in split order (each list in file order), each once. ``image_id`` is :func:`image_id`;
    ``names`` maps it to ``YEAR/NAME``. ``annotation_file`` describes the source (for messages).
    """

    def __init__(self, root, split=None, transform=None, train=None, seed=0, max_images=None, keep_difficult=False,
                 metric="2007", classes=VOC_CLASSES):
        from cv.detection.evaluation.voc import METRICS  # checked here, where the dataset is made, not at evaluation

        if metric not in METRICS:
            raise ValueError(f"VOC metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.root = os.fspath(root)
        self.years = find_years(self.root)
        if not self.years:
            raise ValueError(f"{self.root}: not a Pascal VOC layout (no folder with Annotations/, ImageSets/Main/ "
                             "and JPEGImages/ here, in its sub-folders or in its VOCdevkit/)")
        if split is None:
            split = default_val_split(self.years)
            if train or train is None:
                split = default_train_split(self.years, split)
        self.pairs = parse_split(split, self.years)
        self.split = format_split(self.pairs)
        train = all(name in ("train", "trainval") for _, name in self.pairs) if train is None else train
        source = f"{self.root} ({self.split})"
        folders = {self.years[y] for y, _ in self.pairs}
        image_dir = os.path.join(*folders, "JPEGImages") if len(folders) == 1 else self.root
        self.metric = metric
        self.keep_difficult = keep_difficult
        self.stats = {"difficult_ignored": 0, "boxes_clipped": 0, "repeated_images_ignored": 0,
                      "images_without_boxes": 0, "images_skipped_for_training": 0,
                      "bad_annotation_files_skipped": 0}
        reasons = []
        records, self.names, self._ground_truth, seen = [], {}, {}, set()
        for year, set_name in self.pairs:
            folder = self.years[year]
            for name in read_image_set(folder, set_name):
                if (year, name) in seen:
                    self.stats["repeated_images_ignored"] += 1
                    continue
                seen.add((year, name))
                try:
                    ann = parse_annotation(os.path.join(folder, "Annotations", f"{name}.xml"), classes)
                except (OSError, ValueError) as e:
                    if not train:
                        raise
                    self.stats["bad_annotation_files_skipped"] += 1
                    if len(reasons) < REASONS_SHOWN:
                        reasons.append(str(e))
                    continue
                self.stats["boxes_clipped"] += ann["clipped"]
                keep = np.ones(len(ann["labels"]), dtype=bool) if keep_difficult else ~ann["difficult"]
                if train:  # evaluation keeps difficult objects in its ground truth, flagged
                    self.stats["difficult_ignored"] += int((~keep).sum())
                if not (keep.any() if train else len(keep)):
                    self.stats["images_without_boxes"] += 1
                    if train:
                        self.stats["images_skipped_for_training"] += 1
                        continue
                ident = image_id(year, name)
                if ident in self.names:  # two distinct hashed names colliding: astronomically unlikely
                    raise ValueError(f"{year}/{name} and {self.names[ident]} have the same image id {ident}")
                self.names[ident] = f"{year}/{name}"
                records.append(ImageRecord(ident, self._image_path(folder, name, ann["filename"]), ann["height"],
                                           ann["width"], ann["boxes"][keep], ann["labels"][keep]))
                self._ground_truth[ident] = {k: ann[k] for k in ("boxes", "labels", "difficult")}
                if max_images is not None and len(records) == max_images:
                    break
            if max_images is not None and len(records) == max_images:
                break
        counts = {k: v for k, v in self.stats.items() if v}
        if counts:
            warnings.warn(f"{source}: " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())
                          + "".join(f"; {r}" for r in reasons))
        super().__init__(records, ["__background__", *classes], {label: label for label in range(1, len(classes) + 1)},
                         source, image_dir, transform=transform, train=train, seed=seed)

    @staticmethod
    def _image_path(folder, name, filename):
        """``JPEGImages/<name>.jpg``, or the file the annotation names when only that exists (PNG data...)."""
        path = os.path.join(folder, "JPEGImages", f"{name}.jpg")
        if filename and not os.path.exists(path) and os.path.exists(os.path.join(folder, "JPEGImages", filename)):
            return os.path.join(folder, "JPEGImages", filename)
        return path

    def ground_truth(self):
        """``{image_id: {"boxes", "labels", "difficult"}}`` of this split's images: every object, difficult ones
        flagged (evaluation ignores them)."""
        return dict(self._ground_truth)

    def evaluator(self):
        """A :class:`cv.detection.evaluation.voc.VocEvaluator` of this split (metric ``self.metric``; primary
        ``mAP``)."""
        from cv.detection.evaluation.voc import VocEvaluator

        return VocEvaluator(self.ground_truth(), self.label_names, metric=self.metric, image_names=self.names)
