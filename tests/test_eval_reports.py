"""What an evaluation tells a user beyond COCO's 12 numbers: the confusion matrix on hand-built cases
(:mod:`cv.detection.evaluation.confusion`), the pictures and their numbers (:mod:`cv.detection.evaluation.report`)
for COCO and Pascal VOC evaluators, and the evaluation's progress bar (rank 0 only, on stderr).

The per-class table's equality with pycocotools' own per-category evaluation on the sample datasets is in
``test_coco_eval.py`` (it reuses that test's detections).
"""
import json
import struct

import numpy as np
import pytest

from cv.detection.evaluation.coco import CocoEvaluator
from cv.detection.evaluation.confusion import confusion_matrix, match_image
from cv.detection.evaluation.report import RECALL_POINTS, interpolated_precision, report_paths
from cv.detection.evaluation.voc import VocEvaluator
from tests.test_coco_eval import (GROUND_TRUTH, LABEL_TO_CATEGORY_ID, detections_for, make_coco,
                                  pycocotools_per_category)

CAT, DOG, BIRD, BACKGROUND = 0, 1, 2, -1
A = [0.0, 0.0, 10.0, 10.0]
B = [50.0, 50.0, 70.0, 60.0]


def shifted(box, fraction):
    """``box`` moved right by ``fraction`` of its width: IoU (1 - f) / (1 + f) with it (0.5 at f = 1/3)."""
    x1, y1, x2, y2 = box
    dx = fraction * (x2 - x1)
    return [x1 + dx, y1, x2 + dx, y2]


def gt(*objects):
    """Ground truth from ``(box, class)`` or ``(box, class, "crowd")``."""
    return (np.array([o[0] for o in objects], dtype=np.float64).reshape(-1, 4), np.array([o[1] for o in objects]),
            np.array([len(o) > 2 for o in objects], dtype=bool))


def dets(*found):
    """Detections from ``(box, score, class)``."""
    return (np.array([d[0] for d in found], dtype=np.float64).reshape(-1, 4), np.array([d[1] for d in found]),
            np.array([d[2] for d in found], dtype=np.int64))


CASES = {
    "a correct detection": (gt((A, CAT)), dets((A, 0.9, CAT)), [(CAT, CAT)]),
    "a wrong class": (gt((A, CAT)), dets((A, 0.9, DOG)), [(CAT, DOG)]),
    "a duplicate is a false positive": (gt((A, CAT)), dets((A, 0.9, CAT), (shifted(A, 0.1), 0.8, CAT)),
                                        [(CAT, CAT), (BACKGROUND, CAT)]),
    "a miss": (gt((A, CAT)), dets(), [(CAT, BACKGROUND)]),
    "a false positive on background": (gt(), dets((B, 0.9, BIRD)), [(BACKGROUND, BIRD)]),
    "below the score threshold: not counted": (gt((A, CAT)), dets((A, 0.29, CAT)), [(CAT, BACKGROUND)]),
    "at the score threshold: counted": (gt((A, CAT)), dets((A, 0.3, CAT)), [(CAT, CAT)]),
    "IoU exactly 0.5 matches": (gt((A, CAT)), dets((shifted(A, 1 / 3), 0.9, CAT)), [(CAT, CAT)]),
    "IoU below 0.5 does not": (gt((A, CAT)), dets((shifted(A, 0.4), 0.9, CAT)),
                               [(BACKGROUND, CAT), (CAT, BACKGROUND)]),
    "crowd ground truth is neither found nor missed": (gt((A, CAT, "crowd")), dets(), []),
    "a detection inside a crowd region is ignored": (gt((A, CAT, "crowd")), dets(([2, 2, 8, 8], 0.9, DOG)), []),
    # Mostly outside the crowd region (a third of its area inside): a false positive after all.
    "a detection mostly outside a crowd region is not": (gt((A, CAT, "crowd")), dets(([5, 0, 20, 10], 0.9, DOG)),
                                                         [(BACKGROUND, DOG)]),
    # The dog scores higher, but the cat detection finds the cat: the dog is the false positive.
    "the own class is matched first": (gt((A, CAT)), dets((A, 0.9, DOG), (A, 0.8, CAT)),
                                       [(CAT, CAT), (BACKGROUND, DOG)]),
    # Two cats side by side; the detection between them, nearer the second, takes the second.
    "the box of highest IoU is taken": (gt((A, CAT), ([6, 0, 16, 10], CAT)), dets(([5, 0, 15, 10], 0.9, CAT)),
                                        [(CAT, CAT), (CAT, BACKGROUND)]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_confusion_counts_each_case(case):
    truth, found, expected = CASES[case]
    assert sorted(match_image(truth, found)) == sorted(expected)


def test_confusion_matrix_of_several_images():
    """Rows ground truth, columns predictions, background last; a row sums to its objects (crowd left out)."""
    images = [
        (gt((A, CAT), (B, DOG)), dets((A, 0.9, CAT), (B, 0.7, CAT))),  # cat found; the dog taken for a cat
        (gt((A, CAT, "crowd"), (B, BIRD)), dets((A, 0.95, BIRD), (B, 0.2, BIRD))),  # crowd; bird below threshold
        (gt((A, DOG)), dets((A, 0.6, DOG), (A, 0.5, DOG), (B, 0.4, CAT))),  # dog found twice; a cat on nothing
    ]
    expected = np.array([
        # cat dog bird background  (predicted)
        [1, 0, 0, 0],  # cat
        [1, 1, 0, 0],  # dog
        [0, 0, 0, 1],  # bird
        [1, 1, 0, 0],  # background
    ])
    np.testing.assert_array_equal(confusion_matrix(images, 3), expected)
    # Another operating point: with every detection counted the bird is found.
    assert confusion_matrix(images, 3, score_threshold=0.0)[2].tolist() == [0, 0, 1, 0]


def test_interpolated_precision_is_cocos():
    # Ranked: TP, FP, TP of 4 objects -> recall .25 .25 .5, precision 1 .5 .667: the envelope 1 up to 0.25, 2/3 up
    # to 0.5, then 0 (never reached).
    curve = interpolated_precision([0.25, 0.25, 0.5], [1.0, 0.5, 2 / 3])
    assert curve[RECALL_POINTS <= 0.25].tolist() == [1.0] * 26
    assert curve[(RECALL_POINTS > 0.25) & (RECALL_POINTS <= 0.5)] == pytest.approx([2 / 3] * 25)
    assert (curve[RECALL_POINTS > 0.5] == 0).all() and interpolated_precision([], []).tolist() == [0.0] * 101


def png_size(path):
    """(width, height) from a PNG's header; asserts the signature and that matplotlib can decode it."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert matplotlib.image.imread(str(path)).shape[:2] == (height, width)
    return width, height


def pictures(output_json):
    """The report of ``output_json``: its JSON, after checking both pictures' sizes."""
    paths = {k: type(output_json)(v) for k, v in report_paths(output_json).items()}
    assert png_size(paths["pr"]) == (900, 700) and png_size(paths["confusion"]) == (1000, 900)
    return json.loads(paths["json"].read_text())


def test_coco_pictures_and_their_numbers(tmp_path, capsys):
    ids = list(GROUND_TRUTH)
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(ids, [detections_for(i) for i in ids])  # the ground truth itself, score 1
    stats = evaluator.summarize(tmp_path / "detections_val.json")
    report = pictures(tmp_path / "detections_val.json")
    assert f"per-class pictures: {tmp_path / 'detections_val_pr.png'}, " in capsys.readouterr().out
    assert report["names"] == ["class1", "class3", "class7"] and report["per_class"] == stats["per_class"]
    assert [(r["gt"], r["detections"], r["AP"]) for r in stats["per_class"]] == [(5, 5, 1.0), (4, 4, 1.0), (4, 4, 1.0)]
    assert report["confusion"] == {"score_threshold": 0.3, "iou_threshold": 0.5,
                                   "counts": [[5, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]]}
    assert report["pr_curves"]["precision"] == [[1.0] * 101] * 3 and report["pr_curves"]["recall"][50] == 0.5


def test_coco_report_of_jittered_detections_agrees_with_the_table(tmp_path):
    """Each class's curve averages to its AP50 (COCO's AP is the mean of the 101-point curve), the mean curve to
    the AP50; each confusion row sums to the class's objects; a class absent from the evaluated images has AP -1
    (as pycocotools per category), no curve and an empty row, its false positive counted on background."""
    ids = [15, 27]  # classes 1 and 7 only
    detections = [detections_for(i, jitter=(0.2, 0.4)) for i in ids]
    detections[0] = {"boxes": np.concatenate([detections[0]["boxes"], [[200, 200, 240, 260]]]).astype(np.float32),
                     "scores": np.append(detections[0]["scores"], 0.8).astype(np.float32),
                     "labels": np.append(detections[0]["labels"], 2)}  # label 2 = category 3
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(ids, detections)
    path = tmp_path / "detections_epoch0001.json"
    stats = evaluator.summarize(path)
    report = pictures(path)
    curves = report["pr_curves"]["precision"]
    table = {r["category_id"]: r for r in stats["per_class"]}
    assert table[3]["AP"] == table[3]["AP50"] == table[3]["AP75"] == -1 and curves[1] is None
    assert pycocotools_per_category(make_coco(), str(path), ids)[3] == (-1, -1, -1)
    for curve, row in zip(curves, stats["per_class"]):
        if curve is not None:
            assert np.mean(curve) == pytest.approx(row["AP50"], abs=1e-12) and 0 < row["AP50"] < 1
    assert np.mean([c for c in curves if c is not None]) == pytest.approx(stats["AP50"], abs=1e-12)
    counts = np.array(report["confusion"]["counts"])
    assert counts.sum(axis=1)[:3].tolist() == [table[c]["gt"] for c in (1, 3, 7)] == [2, 0, 2]
    assert counts[3, 1] >= 1 and counts[1].sum() == 0  # the category-3 detection on nothing
    # Every detection above the threshold is in one column (no crowd here to ignore one).
    above = sum(int((d["scores"] >= 0.3).sum()) for d in detections)
    assert counts[:, :3].sum() == above


def test_voc_pictures_and_their_numbers(tmp_path):
    names = ["__background__", "aeroplane", "bicycle"]
    truth = {1: {"boxes": [A, B], "labels": [1, 2], "difficult": [False, True]}}
    evaluator = VocEvaluator(truth, names)
    evaluator.update([1], [{"boxes": np.array([A, B, [100, 100, 120, 120]], dtype=np.float32),
                            "scores": np.array([0.9, 0.8, 0.5], dtype=np.float32), "labels": np.array([1, 2, 1])}])
    evaluator.summarize(tmp_path / "detections_test.json")
    report = pictures(tmp_path / "detections_test.json")
    # The aeroplane found, then a false one; the bicycle detection found a difficult one: ignored, no row.
    assert report["confusion"]["counts"] == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert report["pr_curves"]["precision"] == [[1.0] * 101, None]
    assert [(r["name"], r["objects"], r["difficult"], r["AP"]) for r in report["per_class"]] == \
        [("aeroplane", 1, 0, 1.0), ("bicycle", 0, 1, None)]


@pytest.fixture
def tiny_eval(tmp_path):
    """A tiny untrained SSD, a loader over 4 sample images and its evaluator (a fresh one per call)."""
    import warnings

    from cv.detection.data.base import make_loader
    from cv.detection.data.coco import CocoDetection
    from cv.detection.data.sample import make_sample_dataset
    from tests.conftest import tiny_ssd

    make_sample_dataset(tmp_path, seed=2, num_train=0, num_val=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(tmp_path, "val", train=False)
    model = tiny_ssd(num_classes=ds.num_classes)
    return model, make_loader(ds, 2, 0, shuffle=False), lambda: CocoEvaluator(ds.dataset, ds.label_to_category_id)


def test_progress_bar_on_rank_0_only(tiny_eval, capsys, monkeypatch):
    from cv.detection.engine import distributed as dist
    from cv.detection.engine.trainer import evaluate

    model, loader, evaluator = tiny_eval
    evaluate(model, loader, evaluator(), "cpu")
    out, err = capsys.readouterr()
    final = err.split("\r")[-1]  # tqdm redraws with carriage returns; its last state stays, on a line of its own
    assert final.startswith("evaluating: 100%") and " 4/4 [" in final and "img/s]" in final and final.endswith("\n")
    assert "evaluating:" not in out and "evaluated 4 images in " in out  # stdout keeps its one line per event

    monkeypatch.setattr(dist, "is_main", lambda: False)  # as on any other rank
    evaluate(model, loader, evaluator(), "cpu")
    out, err = capsys.readouterr()
    assert err == "" and "evaluated" not in out
