"""What an evaluation writes beside its detections file, for a user to see *what* is wrong, not only how much.

For ``<stem>.json`` (the detections an evaluator's ``summarize(output_json)`` writes: ``detections_epoch0003.json``
after an epoch of training, ``detections_test.json`` for ``train.py --test-only``, ``detections_val.json`` for
``infer.sh --eval``), beside it in the output directory:

- ``<stem>_pr.png``: the precision-recall curve at IoU 0.5 of each class and their mean (COCO's 101-point
  interpolated precision: at each recall r, the highest precision at a recall >= r);
- ``<stem>_confusion.png``: the confusion matrix at IoU 0.5 of the detections scored at least
  :data:`cv.detection.evaluation.confusion.SCORE_THRESHOLD` (see that module for exactly how it counts), rows
  normalised;
- ``<stem>_report.json``: the numbers of both pictures (the confusion matrix as counts) and the per-class table.

The JSON is the report itself: the pictures are drawn from exactly what it holds.
"""
import os

import numpy as np

from cv.detection.utils import fileio

# COCO's recall points of its interpolated precision: 0, 0.01, ..., 1.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def report_paths(output_json):
    """``{"pr", "confusion", "json"}``: the files written for the detections file ``output_json``."""
    stem = os.path.splitext(os.fspath(output_json))[0]
    return {"pr": stem + "_pr.png", "confusion": stem + "_confusion.png", "json": stem + "_report.json"}


def interpolated_precision(recall, precision):
    """COCO's interpolation of a precision/recall curve (arrays in rank order) at :data:`RECALL_POINTS`: the highest
    precision at a recall >= r, 0 where the recall never reaches r."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if len(recall) == 0:
        return np.zeros(len(RECALL_POINTS))
    envelope = np.append(np.maximum.accumulate(precision[::-1])[::-1], 0.0)
    # The recall is non-decreasing along the ranking; past its end (index len) the precision is 0.
    return envelope[np.searchsorted(recall, RECALL_POINTS, side="left")]


def write_report(output_json, report):
    """Write the pictures and the JSON of the module docstring for ``output_json``; returns their paths.

    ``report``: ``{"title", "names" (K class names), "pr_curves": {"iou_threshold", "recall", "precision" (per
    class a list over recall, None for a class without ground truth)}, "confusion": {"score_threshold",
    "iou_threshold", "counts" ([K + 1] x [K + 1], background last)}, "per_class"}``, JSON-able (lists, not arrays).
    """
    from cv.detection.utils.plot import plot_confusion, plot_pr_curves  # matplotlib only when drawing

    paths = report_paths(output_json)
    fileio.write_json(paths["json"], report)
    curves, confusion = report["pr_curves"], report["confusion"]
    plot_pr_curves(curves["recall"], curves["precision"], report["names"], paths["pr"],
                   f"{report['title']}: precision-recall at IoU {curves['iou_threshold']:g} (legend: 101-point AP)")
    plot_confusion(confusion["counts"], report["names"], paths["confusion"],
                   f"{report['title']}: confusion at IoU {confusion['iou_threshold']:g}, "
                   f"score >= {confusion['score_threshold']:g} (rows normalised)")
    print(f"per-class pictures: {paths['pr']}, {paths['confusion']} (numbers in {paths['json']})")
    return paths
