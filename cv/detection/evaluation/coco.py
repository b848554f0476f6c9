"""COCO bbox evaluation of detector outputs with the official protocol (COCOeval).

The model returns, per image, ``boxes`` (``[x1, y1, x2, y2]`` in pixels of the original image), ``scores`` and
``labels`` (contiguous model labels). COCO's tools want something else: results in the official format
(``image_id``, ``category_id`` *of the annotation file*, ``bbox`` as ``[x, y, w, h]``, ``score``), and a single
``COCOeval`` over every evaluated image, because the 12 COCO numbers are not averages of per-batch or per-rank
numbers (precision is accumulated over all detections of a category, ranked by score across images). This module
does the conversion (:func:`detections_to_coco_results`) and the bookkeeping (:class:`CocoEvaluator`): collecting
batches, merging the ranks of a distributed run onto rank 0, de-duplicating images a distributed sampler repeated
to pad its last batch, writing the results file, and running the evaluation once. After COCO's table it prints a
per-class one (:func:`per_category_ap`) and, beside the results file, draws the precision-recall curves and the
confusion matrix (:mod:`cv.detection.evaluation.report`).

The evaluation itself is ``faster-coco-eval``'s ``COCOeval_faster``, an independent C++ implementation of
pycocotools' ``COCOeval``, an order of magnitude faster on COCO-val-sized results (README, "Speed"; ``benchmark.py
--sections eval``). The tests check that both give the same 12 numbers on our data.

``oneflow`` is imported only where it is needed (rank queries and the distributed gather), so the conversion and
the single-process evaluation also work on plain numpy arrays.
"""
from collections import Counter

import numpy as np

from cv.detection.evaluation.confusion import IOU_THRESHOLD, SCORE_THRESHOLD, confusion_matrix
from cv.detection.evaluation.report import write_report
from cv.detection.utils import fileio
from cv.detection.utils.arrays import as_int, as_numpy

# Names of ``COCOeval.stats``, in pycocotools' order (IoU=.50:.95 unless named; s/m/l are the area ranges;
# AR1/AR10/AR100 are the recall with at most 1/10/100 detections per image).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# The summary table's rows, in STAT_NAMES order, as pycocotools prints them: (kind, IoU, area, max detections).
_TABLE = [("Precision", "0.50:0.95", "all", 100), ("Precision", "0.50", "all", 100),
          ("Precision", "0.75", "all", 100), ("Precision", "0.50:0.95", "small", 100),
          ("Precision", "0.50:0.95", "medium", 100), ("Precision", "0.50:0.95", "large", 100),
          ("Recall", "0.50:0.95", "all", 1), ("Recall", "0.50:0.95", "all", 10), ("Recall", "0.50:0.95", "all", 100),
          ("Recall", "0.50:0.95", "small", 100), ("Recall", "0.50:0.95", "medium", 100),
          ("Recall", "0.50:0.95", "large", 100)]


def format_table(stats):
    """The 12 COCO numbers as the table pycocotools' ``COCOeval.summarize`` prints (users know it by heart)."""
    return "\n".join(f" {'Average ' + kind:<18} ({'AP' if kind == 'Precision' else 'AR'}) @[ IoU={iou:<9} | "
                     f"area={area:>6s} | maxDets={dets:>3d} ] = {stats[name]:0.3f}"
                     for name, (kind, iou, area, dets) in zip(STAT_NAMES, _TABLE))


def _quiet(*args, **kwargs):
    pass


def ground_truth(dataset):
    """The annotation file's content (a dict) as the evaluator's ground truth (``faster_coco_eval.COCO``)."""
    from faster_coco_eval import COCO

    return COCO(dataset, print_function=_quiet)


# Pixel coordinates to 2 decimals: far below the annotation precision, and it keeps the results file small.
BBOX_DECIMALS = 2


def _convert_image(image_id, detection, label_to_category_id, dropped=None):
    """One image's detections as a float64 array ``[N, 6]`` of ``x, y, w, h, score, category_id``.

    The boxes are rounded to :data:`BBOX_DECIMALS` here, once, so that what is evaluated is exactly what the
    results file holds (the file alone reproduces the numbers). Detections whose label has no category in
    ``label_to_category_id`` are left out and counted per label in ``dropped`` (a dict): a 91-way COCO model scores
    every COCO id, also those a dataset (a COCO subset, or COCO's ten unused ids) does not have, and pycocotools
    ignores detections of categories the ground truth lacks. Raises ValueError for malformed arrays.
    """
    try:
        boxes, scores, labels = (as_numpy(detection[k]) for k in ("boxes", "scores", "labels"))
    except KeyError as e:
        raise ValueError(f"image {image_id}: detections need 'boxes', 'scores' and 'labels' (missing {e})") from None
    n = len(scores)
    boxes = boxes.reshape(-1, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != n or labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"image {image_id}: boxes {boxes.shape}, scores {scores.shape} and labels {labels.shape} "
                         "must be [N, 4], [N] and [N]")
    # Map the distinct labels only (a few per image), then broadcast back: cheaper than a per-detection lookup.
    unique, inverse = np.unique(labels.astype(np.int64), return_inverse=True)
    categories = np.asarray([label_to_category_id.get(label, np.nan) for label in unique.tolist()], dtype=np.float64)
    category = categories[inverse]
    known = ~np.isnan(category)
    if dropped is not None and not known.all():
        for label, count in zip(*np.unique(labels[~known], return_counts=True)):
            dropped[int(label)] = dropped.get(int(label), 0) + int(count)
    boxes = boxes[known].astype(np.float64)
    out = np.empty((len(boxes), 6), dtype=np.float64)
    out[:, 0:2] = boxes[:, 0:2]
    out[:, 2:4] = boxes[:, 2:4] - boxes[:, 0:2]  # [x1, y1, x2, y2] -> [x, y, w, h]
    out[:, 0:4] = np.round(out[:, 0:4], BBOX_DECIMALS)
    out[:, 4] = scores[known]
    out[:, 5] = category[known]
    return out


def _results_from_arrays(per_image):
    """Official COCO results (a list of dicts) from ``{image_id: [N, 6] array}`` (see :func:`_convert_image`)."""
    results = []
    for image_id, rows in per_image.items():
        for x, y, w, h, score, category in rows.tolist():
            results.append({
                "image_id": image_id,
                "category_id": int(category),
                "bbox": [x, y, w, h],
                # The scores come from a float32 model: their shortest float32 spelling ("0.9", not
                # "0.8999999761581421") keeps the file small and loses nothing of the ranking.
                "score": float(str(np.float32(score))),
            })
    return results


def detections_to_coco_results(image_ids, detections, label_to_category_id):
    """Convert model outputs to the official COCO results format.

    Args:
        image_ids: one image id per entry of ``detections`` (ints, or one-element tensors/arrays).
        detections: per image a dict with ``boxes`` (float ``[N, 4]``, ``[x1, y1, x2, y2]`` in pixels of the
            original image), ``scores`` (float ``[N]``) and ``labels`` (int ``[N]``, model labels); oneflow tensors
            (anything with ``.numpy()``) or numpy arrays.
        label_to_category_id: model label -> category id of the annotation file.

    Returns:
        A list with one dict per detection: ``image_id`` (int), ``category_id`` (int, the file's id), ``bbox``
        (``[x, y, w, h]`` floats rounded to 2 decimals) and ``score`` (float); images without detections
        contribute nothing.

    Detections of labels that are not in the mapping are left out (see :func:`_convert_image`).

    Raises:
        ValueError: the two sequences differ in length, or arrays are malformed (naming the image id).
    """
    image_ids, detections = list(image_ids), list(detections)
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
    per_image = {}
    for image_id, detection in zip(image_ids, detections):
        image_id = as_int(image_id)
        rows = _convert_image(image_id, detection, label_to_category_id)
        # Repeated ids are concatenated here (this function only converts); the evaluator de-duplicates.
        per_image[image_id] = np.concatenate([per_image[image_id], rows]) if image_id in per_image else rows
    return _results_from_arrays(per_image)


class CocoEvaluator:
    """Accumulate detections batch by batch (on every rank), merge them on rank 0, evaluate once with COCOeval.

    Usage, on every rank::

        evaluator = CocoEvaluator(dataset.dataset, dataset.label_to_category_id)
        for images, targets in loader:
            evaluator.update([t["image_id"] for t in targets], model(images))
        evaluator.gather()                          # collective: every rank must call it
        stats = evaluator.summarize("out/results.json")   # dict on rank 0, None elsewhere

    Each image counts once: the first copy of an image's detections is kept and later copies are ignored, because
    a distributed sampler pads the last batch by repeating images (possibly on another rank) and a repeated image
    would count its ground truth twice. Detections of labels without a category in the annotation file are left
    out and counted in ``dropped`` (label -> count), and :meth:`summarize` says so once.
    """

    # The summary's headline number: what the training program picks its best checkpoint by.
    primary_metric = "AP"

    def __init__(self, gt_dataset, label_to_category_id):
        """``gt_dataset``: the annotation file's content (a dict with ``images``, ``annotations``,
        ``categories``); ``label_to_category_id``: model label -> category id of that file (every category id must
        exist in it)."""
        coco_gt = ground_truth(gt_dataset)
        unknown = sorted(set(label_to_category_id.values()) - set(coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"category ids {unknown} of label_to_category_id are not in the ground truth")
        self.coco_gt = coco_gt
        self.label_to_category_id = dict(label_to_category_id)
        # image id -> float64 [N, 6] array (x, y, w, h, score, category_id); insertion order = evaluation order.
        # An entry, possibly with N = 0, exists for every evaluated image: an image without detections still counts
        # (its ground truth is missed), so the evaluated ids are recorded apart from whether anything was found.
        self._per_image = {}
        self.duplicates = 0  # repeated images ignored (padding of distributed samplers)
        self.dropped = {}  # label -> detections left out because the label has no category
        self._gathered = False

    @property
    def image_ids(self):
        """The ids of the images evaluated so far (each once), in the order they were first seen."""
        return list(self._per_image)

    def update(self, image_ids, detections):
        """Record one batch: ``image_ids`` and ``detections`` as for :func:`detections_to_coco_results`.

        Images with empty detections are recorded as evaluated. An image already recorded is ignored. Raises
        ValueError for an image id not in the ground truth (pycocotools would only fail, opaquely, at the end) or
        for malformed detections.
        """
        image_ids, detections = list(image_ids), list(detections)
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
        for image_id, detection in zip(image_ids, detections):
            image_id = as_int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in the ground truth")
            if image_id in self._per_image:
                self.duplicates += 1
                continue
            self._per_image[image_id] = _convert_image(image_id, detection, self.label_to_category_id, self.dropped)
        self._gathered = False

    def gather(self):
        """Merge every rank's results onto rank 0 (a no-op in a single process).

        A collective: every rank must call it, after its last :meth:`update`. Afterwards rank 0 holds the
        de-duplicated union (rank order, then the order of each rank's updates); the other ranks keep their own
        results, which :meth:`summarize` ignores there. Each rank sends three arrays of numbers (its image ids, its
        detections with their image id, its dropped counts); for a COCO-sized validation set that is tens of MB
        per rank, once.
        """
        from cv.detection.engine import distributed as dist

        rank, world_size = dist.rank(), dist.world_size()
        if world_size > 1:
            self.duplicates += dist.gather_per_image(self._per_image)
            dropped = dist.all_gather_arrays(np.asarray(list(self.dropped.items()), dtype=np.float64).ravel())
            if rank == 0:
                for counts in dropped[1:]:
                    for label, count in counts.reshape(-1, 2).astype(np.int64).tolist():
                        self.dropped[label] = self.dropped.get(label, 0) + count
        self._gathered = True

    def summarize(self, output_json=None):
        """Evaluate all evaluated images at once and print the standard 12-number COCO summary (rank 0 only).

        Then the per-class table (:func:`format_class_table`), read from the same accumulated evaluation.

        Args:
            output_json: where to write the results (official COCO results format, a JSON list); written atomically
                (a temporary file in the same directory, then a rename), parent directories created. Beside it the
                precision-recall curves, the confusion matrix and their numbers
                (:func:`cv.detection.evaluation.report.write_report`). None: no file.

        Returns:
            On rank 0 a dict of the 12 stats (:data:`STAT_NAMES`: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
            ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``) and ``per_class``, per category of the
            annotation file (in id order) ``{"category_id", "name", "gt" (boxes, crowd regions excluded),
            "detections", "AP", "AP50", "AP75"}`` (:func:`per_category_ap`); on other ranks None (nothing is
            written there). As in pycocotools, a stat is -1 where the evaluated images have no ground truth of that
            kind (e.g. no small objects, or none of a category).

        Raises:
            RuntimeError: in a distributed run when :meth:`gather` was not called after the last update (the result
                would silently cover rank 0's share only).
        """
        from cv.detection.engine import distributed as dist

        rank, world_size = dist.rank(), dist.world_size()
        if world_size > 1 and not self._gathered:
            raise RuntimeError("CocoEvaluator.summarize: call gather() on every rank after the last update()")
        if rank != 0:
            return None
        results = _results_from_arrays(self._per_image)
        if output_json is not None:
            fileio.write_json(output_json, results)
        image_ids = sorted(self._per_image)
        note = f" ({self.duplicates} repeated image(s) ignored)" if self.duplicates else ""
        print(f"COCO bbox evaluation: {len(image_ids)} images, {len(results)} detections{note}")
        if self.dropped:
            labels = sorted(self.dropped, key=self.dropped.get, reverse=True)
            print(f"left out {sum(self.dropped.values())} detections of {len(labels)} model labels that have no "
                  f"category in the annotation file (most: label {labels[0]}, {self.dropped[labels[0]]} times); "
                  "as pycocotools does, they count neither for nor against the AP")
        from faster_coco_eval import COCOeval_faster

        coco_eval = COCOeval_faster(self.coco_gt, self.coco_gt.loadRes(results), "bbox", print_function=_quiet)
        # Exactly the evaluated images: ground truth of images never evaluated must not count as missed, and an
        # evaluated image without detections must.
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        stats = {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
        print(format_table(stats))
        stats["per_class"] = self._per_class(coco_eval, image_ids)
        print(format_class_table(stats["per_class"]))
        if output_json is not None:
            write_report(output_json, self._report(coco_eval, stats["per_class"], image_ids))
        return stats

    def _per_class(self, coco_eval, image_ids):
        """The per-class table (see :meth:`summarize`) of an accumulated ``coco_eval`` over ``image_ids``."""
        gt = Counter(a["category_id"] for i in image_ids for a in self.coco_gt.imgToAnns[i] if not a.get("iscrowd"))
        found = Counter(int(c) for rows in self._per_image.values() for c in rows[:, 5].tolist())
        table = per_category_ap(coco_eval)
        return [{"category_id": int(c), "name": self.coco_gt.cats[c].get("name", str(c)), "gt": gt[c],
                 "detections": found[c], **aps} for c, aps in zip(coco_eval.params.catIds, table)]

    def _report(self, coco_eval, per_class, image_ids):
        """The numbers of :func:`cv.detection.evaluation.report.write_report`: PR curves at IoU 0.5 from the
        accumulated precision, and the confusion matrix of the evaluated images (crowd regions ignored)."""
        params = coco_eval.params
        index = {c: k for k, c in enumerate(params.catIds)}
        at = (_iou_index(params, 0.5), slice(None), slice(None), params.areaRngLbl.index("all"),
              params.maxDets.index(100))
        # [R, K] -> per category its curve over the recall points; all -1 where it has no ground truth.
        curves = [p.tolist() if (p > -1).all() else None for p in coco_eval.eval["precision"][at].T]

        def image(i):
            anns, rows = self.coco_gt.imgToAnns[i], self._per_image[i]
            gt = (_corners([a["bbox"] for a in anns]), [index[a["category_id"]] for a in anns],
                  [bool(a.get("iscrowd")) for a in anns])
            return gt, (_corners(rows[:, :4]), rows[:, 4], [index[int(c)] for c in rows[:, 5].tolist()])

        counts = confusion_matrix((image(i) for i in image_ids), len(index))
        return {"title": "COCO bbox", "names": [r["name"] for r in per_class],
                "pr_curves": {"iou_threshold": 0.5, "recall": [float(r) for r in params.recThrs], "precision": curves},
                "confusion": {"score_threshold": SCORE_THRESHOLD, "iou_threshold": IOU_THRESHOLD,
                              "counts": counts.tolist()},
                "per_class": per_class}


def _corners(xywh):
    """``[N, 4]`` boxes ``x, y, w, h`` as ``x1, y1, x2, y2``."""
    boxes = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _iou_index(params, iou):
    """The index of IoU threshold ``iou`` in ``params.iouThrs``: the nearest, as computed thresholds need not equal a
    literal exactly."""
    return int(np.argmin(np.abs(np.asarray(params.iouThrs) - iou)))


def per_category_ap(coco_eval):
    """Per category of ``coco_eval.params.catIds`` (an accumulated COCOeval, pycocotools' or faster-coco-eval's)
    ``{"AP", "AP50", "AP75"}``, read from its precision array ``eval["precision"]`` ``[T, R, K, A, M]``: the mean
    over IoU thresholds (AP) or at one, and over the recall points, of the entries > -1, at area "all" and
    maxDets 100. That is what pycocotools' ``summarize`` computes with ``params.catIds = [c]`` (each category is
    accumulated on its own); -1 for a category without ground truth in the evaluated images."""
    params, precision = coco_eval.params, coco_eval.eval["precision"]
    area, dets = params.areaRngLbl.index("all"), params.maxDets.index(100)
    rows = {"AP": slice(None), "AP50": [_iou_index(params, 0.5)], "AP75": [_iou_index(params, 0.75)]}
    table = []
    for k in range(precision.shape[2]):
        entries = {name: precision[t, :, k, area, dets] for name, t in rows.items()}
        table.append({name: float(e[e > -1].mean()) if (e > -1).any() else -1.0 for name, e in entries.items()})
    return table


def format_class_table(per_class):
    """The per-class table: ground-truth boxes (crowd regions excluded), detections, AP, AP50, AP75 per class."""
    width = max([5] + [len(r["name"]) for r in per_class])
    lines = ["per class (area=all, maxDets=100; AP at IoU=0.50:0.95; gt: ground-truth boxes, crowd excluded):",
             f"{'class':<{width}} {'gt':>7} {'detections':>10} {'AP':>6} {'AP50':>6} {'AP75':>6}"]
    for r in per_class:
        lines.append(f"{r['name']:<{width}} {r['gt']:>7} {r['detections']:>10} {r['AP']:>6.3f} {r['AP50']:>6.3f} "
                     f"{r['AP75']:>6.3f}")
    return "\n".join(lines)
