"""COCO bbox evaluation (:mod:`cv.detection.evaluation.coco`) against a small hand-made ground truth.

The ground truth has non-contiguous category ids (1, 3, 7), mapped from contiguous model labels 1..3, and objects
of all three COCO area ranges, so that the mapping and the per-size stats are exercised. The distributed test runs
a real 2-process oneflow launch on CPU.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cv.detection.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco_results
from reference import pycocotools_stats
from tests.conftest import free_port

LABEL_TO_CATEGORY_ID = {1: 1, 2: 3, 3: 7}
CATEGORY_ID_TO_LABEL = {c: label for label, c in LABEL_TO_CATEGORY_ID.items()}

# image id -> [(category id, [x, y, w, h]), ...]; sizes: small (< 32^2), medium, large (> 96^2).
GROUND_TRUTH = {
    11: [(1, [10, 10, 20, 15]), (3, [50, 40, 60, 50]), (7, [120, 100, 150, 130])],
    12: [(3, [5, 5, 25, 20]), (3, [200, 150, 40, 70]), (1, [30, 60, 120, 110])],
    15: [(7, [300, 20, 18, 28]), (1, [40, 200, 80, 45])],
    20: [(7, [0, 0, 200, 180]), (3, [250, 250, 30, 30]), (1, [100, 10, 55, 40])],
    27: [(1, [60, 70, 90, 120]), (7, [10, 300, 26, 12])],
}


def make_coco():
    """The ground truth as an annotation file's content."""
    images, annotations = [], []
    for image_id, objects in GROUND_TRUTH.items():
        images.append({"id": image_id, "width": 400, "height": 400, "file_name": f"{image_id}.jpg"})
        for category_id, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in sorted(CATEGORY_ID_TO_LABEL)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_for(image_id, jitter=None, seed=0):
    """The ground truth of ``image_id`` as model output ([x1, y1, x2, y2], model labels, score 1.0); ``jitter``
    (lo, hi) shifts each box by that fraction of its size along x or y (random axis and direction): IoU
    (1 - f) / (1 + f), so 0.67 to 0.43 for shifts of 20% to 40%, on both sides of the 0.5 threshold."""
    rng = np.random.default_rng(seed + image_id)
    boxes, labels = [], []
    for category_id, (x, y, w, h) in GROUND_TRUTH[image_id]:
        if jitter is not None:
            f = rng.uniform(*jitter) * rng.choice([-1, 1])
            if rng.integers(2):
                x += f * w
            else:
                y += f * h
        boxes.append([x, y, x + w, y + h])
        labels.append(CATEGORY_ID_TO_LABEL[category_id])
    n = len(boxes)
    # Distinct scores: with jitter the ranking then decides which detections come first, as for a real model.
    scores = np.ones(n) if jitter is None else rng.uniform(0.3, 1.0, size=n)
    return {"boxes": np.asarray(boxes, dtype=np.float32), "scores": scores.astype(np.float32),
            "labels": np.asarray(labels, dtype=np.int64)}


def empty_detections():
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int64)}


def evaluate(image_ids, detections, output_json=None):
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(image_ids, detections)
    return evaluator.summarize(output_json)


def twelve(stats):
    """The 12 COCO numbers of a summary (without its per-class table)."""
    return {name: stats[name] for name in STAT_NAMES}


def test_ground_truth_as_detections_is_perfect(capsys):
    ids = list(GROUND_TRUTH)
    stats = evaluate(ids, [detections_for(i) for i in ids])
    assert set(stats) == set(STAT_NAMES) | {"per_class"}
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["APs"] == pytest.approx(1.0) and stats["APm"] == pytest.approx(1.0)
    assert stats["APl"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    # The standard summary table is printed, pycocotools' step-by-step chatter is not.
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    assert out.count("Average Precision") == 6 and out.count("Average Recall") == 6
    assert "Loading and preparing results" not in out and "DONE" not in out


def test_oneflow_tensors_are_accepted():
    import oneflow as flow

    ids = list(GROUND_TRUTH)
    detections = [{k: flow.tensor(v) for k, v in detections_for(i).items()} for i in ids]
    assert evaluate([flow.tensor(i) for i in ids], detections)["AP"] == pytest.approx(1.0)
    assert detections_to_coco_results(ids, detections, LABEL_TO_CATEGORY_ID) == \
        detections_to_coco_results(ids, [detections_for(i) for i in ids], LABEL_TO_CATEGORY_ID)


def test_jittered_detections_lower_ap_and_results_file(tmp_path):
    ids = list(GROUND_TRUTH)
    detections = [detections_for(i, jitter=(0.2, 0.4)) for i in ids]
    path = tmp_path / "eval" / "results.json"
    stats = evaluate(ids, detections, output_json=str(path))
    assert 0.0 < stats["AP"] < 1.0
    assert stats["AP75"] < stats["AP50"]  # some shifted boxes keep IoU > 0.5, none 0.75

    results = json.loads(path.read_text())
    # No temporary file left behind; beside the results the per-class pictures and their numbers.
    assert sorted(os.listdir(path.parent)) == ["results.json", "results_confusion.png", "results_pr.png",
                                               "results_report.json"]
    assert len(results) == sum(len(v) for v in GROUND_TRUTH.values())
    assert results == detections_to_coco_results(ids, detections, LABEL_TO_CATEGORY_ID)
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert type(r["image_id"]) is int and type(r["category_id"]) is int and type(r["score"]) is float
        assert r["category_id"] in {1, 3, 7}  # the file's ids, not model labels
        assert len(r["bbox"]) == 4 and all(type(v) is float and round(v, 2) == v for v in r["bbox"])
    # [x1, y1, x2, y2] -> [x, y, w, h]: the jitter moves boxes but keeps their sizes.
    first = results[0]
    assert first["image_id"] == 11 and first["category_id"] == 1
    assert first["bbox"][2:] == pytest.approx([20, 15], abs=0.01)

    # The file alone reproduces the numbers: pycocotools itself computes the same 12 from it.
    assert pycocotools_stats(make_coco(), str(path), ids) == pytest.approx(twelve(stats), abs=1e-9)


def test_no_detections_gives_zero(tmp_path, capsys):
    ids = list(GROUND_TRUTH)
    path = tmp_path / "results.json"
    stats = evaluate(ids, [empty_detections() for _ in ids], output_json=str(path))
    assert twelve(stats) == {name: 0.0 for name in STAT_NAMES}  # every kind of object there, none found
    assert json.loads(path.read_text()) == []
    out = capsys.readouterr().out
    assert "COCO bbox evaluation: 5 images, 0 detections" in out
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000" in out
    assert " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.000" in out
    # Nothing evaluated at all: no ground truth of any kind, so -1 (pycocotools' "absent") everywhere.
    assert twelve(CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID).summarize()) == {name: -1.0 for name in STAT_NAMES}


def test_image_without_detections_counts():
    ids = list(GROUND_TRUTH)
    others = [i for i in ids if i != 12]
    perfect = [detections_for(i) for i in others]
    # Image 12 not evaluated at all: the others are perfect.
    assert evaluate(others, perfect)["AP"] == pytest.approx(1.0)
    # Image 12 evaluated but nothing found there: its ground truth is missed.
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(ids, [detections_for(i) if i != 12 else empty_detections() for i in ids])
    assert 12 in evaluator.image_ids
    stats = evaluator.summarize()
    assert 0.0 < stats["AP"] < 1.0 and stats["AR100"] < 1.0


def test_label_mapping_round_trip_and_unknown_label():
    # Every label maps to its category id and back; the category ids are the non-contiguous ones of the file.
    for label, category_id in LABEL_TO_CATEGORY_ID.items():
        det = {"boxes": np.array([[1.0, 2.0, 11.0, 22.0]]), "scores": np.array([0.5]), "labels": np.array([label])}
        (result,) = detections_to_coco_results([20], [det], LABEL_TO_CATEGORY_ID)
        assert result == {"image_id": 20, "category_id": category_id, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}
        assert CATEGORY_ID_TO_LABEL[result["category_id"]] == label
    assert sorted(LABEL_TO_CATEGORY_ID.values()) == [c["id"] for c in make_coco()["categories"]]

    with pytest.raises(ValueError, match="not in the ground truth"):
        CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID).update([99], [empty_detections()])


def test_detections_of_labels_without_a_category_are_left_out_and_counted(tmp_path, capsys):
    """A 91-way COCO model scores every COCO id, also those a COCO subset lacks: such detections are dropped and
    counted, as pycocotools ignores categories the ground truth does not have; the AP is that of the rest."""
    ids = list(GROUND_TRUTH)
    clean = [detections_for(i, jitter=(0.2, 0.4)) for i in ids]
    noisy = []
    for det in clean:  # each image also gets detections of labels 5 and 14, which have no category
        n = len(det["labels"])
        noisy.append({"boxes": np.concatenate([det["boxes"]] * 3),
                      "scores": np.concatenate([det["scores"], det["scores"] * 0.5, det["scores"] * 0.9]),
                      "labels": np.concatenate([det["labels"], np.full(n, 5), np.full(n, 14)])})
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(ids, noisy)
    total = sum(len(d["labels"]) for d in clean)
    assert evaluator.dropped == {5: total, 14: total}
    stats = evaluator.summarize(tmp_path / "results.json")
    assert stats == evaluate(ids, clean)
    assert "left out 26 detections of 2 model labels" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == total and {r["category_id"] for r in results} <= set(LABEL_TO_CATEGORY_ID.values())
    assert detections_to_coco_results(ids, noisy, LABEL_TO_CATEGORY_ID) == \
        detections_to_coco_results(ids, clean, LABEL_TO_CATEGORY_ID)


def test_duplicated_images_are_counted_once():
    ids = list(GROUND_TRUTH)
    detections = [detections_for(i, jitter=(0.2, 0.4)) for i in ids]
    once = evaluate(ids, detections)
    # A sampler padding the last batch repeats images; here image 11 in the same batch and 20 in a later one.
    evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
    evaluator.update(ids + [11], detections + [detections[0]])
    evaluator.update([20], [detections[ids.index(20)]])
    assert evaluator.duplicates == 2 and sorted(evaluator.image_ids) == sorted(ids)
    assert evaluator.summarize() == once


DISTRIBUTED_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
import numpy as np
import oneflow as flow
from test_coco_eval import LABEL_TO_CATEGORY_ID, GROUND_TRUTH, make_coco, detections_for
from cv.detection.evaluation.coco import CocoEvaluator

out = {out!r}
rank, world_size = flow.env.get_rank(), flow.env.get_world_size()
assert world_size == 2, world_size
ids = list(GROUND_TRUTH)
# Like a distributed sampler: rank r takes every other image and the last batch is padded by repeating the first.
padded = ids + ids[:len(ids) % world_size]
mine = padded[rank::world_size]
evaluator = CocoEvaluator(make_coco(), LABEL_TO_CATEGORY_ID)
detections = [detections_for(i, jitter=(0.2, 0.4)) for i in mine]
if rank == 1:  # one detection of a label without a category, dropped and counted on rank 1 only
    d = detections[0]
    detections[0] = {{"boxes": np.concatenate([d["boxes"], d["boxes"][:1]]), "scores": np.append(d["scores"], 0.9),
                      "labels": np.append(d["labels"], 9)}}
evaluator.update(mine, detections)
evaluator.gather()
stats = evaluator.summarize(os.path.join(out, "results.json") if rank == 0 else os.path.join(out, "rank1.json"))
with open(os.path.join(out, f"stats{{rank}}.json"), "w") as f:
    json.dump({{"stats": stats, "mine": mine, "images": sorted(evaluator.image_ids), "dropped": evaluator.dropped}}, f)
"""


def test_distributed_gather_two_processes(tmp_path):
    ids = list(GROUND_TRUTH)
    single = evaluate(ids, [detections_for(i, jitter=(0.2, 0.4)) for i in ids])

    script = tmp_path / "dist_eval.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT.format(
        tests_dir=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path))))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [repo, str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, "-m", "cv.detection.engine.launch", "dist_eval"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0 = json.loads((tmp_path / "stats0.json").read_text())
    rank1 = json.loads((tmp_path / "stats1.json").read_text())
    assert set(rank0["mine"]).isdisjoint(set(rank1["mine"]) - {ids[0]})  # each rank a different half (+ padding)
    assert rank0["images"] == sorted(ids)  # rank 0 holds everything, once
    assert twelve(rank0["stats"]) == pytest.approx(twelve(single))
    assert rank0["stats"]["per_class"] == [pytest.approx(row) for row in single["per_class"]]
    assert rank1["stats"] is None
    assert rank0["dropped"] == {"9": 1} and rank1["dropped"] == {"9": 1}  # rank 0 counts rank 1's too
    assert (tmp_path / "results.json").exists() and not (tmp_path / "rank1.json").exists()
    assert len(json.loads((tmp_path / "results.json").read_text())) == sum(len(v) for v in GROUND_TRUTH.values())


def pycocotools_per_category(gt_dataset, results_file, image_ids):
    """``{category id: (AP, AP50, AP75)}`` by pycocotools' own COCOeval run once per category (``params.catIds =
    [c]``): the reference for the per-class table."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        detections = gt.loadRes(results_file)
        for category in sorted(gt.getCatIds()):
            evaluation = COCOeval(gt, detections, "bbox")
            evaluation.params.imgIds, evaluation.params.catIds = sorted(image_ids), [category]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            out[category] = tuple(float(v) for v in evaluation.stats[:3])
    return out


@pytest.mark.parametrize("coco_categories", [False, True], ids=["sample", "coco-faithful sample"])
def test_our_table_equals_pycocotools_on_the_sample_datasets(tmp_path, coco_categories, capsys):
    """On both sample datasets (the COCO-faithful one is in COCO's 91-way label space with COCO's sparse category
    ids, and has crowd regions, images without objects, all area ranges), detections like a detector's (jittered
    objects, misses, false positives, labels the dataset lacks): every one of the 12 numbers equals pycocotools' own
    COCOeval's on the same results file, and so does every row of the per-class table pycocotools' COCOeval run per
    category (as computed and as printed)."""
    from cv.detection.data.coco import CocoDetection
    from cv.detection.data.sample import make_sample_dataset

    make_sample_dataset(tmp_path, seed=1, num_train=0, num_val=30, coco_categories=coco_categories)
    ds = CocoDetection(tmp_path, "val", train=False)
    rng = np.random.default_rng(0)
    ids, detections = [], []
    for image_id, _, h, w, boxes, labels in ds.images:
        keep = rng.random(len(boxes)) < 0.8  # some objects missed
        jitter = rng.normal(0, 0.08, (int(keep.sum()), 4)) * np.tile(boxes[keep, 2:] - boxes[keep, :2], 2)
        found = boxes[keep] + jitter
        false = rng.uniform(0, 1, (5, 2)) * [w, h]
        found = np.concatenate([found, np.concatenate([false, false + rng.uniform(5, 60, (5, 2))], 1)])
        found_labels = np.concatenate([labels[keep], rng.integers(1, ds.num_classes, 5)])
        ids.append(image_id)
        detections.append({"boxes": found.astype(np.float32), "labels": found_labels,
                           "scores": rng.uniform(0.05, 1, len(found)).astype(np.float32)})
    evaluator = CocoEvaluator(ds.dataset, ds.label_to_category_id)
    evaluator.update(ids, detections)
    stats = evaluator.summarize(tmp_path / "results.json")
    assert 0.1 < stats["AP"] < 0.9  # a table worth comparing (measured: 0.20 sample, 0.42 COCO-faithful)
    # The COCO-faithful sample is in COCO's label space: 91 outputs, its six categories at COCO's sparse ids.
    assert (ds.num_classes, sorted(ds.label_to_category_id.values())) == (
        (91, [11, 13, 27, 67, 84, 90]) if coco_categories else (7, [1, 3, 4, 7, 8, 10]))
    assert bool(evaluator.dropped) == coco_categories  # a 91-way model detects ids the dataset lacks
    # Equal to the last bit as measured; 1e-12 leaves room for a summation order, nothing more.
    assert pycocotools_stats(ds.dataset, str(tmp_path / "results.json"), ids) == pytest.approx(twelve(stats), abs=1e-12)

    reference = pycocotools_per_category(ds.dataset, str(tmp_path / "results.json"), ids)
    assert [r["category_id"] for r in stats["per_class"]] == sorted(reference)
    printed = capsys.readouterr().out.split("per class (")[1].splitlines()[2:]
    assert printed[len(reference)].startswith("per-class pictures: ")  # the table ends there
    for row, line in zip(stats["per_class"], printed):
        theirs = reference[row["category_id"]]
        assert (row["AP"], row["AP50"], row["AP75"]) == pytest.approx(theirs, abs=1e-12)
        gt = sum(a["category_id"] == row["category_id"] and not a["iscrowd"] for a in ds.dataset["annotations"])
        expected = [row["name"], str(gt), str(row["detections"])] + [f"{v:.3f}" for v in theirs]
        assert line.rsplit(maxsplit=5) == expected
    worth = [r for r in stats["per_class"] if 0.1 < r["AP"] < 0.9]
    assert len(worth) >= 3  # classes whose AP is neither trivial nor absent
