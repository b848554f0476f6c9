"""What ``--data-path`` holds, and its splits: the COCO 2017 layout or a Pascal VOC layout.

    layout = detect_layout("/data/VOCdevkit")
    print(layout.description)        # Pascal VOC layout: VOC2007, VOC2012 under /data/VOCdevkit
    train, val = default_splits(layout)                      # "2007-trainval,2012-trainval", "2007-test"
    val_set = open_split(layout, val, train=False)           # a VOCDetection (a CocoDetection for COCO)
    evaluator = val_set.evaluator()                          # VocEvaluator (CocoEvaluator); .primary_metric

Splits: for COCO a name ``S`` with ``S2017/`` and ``annotations/instances_S2017.json`` (``train``, ``val``); for VOC
``[YEAR-]SET[,...]`` (:func:`cv.detection.data.voc.parse_split`), e.g. ``2007-trainval,2012-trainval``.
"""
import os
from typing import NamedTuple

from cv.detection.data import voc
from cv.detection.data.coco import CocoDetection


class Layout(NamedTuple):
    format: str        # "coco" or "voc"
    root: str
    years: dict        # VOC: {year: folder}; COCO: {}
    description: str   # one line, for the user


def _coco_splits(root):
    folder = os.path.join(root, "annotations")
    if not os.path.isdir(folder):
        return []
    return sorted(f[len("instances_"):-len("2017.json")] for f in os.listdir(folder)
                  if f.startswith("instances_") and f.endswith("2017.json"))


def detect_layout(path):
    """The :class:`Layout` at ``path``: COCO when it has ``annotations/instances_<split>2017.json``, VOC when it is
    (or holds, directly or in ``VOCdevkit/``) VOC year folders. ValueError naming the path if it is neither."""
    root = os.path.abspath(os.fspath(path))
    splits = _coco_splits(root)
    if splits:
        return Layout("coco", root, {}, f"COCO layout: {', '.join(s + '2017' for s in splits)} under {root}")
    years = voc.find_years(root)
    if years:
        folders = list(years.values())
        names = ", ".join(os.path.basename(f) for f in folders)
        where = f"at {root}" if folders == [root] else f"under {os.path.dirname(folders[0])}"
        return Layout("voc", root, years, f"Pascal VOC layout: {names} {where}")
    raise ValueError(f"--data-path {path}: neither a COCO layout (annotations/instances_<split>2017.json and "
                     "<split>2017/) nor a Pascal VOC one (a folder like VOC2007 with Annotations/, ImageSets/Main/ and "
                     "JPEGImages/, or a folder holding such folders)")


def default_splits(layout, train=None, val=None):
    """``(train split, val split)``, each as given or, if None, by default: ``train``/``val`` for COCO; for VOC
    :func:`cv.detection.data.voc.default_val_split` and :func:`~cv.detection.data.voc.default_train_split` (which avoids the
    evaluation split's images)."""
    val = val or default_val_split(layout)
    if layout.format == "coco":
        return train or "train", val
    return train or voc.default_train_split(layout.years, val), val


def default_val_split(layout):
    """The evaluation split by default: ``val`` for COCO, :func:`cv.detection.data.voc.default_val_split` for VOC."""
    return "val" if layout.format == "coco" else voc.default_val_split(layout.years)


def open_split(layout, split, train, transform=None, seed=0, max_images=None, labels="auto", keep_difficult=False,
               voc_metric=None):
    """The dataset of ``split`` (a :class:`CocoDetection` or a :class:`cv.detection.data.voc.VOCDetection`).

    ``labels`` is COCO's label mode (:func:`cv.detection.data.coco.label_mapping`); ``keep_difficult`` and
    ``voc_metric`` (None: ``"2007"``) are VOC's. Options of the other format must keep their defaults: ValueError
    naming the flag."""
    if layout.format == "coco":
        if keep_difficult or voc_metric is not None:
            raise ValueError("--keep-difficult and --voc-metric are for Pascal VOC data; "
                             f"{layout.root} is in the COCO layout")
        if split not in _coco_splits(layout.root):
            raise ValueError(f"split {split!r}: {layout.root} has no annotations/instances_{split}2017.json (its "
                             f"splits: {', '.join(_coco_splits(layout.root))})")
        return CocoDetection(layout.root, split, transform=transform, train=train, labels=labels, seed=seed,
                             max_images=max_images)
    if labels != "auto":
        raise ValueError(f"--labels {labels} is for COCO-format data; Pascal VOC's labels are its 20 classes")
    return voc.VOCDetection(layout.root, split, transform=transform, train=train, seed=seed, max_images=max_images,
                            keep_difficult=keep_difficult, metric=voc_metric or "2007")
