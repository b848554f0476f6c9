"""What ``--data-path`` holds, and its splits: the COCO 2017 layout, a Pascal VOC layout, a YOLO dataset, or a
dataset YAML that names COCO-format annotation files anywhere.

    layout = detect_layout("/data/VOCdevkit")
    print(layout.description)        # Pascal VOC layout: VOC2007, VOC2012 under /data/VOCdevkit
    train, val = default_splits(layout)                      # "2007-trainval,2012-trainval", "2007-test"
    val_set = open_split(layout, val, train=False)           # a VOCDetection (CocoDetection, YoloDetection)
    evaluator = val_set.evaluator()                          # VocEvaluator (CocoEvaluator); .primary_metric

**What is recognised** (:func:`detect_layout`), in this order:

- a YAML file (``.yaml``/``.yml``), the *dataset YAML* below;
- a folder in the COCO 2017 layout: ``annotations/instances_<split>2017.json`` and ``<split>2017/``;
- a Pascal VOC layout (:mod:`cv.detection.data.voc`);
- a folder holding ``data.yaml`` or ``dataset.yaml`` (as Roboflow's exports do): that file;
- a YOLO folder: ``images/<split>/`` with ``labels/<split>/`` (or ``images/`` and ``labels/`` alone: one split,
  ``train``), the class names in ``classes.txt`` (one a line, as Label Studio and darknet exports write them);
  without it, as many classes as the label files' highest class id says, named ``class0``, ``class1``, ...

**The dataset YAML**: one format for YOLO data and for COCO-format annotation files, told apart by what a split
holds. YOLO data, as ultralytics reads it (:mod:`cv.detection.data.yolo`)::

    path: /data/shapes          # optional: the root of relative paths (default: this file's folder)
    train: images/train         # an image folder (labels in labels/train), a .txt list of images, or a list
    val: images/val
    test: images/test           # optional
    names: [circle, square]     # or a map {0: circle, 1: square}; absent: nc classes named class0, class1, ...

COCO-format annotation files anywhere: each split a map of its image folder and its annotation file::

    path: /data/mine            # optional, as above
    train: {images: imgs/train, annotations: ann/train.json}
    val: {images: imgs/val, annotations: ann/val.json}

(no ``names``: the categories are the annotation files'). Every split of a file is of one kind. A relative ``path``
is taken from the YAML's folder (or, if there is no such folder, from the current one); a split path that does
not exist but starts with ``../`` is also tried without it (Roboflow writes ``../train/images`` for a folder
beside its data.yaml; ultralytics does the same). Other keys (``download``, ...) are ignored.

**Splits**: for COCO 2017 a name ``S`` with ``S2017/`` and ``annotations/instances_S2017.json`` (``train``,
``val``); for VOC ``[YEAR-]SET[,...]`` (:func:`cv.detection.data.voc.parse_split`), e.g.
``2007-trainval,2012-trainval``; for a dataset YAML or a YOLO folder, its keys (``train``, ``val``, ``test``) or
folder names. Without a validation split, :func:`carve_val_split` holds out a seeded, stratified part of the
training split (``--val-fraction``).
"""
import os
from collections import Counter
from typing import NamedTuple

import numpy as np
import yaml

from cv.detection.data import voc, yolo
from cv.detection.data.base import check_class_names
from cv.detection.data.coco import CocoDetection

YAML_SUFFIXES = (".yaml", ".yml")
DATASET_YAMLS = ("data.yaml", "dataset.yaml")  # the names a folder's dataset YAML may have
# The stream of the validation split's draw: default_rng([seed, VAL_SPLIT_STREAM]), apart from augmentation's
# [seed, epoch, index] draws.
VAL_SPLIT_STREAM = 1
EVALUATED_AS_COCO = "evaluated by COCO's protocol on its labels converted to COCO (category id = class + 1)"


class Layout(NamedTuple):
    format: str         # "coco", "voc" or "yolo"
    root: str
    years: dict         # VOC: {year: folder}; otherwise {}
    description: str    # one line, for the user
    splits: dict = None  # a dataset YAML or YOLO folder: {split: spec}; None for the COCO 2017 and VOC layouts
    names: list = None   # YOLO: the class names by class id
    file: str = None     # the file that describes the dataset (a dataset YAML, classes.txt), for messages


def _coco_splits(root):
    folder = os.path.join(root, "annotations")
    if not os.path.isdir(folder):
        return []
    return sorted(f[len("instances_"):-len("2017.json")] for f in os.listdir(folder)
                  if f.startswith("instances_") and f.endswith("2017.json"))


def detect_layout(path):
    """The :class:`Layout` of ``path`` (see the module docstring for what is recognised, in which order).
    ValueError naming the path if it is none of them, or if its dataset YAML or class names are wrong."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"--data-path {path}: no such file or directory")
    if os.path.isfile(path):
        if not path.lower().endswith(YAML_SUFFIXES):
            raise ValueError(f"--data-path {path}: a file, but not a dataset YAML (.yaml or .yml)")
        return read_dataset_yaml(path)
    root = os.path.abspath(path)
    splits = _coco_splits(root)
    if splits:
        return Layout("coco", root, {}, f"COCO layout: {', '.join(s + '2017' for s in splits)} under {root}")
    years = voc.find_years(root)
    if years:
        folders = list(years.values())
        names = ", ".join(os.path.basename(f) for f in folders)
        where = f"at {root}" if folders == [root] else f"under {os.path.dirname(folders[0])}"
        return Layout("voc", root, years, f"Pascal VOC layout: {names} {where}")
    found = [os.path.join(root, f) for f in DATASET_YAMLS if os.path.isfile(os.path.join(root, f))]
    if len(found) > 1:
        raise ValueError(f"--data-path {path}: holds both {' and '.join(DATASET_YAMLS)}; pass the one to use")
    if found:
        return read_dataset_yaml(found[0])
    if os.path.isdir(os.path.join(root, "images")):
        return _yolo_folder(root)
    raise ValueError(f"--data-path {path}: neither a COCO layout (annotations/instances_<split>2017.json and "
                     "<split>2017/) nor a Pascal VOC one (a folder like VOC2007 with Annotations/, ImageSets/Main/ and "
                     "JPEGImages/, or a folder holding such folders) nor a YOLO dataset (a data.yaml, or images/ and "
                     "labels/)")


def read_dataset_yaml(path):
    """The :class:`Layout` a dataset YAML describes (the module docstring has its two forms). ValueError naming
    the file (and the key) for anything wrong in it; the splits' paths are checked when a split is opened."""
    path = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a map with 'train', 'val' and (YOLO) 'names'")
    root = _dataset_root(path, data.get("path"))
    splits = {k: data[k] for k in ("train", "val", "test") if data.get(k) is not None}
    if not splits:
        raise ValueError(f"{path}: no 'train', 'val' or 'test' key: nothing to train or evaluate on")
    kinds = {k: "coco" if isinstance(v, dict) else "yolo" for k, v in splits.items()}
    if len(set(kinds.values())) > 1:
        raise ValueError(f"{path}: splits of two kinds: "
                         + ", ".join(f"'{k}' {'COCO (images, annotations)' if kind == 'coco' else 'YOLO (images)'}"
                                     for k, kind in kinds.items()) + "; all must be one")
    listed = ", ".join(splits)
    if "coco" in kinds.values():
        if "names" in data or "nc" in data:
            raise ValueError(f"{path}: 'names' is for YOLO data; with COCO annotation files the categories are "
                             "the files'")
        specs = {k: _coco_split_spec(path, root, k, v) for k, v in splits.items()}
        return Layout("coco", root, {}, f"COCO-format dataset YAML: {path} (splits {listed}: image folders and "
                                        "annotation files)", specs, None, path)
    specs = {k: _yolo_split_spec(path, root, k, v) for k, v in splits.items()}
    names = yolo.parse_names(data.get("names"), data.get("nc"), path)
    return Layout("yolo", root, {}, f"YOLO dataset YAML: {path} ({len(names)} classes; splits {listed}), "
                                    + EVALUATED_AS_COCO, specs, names, path)


def _dataset_root(path, value):
    folder = os.path.dirname(path)
    if value is None:
        return folder
    if not isinstance(value, str):
        raise ValueError(f"{path}: 'path' must be a folder, got {value!r}")
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    here = os.path.join(folder, value)
    return os.path.abspath(here if os.path.isdir(here) or not os.path.isdir(value) else value)


def _resolve(root, value):
    """A split's path: relative ones from ``root``; Roboflow's ``../x`` also as ``x`` (see the module docstring)."""
    value = os.path.expanduser(value)
    full = os.path.normpath(os.path.join(root, value))
    if not os.path.exists(full) and value.startswith("../"):
        beside = os.path.normpath(os.path.join(root, value[3:]))
        if os.path.exists(beside):
            return beside
    return full


def _yolo_split_spec(path, root, key, value):
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{path}: '{key}' must be an image folder, a .txt list of images, or a list of them; got "
                         f"{value!r}")
    return [_resolve(root, v) for v in values]


def _coco_split_spec(path, root, key, value):
    if set(value) != {"images", "annotations"} or not all(isinstance(v, str) and v for v in value.values()):
        raise ValueError(f"{path}: '{key}' must be {{images: FOLDER, annotations: FILE.json}}; got {value!r}")
    return {k: _resolve(root, v) for k, v in value.items()}


def _yolo_folder(root):
    images = os.path.join(root, "images")
    folders = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))
    specs = {d: [os.path.join(images, d)] for d in folders} or {"train": [images]}
    names_file = os.path.join(root, "classes.txt")
    if os.path.isfile(names_file):
        with open(names_file, encoding="utf-8") as f:
            names = check_class_names([line.strip() for line in f if line.strip()], names_file)
        named = "from classes.txt"
    else:
        names_file = os.path.join(root, "labels")
        names = check_class_names([f"class{i}" for i in range(yolo.highest_class(names_file) + 1)], names_file)
        named = f"named class0..class{len(names) - 1}: no data.yaml or classes.txt names them"
    where = ", ".join(f"images/{d}" for d in folders) if folders else "images/ (one split: train)"
    return Layout("yolo", root, {}, f"YOLO layout: {where} under {root} ({len(names)} classes {named}), "
                                    + EVALUATED_AS_COCO, specs, names, names_file)


def default_splits(layout, train=None, val=None, carve=False):
    """``(train split, val split)``, each as given or, if None, by default: ``train``/``val`` for COCO and YOLO;
    for VOC :func:`cv.detection.data.voc.default_val_split` and :func:`~cv.detection.data.voc.default_train_split`
    (which avoids the evaluation split's images). ``carve``: the validation images are carved from the training
    split (:func:`carve_val_split`): val is None, and VOC trains on every year's trainval."""
    if carve:
        return train or (voc.default_train_split(layout.years, None) if layout.format == "voc" else "train"), None
    val = val or default_val_split(layout)
    if layout.format != "voc":
        return train or "train", val
    return train or voc.default_train_split(layout.years, val), val


def default_val_split(layout):
    """The evaluation split by default: ``val`` for COCO and YOLO, :func:`cv.detection.data.voc.default_val_split`
    for VOC."""
    return voc.default_val_split(layout.years) if layout.format == "voc" else "val"


def _split_spec(layout, split):
    """The spec of ``split`` in a dataset YAML or YOLO folder, its paths checked: ValueError naming the key."""
    where = layout.file if layout.file and layout.file.lower().endswith(YAML_SUFFIXES) else layout.root
    if split not in layout.splits:
        hint = "; --val-fraction F holds out a part of the training split instead" if split == "val" else ""
        raise ValueError(f"split {split!r}: {where} has no '{split}' (its splits: {', '.join(layout.splits)}){hint}")
    spec = layout.splits[split]
    paths = spec.items() if isinstance(spec, dict) else ((None, p) for p in spec)
    for key, path in paths:
        if not os.path.exists(path):
            raise ValueError(f"{where}: '{split}{'.' + key if key else ''}' names {path}, which does not exist")
    return spec


def open_split(layout, split, train, transform=None, seed=0, max_images=None, labels="auto", keep_difficult=False,
               voc_metric=None):
    """The dataset of ``split`` (a :class:`CocoDetection`, :class:`cv.detection.data.voc.VOCDetection` or
    :class:`cv.detection.data.yolo.YoloDetection`).

    ``labels`` is COCO's label mode (:func:`cv.detection.data.coco.label_mapping`); ``keep_difficult`` and
    ``voc_metric`` (None: ``"2007"``) are VOC's. Options of another format must keep their defaults: ValueError
    naming the flag."""
    if layout.format != "voc" and (keep_difficult or voc_metric is not None):
        raise ValueError(f"--keep-difficult and --voc-metric are for Pascal VOC data; {layout.file or layout.root} "
                         f"is {'in the COCO layout' if layout.format == 'coco' else 'YOLO data'}")
    if layout.format != "coco" and labels != "auto":
        theirs = "its 20 classes" if layout.format == "voc" else "its names, in order"
        raise ValueError(f"--labels {labels} is for COCO-format data; "
                         f"{'Pascal VOC' if layout.format == 'voc' else 'a YOLO dataset'}'s labels are {theirs}")
    if layout.format == "yolo":
        return yolo.YoloDetection(_split_spec(layout, split), layout.names, root=layout.root, split=split,
                                  transform=transform, train=train, seed=seed, max_images=max_images,
                                  source=layout.file)
    if layout.format == "coco" and layout.splits is not None:
        spec = _split_spec(layout, split)
        return CocoDetection(layout.root, split, transform=transform, train=train, labels=labels, seed=seed,
                             max_images=max_images, image_dir=spec["images"], annotation_file=spec["annotations"])
    if layout.format == "coco":
        if split not in _coco_splits(layout.root):
            raise ValueError(f"split {split!r}: {layout.root} has no annotations/instances_{split}2017.json (its "
                             f"splits: {', '.join(_coco_splits(layout.root))})")
        return CocoDetection(layout.root, split, transform=transform, train=train, labels=labels, seed=seed,
                             max_images=max_images)
    return voc.VOCDetection(layout.root, split, transform=transform, train=train, seed=seed, max_images=max_images,
                            keep_difficult=keep_difficult, metric=voc_metric or "2007")


def choose_val_images(records, fraction, seed, source="the training split"):
    """The ids (sorted) of the images to hold out for validation from ``records`` (:class:`ImageRecord` s):
    ``round(fraction * N)`` of them (at least 1, at most N - 1), drawn by ``default_rng([seed,
    VAL_SPLIT_STREAM])``, the same for the same records, fraction and seed.

    Stratified by class: first, for each class from the rarest up, one image holding it, so that every class
    appears in validation when it can; then images in the drawn order. An image is never held out if that would
    take the last training image of one of its classes away, so validation may come out smaller than asked.
    ValueError naming ``source`` if fewer than 2 images can be split."""
    if len(records) < 2:
        raise ValueError(f"{source}: --val-fraction needs at least 2 usable training images, it has {len(records)}")
    count = min(max(1, round(fraction * len(records))), len(records) - 1)
    order = np.random.default_rng([seed, VAL_SPLIT_STREAM]).permutation(len(records)).tolist()
    classes = [set(r.labels.tolist()) for r in records]
    in_training = Counter(c for image in classes for c in image)
    holding = {c: [i for i in order if c in classes[i]] for c in in_training}
    chosen, covered = [], set()

    def take(i):
        if len(chosen) < count and i not in chosen and all(in_training[c] > 1 for c in classes[i]):
            chosen.append(i)
            covered.update(classes[i])
            in_training.subtract(classes[i])
            return True
        return False

    for c in sorted(in_training, key=lambda c: (in_training[c], c)):
        if c not in covered:
            next((i for i in holding[c] if take(i)), None)
    for i in order:
        take(i)
    if not chosen:
        raise ValueError(f"{source}: no image can be held out for validation without taking a class's last "
                         "training image away")
    return sorted(records[i].image_id for i in chosen)


def carve_val_split(dataset, fraction, seed):
    """``(training part, validation part, validation image ids)`` of ``dataset`` (opened as training data): the
    images :func:`choose_val_images` picks become evaluation data (no transform, nothing skipped at reading), the
    others stay training data. The validation images are usable training images: those with objects."""
    ids = choose_val_images(dataset.images, fraction, seed, dataset.annotation_file)
    held_out = set(ids)
    rest = [r.image_id for r in dataset.images if r.image_id not in held_out]
    return dataset.subset(rest, transform=dataset.transform), dataset.subset(ids, train=False), ids
