"""Pascal VOC detection evaluation: per-class AP and their mean (mAP) at IoU 0.5, as the VOC devkit computes them.

For each class, its detections in all evaluated images are ranked by score, each is marked a true or false
positive, and the AP summarises the resulting precision/recall curve, in one of two ways (``metric``):

- ``"2007"``, VOC2007's 11-point interpolated AP (what the SSD paper reports on VOC2007 test, 77.2 for SSD300): the
  mean over the recall thresholds t = 0, 0.1, ..., 1 of the highest precision at a recall >= t (0 if none).
  The thresholds are exactly k/10, so a recall of exactly 3/10 reaches t = 0.3 (the devkit's floating ``0:0.1:1``
  is one ulp above k/10 at some k, which can drop such a point; with real data this is invisible).
- ``"2010"``, the area under the interpolated curve (VOC2010 onwards, VOCap): precision made monotone (each point
  the highest precision at this or any higher recall) and integrated over recall, step by step.

Both are always computed; ``metric`` picks the one called ``mAP`` (the primary number) and the per-class column
recorded.

Marking, as the devkit's ``VOCevaldet.m``:

- a detection is compared with the ground truth of its class in its image, difficult objects included, and
  belongs to the box it overlaps most (IoU of continuous boxes: area ``(x2 - x1) * (y2 - y1)``; for ground truth
  from :mod:`cv.detection.data.voc` this is the devkit's ``+1`` arithmetic on its integer coordinates); the first such
  box on a tie;
- IoU >= 0.5 with a difficult box: ignored, neither true nor false positive;
- IoU >= 0.5 with a box no higher-ranked detection took: a true positive, and the box is taken;
- IoU >= 0.5 with a box already taken: a false positive (a duplicate), even if another box would be free;
- otherwise a false positive.

Recall counts the non-difficult boxes. A class without any in the evaluated images has no AP (``None``, "n/a")
and is left out of the mean; a class with ground truth and no detections has AP 0.

**Ties in score** are ranked by image id (ascending), then in the order the model returned the detections for
that image: a stable order (``np.lexsort``) that depends neither on how images were spread over processes and
batches nor on the sort algorithm. (The devkit's MATLAB sort is stable in the order of its results file;
py-faster-rcnn's ``np.argsort`` is not stable.)

:class:`VocEvaluator` has :class:`cv.detection.evaluation.coco.CocoEvaluator`'s interface (update, gather across
processes, summarize on rank 0). Like coco_eval, ``oneflow`` is imported only for the distributed gather.
"""
import numpy as np

from cv.detection.evaluation.confusion import SCORE_THRESHOLD, confusion_matrix
from cv.detection.evaluation.report import RECALL_POINTS, interpolated_precision, write_report
from cv.detection.models.box_ops_numpy import box_iou
from cv.detection.utils import fileio
from cv.detection.evaluation.coco import BBOX_DECIMALS
from cv.detection.utils.arrays import as_int, as_numpy

# --voc-metric: the name of each AP definition.
METRICS = {"2007": "VOC2007 11-point", "2010": "VOC2010+ all-points (area)"}
IOU_THRESHOLD = 0.5
_ELEVEN_POINTS = np.arange(11) / 10  # exactly k/10 (see the module docstring)


def ap_11_point(recall, precision):
    """VOC2007's 11-point interpolated AP of a precision/recall curve (arrays in rank order)."""
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in _ELEVEN_POINTS]))


def ap_area(recall, precision):
    """VOC2010+'s AP: the area under the monotone envelope of the precision/recall curve (VOCap)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def mark_image(detections, gt_boxes, gt_difficult, iou_threshold=IOU_THRESHOLD):
    """One image and class: per detection (given in rank order, ``[D, 4]``) 1 (true positive), 0 (false positive)
    or -1 (ignored: it found a difficult object), by the rules of the module docstring."""
    marks = np.zeros(len(detections), dtype=np.int8)
    if len(gt_boxes) == 0 or len(detections) == 0:
        return marks
    iou = box_iou(detections, gt_boxes)
    best, best_iou = iou.argmax(axis=1), iou.max(axis=1)  # argmax: the first box on a tie, as the devkit
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for d, (j, overlap) in enumerate(zip(best.tolist(), best_iou.tolist())):
        if overlap < iou_threshold:
            continue
        if gt_difficult[j]:
            marks[d] = -1
        elif not taken[j]:
            marks[d], taken[j] = 1, True
    return marks


def evaluate_class(per_image, iou_threshold=IOU_THRESHOLD):
    """AP of one class. ``per_image``: ``[(image_id, det_boxes [D, 4], det_scores [D], gt_boxes [G, 4],
    gt_difficult [G])]`` over the evaluated images, detections in the model's order.

    Returns ``{"objects", "difficult", "detections", "tp", "fp", "ap_11point", "ap_area", "pr_curve"}`` (APs and the
    precision-recall curve, interpolated at COCO's 101 recall points for the pictures, None when the class has no
    non-difficult object)."""
    scores, images, order, marks = [], [], [], []
    objects = difficult = 0
    for image_id, boxes, det_scores, gt_boxes, gt_difficult in per_image:
        objects += int((~gt_difficult).sum())
        difficult += int(gt_difficult.sum())
        if len(det_scores) == 0:
            continue
        rank = np.lexsort((np.arange(len(det_scores)), -det_scores))  # score, then the model's order
        scores.append(det_scores[rank])
        images.append(np.full(len(rank), image_id, dtype=np.int64))
        order.append(rank)
        marks.append(mark_image(boxes[rank], gt_boxes, gt_difficult, iou_threshold))
    result = {"objects": objects, "difficult": difficult, "detections": 0, "tp": 0, "fp": 0,
              "ap_11point": None, "ap_area": None, "pr_curve": None}
    if scores:
        scores, images, order, marks = (np.concatenate(x) for x in (scores, images, order, marks))
        ranked = marks[np.lexsort((order, images, -scores))]  # ties: image id, then the model's order
        ranked = ranked[ranked >= 0]  # ignored detections move nothing on the curve
        result.update(detections=len(scores), tp=int((ranked == 1).sum()), fp=int((ranked == 0).sum()))
    else:
        ranked = np.zeros(0, dtype=np.int8)
    if objects == 0:
        return result
    tp = np.cumsum(ranked == 1)
    fp = np.cumsum(ranked == 0)
    recall = tp / objects
    precision = tp / np.maximum(tp + fp, 1)
    result.update(ap_11point=ap_11_point(recall, precision), ap_area=ap_area(recall, precision),
                  pr_curve=interpolated_precision(recall, precision).tolist())
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else -1.0


class VocEvaluator:
    """Accumulate detections batch by batch (on every rank), merge them on rank 0, compute the VOC APs once.

    Usage, on every rank (as :class:`cv.detection.evaluation.coco.CocoEvaluator`)::

        evaluator = dataset.evaluator()   # VOCDetection's, or VocEvaluator(ground_truth, label_names)
        for images, targets in loader:
            evaluator.update([t["image_id"] for t in targets], model(images))
        evaluator.gather()                          # collective: every rank must call it
        stats = evaluator.summarize("out/detections.json")   # dict on rank 0, None elsewhere

    Each image counts once (a distributed sampler pads its last batch with repeated images); only the evaluated
    images' ground truth counts.
    """

    # The summary's headline number: what the training program picks its best checkpoint by.
    primary_metric = "mAP"

    def __init__(self, ground_truth, label_names, metric="2007", image_names=None, iou_threshold=IOU_THRESHOLD):
        """``ground_truth``: ``{image_id: {"boxes": [N, 4] (x1, y1, x2, y2 continuous pixels), "labels": [N]
        (1..K), "difficult": [N] bool}}``; ``label_names``: names by label, 0 the background; ``metric``: ``"2007"``
        or ``"2010"`` (see the module docstring); ``image_names``: ``{image_id: name}`` for the results file."""
        if metric not in METRICS:
            raise ValueError(f"VOC metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.metric = metric
        self.label_names = list(label_names)
        self.iou_threshold = iou_threshold
        self.image_names = dict(image_names or {})
        self.ground_truth = {}
        for image_id, gt in ground_truth.items():
            labels = np.asarray(gt["labels"], dtype=np.int64).reshape(-1)
            if labels.size and not (labels.min() >= 1 and labels.max() < len(self.label_names)):
                raise ValueError(f"image {image_id}: ground truth labels must be in 1..{len(self.label_names) - 1}")
            self.ground_truth[int(image_id)] = (np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4), labels,
                                                np.asarray(gt["difficult"], dtype=bool).reshape(-1))
        # image id -> float64 [N, 6] (x1, y1, x2, y2, score, label) in the model's order; an entry, possibly empty,
        # for every evaluated image.
        self._per_image = {}
        self.duplicates = 0
        self._gathered = False

    @property
    def image_ids(self):
        """The ids of the images evaluated so far (each once), in the order they were first seen."""
        return list(self._per_image)

    def update(self, image_ids, detections):
        """Record one batch: per image id its detections, a dict with ``boxes`` ``[N, 4]`` (``x1, y1, x2, y2`` in
        pixels of the original image), ``scores`` ``[N]`` and ``labels`` ``[N]`` (oneflow tensors or arrays).
        An image already recorded is ignored. ValueError for an image id without ground truth, malformed arrays,
        or labels outside 1..K."""
        image_ids, detections = list(image_ids), list(detections)
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
        for image_id, detection in zip(image_ids, detections):
            image_id = as_int(image_id)
            if image_id not in self.ground_truth:
                raise ValueError(f"image id {image_id} is not in the ground truth")
            if image_id in self._per_image:
                self.duplicates += 1
                continue
            try:
                boxes, scores, labels = (as_numpy(detection[k]) for k in ("boxes", "scores", "labels"))
            except KeyError as e:
                raise ValueError(f"image {image_id}: detections need 'boxes', 'scores' and 'labels' (missing "
                                 f"{e})") from None
            n = len(scores)
            boxes = boxes.reshape(-1, 4) if boxes.size == 0 else boxes
            if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != n or labels.shape != (n,) or \
                    scores.shape != (n,):
                raise ValueError(f"image {image_id}: boxes {boxes.shape}, scores {scores.shape} and labels "
                                 f"{labels.shape} must be [N, 4], [N] and [N]")
            if n and not (labels.min() >= 1 and labels.max() < len(self.label_names)):
                raise ValueError(f"image {image_id}: detection labels must be in 1..{len(self.label_names) - 1} "
                                 f"(got {labels.min()}..{labels.max()}): a model of another class count?")
            rows = np.empty((n, 6), dtype=np.float64)
            # Rounded once, here, as coco_eval does: the results file alone reproduces the numbers.
            rows[:, :4] = np.round(boxes.astype(np.float64), BBOX_DECIMALS)
            rows[:, 4] = scores
            rows[:, 5] = labels
            self._per_image[image_id] = rows
        self._gathered = False

    def gather(self):
        """Merge every rank's detections onto rank 0 (a no-op in a single process). A collective: every rank must
        call it after its last :meth:`update`. Only numbers travel
        (:func:`cv.detection.engine.distributed.gather_per_image`), never a pickle."""
        from cv.detection.engine import distributed as dist

        if dist.world_size() > 1:
            self.duplicates += dist.gather_per_image(self._per_image)
        self._gathered = True

    def compute(self):
        """Per class (by label, 1..K) the :func:`evaluate_class` result, over the images evaluated so far (on this
        rank: call :meth:`gather` first in a distributed run)."""
        per_class = {label: [] for label in range(1, len(self.label_names))}
        for image_id in sorted(self._per_image):
            rows = self._per_image[image_id]
            gt_boxes, gt_labels, gt_difficult = self.ground_truth[image_id]
            for label, entries in per_class.items():
                mine, gt = rows[:, 5] == label, gt_labels == label
                if mine.any() or gt.any():
                    entries.append((image_id, rows[mine, :4], rows[mine, 4], gt_boxes[gt], gt_difficult[gt]))
        return {label: evaluate_class(entries, self.iou_threshold) for label, entries in per_class.items()}

    def summarize(self, output_json=None):
        """Compute the APs over every evaluated image and print the per-class table (rank 0 only).

        Args:
            output_json: where to write the detections (a JSON list of ``{"image_id", "image", "label", "name",
                "score", "box"}``, ``box`` as ``x1, y1, x2, y2`` continuous pixels), atomically; beside it the
                precision-recall curves, the confusion matrix and their numbers
                (:func:`cv.detection.evaluation.report.write_report`). None: no file.

        Returns:
            On rank 0 ``{"mAP", "voc_metric", "mAP_11point", "mAP_area", "class_AP"}``: ``mAP`` by ``metric``
            (the primary number), both definitions' means, and ``class_AP`` (name -> AP by ``metric``, None for a
            class without ground truth); a mean is -1 when no class has ground truth. On other ranks None.
        """
        from cv.detection.engine import distributed as dist

        rank, world_size = dist.rank(), dist.world_size()
        if world_size > 1 and not self._gathered:
            raise RuntimeError("VocEvaluator.summarize: call gather() on every rank after the last update()")
        if rank != 0:
            return None
        if output_json is not None:
            fileio.write_json(output_json, self.results())
        results = self.compute()
        key = "ap_11point" if self.metric == "2007" else "ap_area"
        stats = {"mAP": _mean(r[key] for r in results.values()), "voc_metric": self.metric,
                 "mAP_11point": _mean(r["ap_11point"] for r in results.values()),
                 "mAP_area": _mean(r["ap_area"] for r in results.values()),
                 "class_AP": {self.label_names[label]: r[key] for label, r in results.items()}}
        note = f" ({self.duplicates} repeated image(s) ignored)" if self.duplicates else ""
        print(f"Pascal VOC evaluation: {len(self._per_image)} images, "
              f"{sum(len(r) for r in self._per_image.values())} detections{note}; AP at IoU >= "
              f"{self.iou_threshold:g}, difficult objects ignored")
        print(format_table(results, self.label_names, self.metric))
        if output_json is not None:
            write_report(output_json, self._report(results))
        return stats

    def _report(self, results):
        """The numbers of :func:`cv.detection.evaluation.report.write_report`: the classes' PR curves and the
        confusion matrix of the evaluated images (difficult objects are its ignored ground truth)."""
        def image(i):
            boxes, labels, difficult = self.ground_truth[i]
            rows = self._per_image[i]
            return (boxes, labels - 1, difficult), (rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64) - 1)

        counts = confusion_matrix((image(i) for i in sorted(self._per_image)), len(self.label_names) - 1,
                                  SCORE_THRESHOLD, self.iou_threshold)
        key = "ap_11point" if self.metric == "2007" else "ap_area"
        return {"title": f"Pascal VOC ({METRICS[self.metric]} AP)", "names": self.label_names[1:],
                "pr_curves": {"iou_threshold": self.iou_threshold, "recall": RECALL_POINTS.tolist(),
                              "precision": [r["pr_curve"] for r in results.values()]},
                "confusion": {"score_threshold": SCORE_THRESHOLD, "iou_threshold": self.iou_threshold,
                              "counts": counts.tolist()},
                "per_class": [{"label": label, "name": self.label_names[label], "objects": r["objects"],
                               "difficult": r["difficult"], "detections": r["detections"], "AP": r[key]}
                              for label, r in results.items()]}

    def results(self):
        """The detections as the JSON list :meth:`summarize` writes, images in id order."""
        out = []
        for image_id in sorted(self._per_image):
            for x1, y1, x2, y2, score, label in self._per_image[image_id].tolist():
                out.append({"image_id": image_id, "image": self.image_names.get(image_id), "label": int(label),
                            "name": self.label_names[int(label)], "score": float(str(np.float32(score))),
                            "box": [x1, y1, x2, y2]})
        return out


def format_table(results, label_names, metric):
    """Per class: objects (non-difficult), difficult ones, detections, true and false positives, both APs; then
    the means, the chosen metric's first."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    width = max(12, *(len(n) for n in label_names[1:]))
    lines = [f"{'class':<{width}} {'objects':>8} {'difficult':>9} {'detections':>10} {'TP':>7} {'FP':>7} "
             f"{'AP 11-point':>11} {'AP area':>8}"]
    for label, r in results.items():
        lines.append(f"{label_names[label]:<{width}} {r['objects']:>8} {r['difficult']:>9} {r['detections']:>10} "
                     f"{r['tp']:>7} {r['fp']:>7} {fmt(r['ap_11point']):>11} {fmt(r['ap_area']):>8}")
    means = {m: _mean(r["ap_11point" if m == "2007" else "ap_area"] for r in results.values()) for m in METRICS}
    other = next(m for m in METRICS if m != metric)
    without = sum(r["ap_11point"] is None for r in results.values())
    lines.append(f"mAP ({METRICS[metric]}) = {means[metric]:.4f}   ({METRICS[other]}: {means[other]:.4f})"
                 + (f"; {without} class(es) without ground truth left out" if without else ""))
    return "\n".join(lines)
