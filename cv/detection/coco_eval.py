"""COCO bbox evaluation of detector outputs with the official ``pycocotools`` protocol.

The model returns, per image, ``boxes`` (``[x1, y1, x2, y2]`` in pixels of the original image), ``scores`` and
``labels`` (contiguous model labels). COCO's tools want something else: results in the official format
(``image_id``, ``category_id`` *of the annotation file*, ``bbox`` as ``[x, y, w, h]``, ``score``), and a single
``COCOeval`` over every evaluated image, because the 12 COCO numbers are not averages of per-batch or per-rank
numbers (precision is accumulated over all detections of a category, ranked by score across images). This module
does the conversion (:func:`detections_to_coco_results`) and the bookkeeping (:class:`CocoEvaluator`): collecting
batches, merging the ranks of a distributed run onto rank 0, de-duplicating images a distributed sampler repeated
to pad its last batch, writing the results file, and running the evaluation once.

``oneflow`` is imported only where it is needed (rank queries and the distributed gather), so the conversion and
the single-process evaluation also work on plain numpy arrays.
"""
import contextlib
import io
import os
import pickle

import numpy as np

from cv.detection.atomic import write_json_atomically

# Names of ``COCOeval.stats``, in pycocotools' order (IoU=.50:.95 unless named; s/m/l are the area ranges;
# AR1/AR10/AR100 are the recall with at most 1/10/100 detections per image).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# Pixel coordinates to 2 decimals: far below the annotation precision, and it keeps the results file small.
BBOX_DECIMALS = 2


def _as_numpy(x):
    """``x`` as a numpy array: oneflow (or torch) tensors through their ``.numpy()``, anything else through
    ``np.asarray``. Duck-typed so that this module does not need to import oneflow."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


def _as_int(x):
    """An image id given as a Python/numpy int or a one-element tensor/array, as a Python int."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    a = _as_numpy(x)
    if a.size != 1:
        raise ValueError(f"an image id must be a single number, got an array of shape {a.shape}")
    return int(a.reshape(()).item())


def _convert_image(image_id, detection, label_to_category_id):
    """One image's detections as a float64 array ``[N, 6]`` of ``x, y, w, h, score, category_id``.

    The boxes are rounded to :data:`BBOX_DECIMALS` here, once, so that what is evaluated is exactly what the
    results file holds (the file alone reproduces the numbers). Raises ValueError for malformed arrays or a label
    that ``label_to_category_id`` does not know (naming the label and the image).
    """
    try:
        boxes, scores, labels = (_as_numpy(detection[k]) for k in ("boxes", "scores", "labels"))
    except KeyError as e:
        raise ValueError(f"image {image_id}: detections need 'boxes', 'scores' and 'labels' (missing {e})") from None
    n = len(scores)
    boxes = boxes.reshape(-1, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != n or labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"image {image_id}: boxes {boxes.shape}, scores {scores.shape} and labels {labels.shape} "
                         "must be [N, 4], [N] and [N]")
    out = np.empty((n, 6), dtype=np.float64)
    if n == 0:
        return out
    boxes = boxes.astype(np.float64)
    out[:, 0:2] = boxes[:, 0:2]
    out[:, 2:4] = boxes[:, 2:4] - boxes[:, 0:2]  # [x1, y1, x2, y2] -> [x, y, w, h]
    out[:, 0:4] = np.round(out[:, 0:4], BBOX_DECIMALS)
    out[:, 4] = scores
    # Map the distinct labels only (a few per image), then broadcast back: cheaper than a per-detection lookup.
    unique, inverse = np.unique(labels.astype(np.int64), return_inverse=True)
    categories = []
    for label in unique.tolist():
        if label not in label_to_category_id:
            raise ValueError(f"image {image_id}: label {label} has no category id "
                             f"(known labels: {sorted(label_to_category_id)})")
        categories.append(label_to_category_id[label])
    out[:, 5] = np.asarray(categories, dtype=np.float64)[inverse]
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

    Raises:
        ValueError: the two sequences differ in length, arrays are malformed, or a label is not in the mapping
            (the message names the label and the image id).
    """
    image_ids, detections = list(image_ids), list(detections)
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
    per_image = {}
    for image_id, detection in zip(image_ids, detections):
        image_id = _as_int(image_id)
        rows = _convert_image(image_id, detection, label_to_category_id)
        # Repeated ids are concatenated here (this function only converts); the evaluator de-duplicates.
        per_image[image_id] = np.concatenate([per_image[image_id], rows]) if image_id in per_image else rows
    return _results_from_arrays(per_image)


def _rank_and_world_size():
    import oneflow as flow  # only here: the conversion itself does not need oneflow

    return flow.env.get_rank(), flow.env.get_world_size()


class CocoEvaluator:
    """Accumulate detections batch by batch (on every rank), merge them on rank 0, evaluate once with COCOeval.

    Usage, on every rank::

        evaluator = CocoEvaluator(coco_gt, dataset.label_to_category_id)
        for images, targets in loader:
            evaluator.update([t["image_id"] for t in targets], model(images))
        evaluator.gather()                          # collective: every rank must call it
        stats = evaluator.summarize("out/results.json")   # dict on rank 0, None elsewhere

    Each image counts once: the first copy of an image's detections is kept and later copies are ignored, because
    a distributed sampler pads the last batch by repeating images (possibly on another rank) and a repeated image
    would count its ground truth twice.
    """

    def __init__(self, coco_gt, label_to_category_id):
        """``coco_gt``: a ``pycocotools.coco.COCO`` with the ground truth; ``label_to_category_id``: model label ->
        category id of that file (every category id must exist in ``coco_gt``)."""
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
        self._gathered = False

    @property
    def image_ids(self):
        """The ids of the images evaluated so far (each once), in the order they were first seen."""
        return list(self._per_image)

    def update(self, image_ids, detections):
        """Record one batch: ``image_ids`` and ``detections`` as for :func:`detections_to_coco_results`.

        Images with empty detections are recorded as evaluated. An image already recorded is ignored. Raises
        ValueError for an image id not in the ground truth (pycocotools would only fail, opaquely, at the end) or
        for the conditions listed in :func:`detections_to_coco_results`.
        """
        image_ids, detections = list(image_ids), list(detections)
        if len(image_ids) != len(detections):
            raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection dicts")
        for image_id, detection in zip(image_ids, detections):
            image_id = _as_int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in the ground truth")
            rows = _convert_image(image_id, detection, self.label_to_category_id)
            if image_id in self._per_image:
                self.duplicates += 1
                continue
            self._per_image[image_id] = rows
        self._gathered = False

    def _merge(self, per_image):
        for image_id, rows in per_image.items():
            if image_id in self._per_image:
                self.duplicates += 1
            else:
                self._per_image[image_id] = rows

    def gather(self):
        """Merge every rank's results onto rank 0 (a no-op in a single process).

        A collective: every rank must call it, after its last :meth:`update`. Afterwards rank 0 holds the
        de-duplicated union (rank order, then the order of each rank's updates); the other ranks keep their own
        results, which :meth:`summarize` ignores there.

        Mechanism: oneflow 0.9's ``oneflow.comm`` has tensor collectives only (no ``all_gather_object``), so each
        rank pickles its ``{image_id: array}`` into a uint8 tensor and the bytes travel with two
        ``oneflow.comm.all_gather`` calls: first every payload's length (the collective needs equal shapes), then
        the payloads padded to the longest. This needs no shared file system and no output directory, and
        ``all_gather`` itself synchronises the ranks. The tensors are CPU tensors (oneflow puts a process's CPU
        tensors on ``cpu:<local rank>``, as ``all_gather`` requires), whether or not the model runs on a GPU: the
        payload is bytes for the host anyway, and no rank-to-GPU binding has to be guessed. Every rank receives every
        payload (oneflow's ``gather`` to one rank is not used, as ``all_gather`` is the collective known to work
        on CPU here); for a COCO-sized validation set that is tens of MB per rank, once.
        """
        rank, world_size = _rank_and_world_size()
        if world_size > 1:
            import oneflow as flow

            payload = np.frombuffer(pickle.dumps(self._per_image, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            lengths = [None] * world_size
            flow.comm.all_gather(lengths, flow.tensor([len(payload)], dtype=flow.int64))
            lengths = [int(t.numpy()[0]) for t in lengths]
            padded = np.zeros(max(lengths), dtype=np.uint8)
            padded[:len(payload)] = payload
            chunks = [None] * world_size
            flow.comm.all_gather(chunks, flow.tensor(padded, dtype=flow.uint8))
            if rank == 0:
                # Rank 0's own results come first as they are; the other ranks' are appended, skipping images
                # already present (so a second gather() changes no result).
                for chunk, length in zip(chunks[1:], lengths[1:]):
                    self._merge(pickle.loads(chunk.numpy()[:length].tobytes()))
        self._gathered = True

    def summarize(self, output_json=None):
        """Evaluate all evaluated images at once and print the standard 12-number COCO summary (rank 0 only).

        Args:
            output_json: where to write the results (official COCO results format, a JSON list); written atomically
                (a temporary file in the same directory, then a rename), parent directories created. None: no file.

        Returns:
            On rank 0 a dict of the 12 stats (:data:`STAT_NAMES`: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``,
            ``APl``, ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``); on other ranks None (nothing is
            written there). Without any detection all stats are 0 and a note is printed (pycocotools cannot load an
            empty result list). As in pycocotools, a stat is -1 where the evaluated images have no ground truth of
            that kind (e.g. no small objects).

        Raises:
            RuntimeError: in a distributed run when :meth:`gather` was not called after the last update (the result
                would silently cover rank 0's share only).
        """
        rank, world_size = _rank_and_world_size()
        if world_size > 1 and not self._gathered:
            raise RuntimeError("CocoEvaluator.summarize: call gather() on every rank after the last update()")
        if rank != 0:
            return None
        results = _results_from_arrays(self._per_image)
        if output_json is not None:
            write_json_atomically(output_json, results)
        image_ids = sorted(self._per_image)
        note = f" ({self.duplicates} repeated image(s) ignored)" if self.duplicates else ""
        print(f"COCO bbox evaluation: {len(image_ids)} images, {len(results)} detections{note}")
        if not results:
            print("No detections at all: every COCO stat is 0 (pycocotools cannot evaluate an empty result list).")
            return {name: 0.0 for name in STAT_NAMES}

        from pycocotools.cocoeval import COCOeval

        # pycocotools narrates each step ("Loading and preparing results...", "DONE (t=...)"); keep only the
        # summary table users expect. loadRes adds fields to the dicts it gets, hence after the file is written.
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco_gt.loadRes(results)
            coco_eval = COCOeval(self.coco_gt, coco_dt, "bbox")
            # Exactly the evaluated images: ground truth of images never evaluated must not count as missed, and
            # an evaluated image without detections must.
            coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
        coco_eval.summarize()
        return {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats)}
