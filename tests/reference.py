"""Reference implementations that the tests (and scripts/benchmark.py) hold the library against; not used by the
library itself. Tests import it as a top-level module (``from reference import ...``), as :mod:`fitting`."""
from cv.detection.data.transforms import Compose
from cv.detection.evaluation.coco import STAT_NAMES


def literal_chain(transform):
    """The literal chain of a :class:`cv.detection.data.transforms.SSDTrainTransform`'s steps (photometric
    distortion, zoom-out, IoU crop, flip, resize, each at full size), which takes the same random decisions as the
    fused preset for the same ``rng`` state. Slow: builds the zoom-out canvas and distorts full-resolution pixels.
    Returns PIL images."""
    return Compose([transform.photometric, transform.zoom_out, transform.iou_crop, transform.flip, transform.resize])


def pycocotools_stats(gt_dataset, results, image_ids):
    """The 12 numbers that pycocotools' own ``COCOeval`` computes for ``results`` (a results list, or a results
    file) on ``image_ids`` of ``gt_dataset``: the reference implementation, which the tests and the benchmark hold
    our evaluator (faster-coco-eval) against. Slow on large sets (docs/performance.md)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # its step-by-step narration
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in evaluation.stats)))
