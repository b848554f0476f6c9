"""Pascal VOC: annotation parsing (:mod:`cv.detection.data.voc`), layouts and split syntax
(:mod:`cv.detection.data.layouts`), the evaluator (:mod:`cv.detection.evaluation.voc`) on hand-computed cases and
against COCO's AP50 where the definitions coincide, the VOC sample dataset, and the programs end to end on it (slow).

Evaluator cases use 10x10 boxes on one row: ``box(x)`` is ``[x, 0, x + 10, 10]``; ``FAR`` overlaps nothing.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image

from cv.detection.data import layouts as datasets
from cv.detection.data import voc
from cv.detection.data.voc import VOC_CLASSES, VOC_LABEL_NAMES, VOCDetection, image_id, parse_annotation, parse_split
from cv.detection.evaluation.voc import VocEvaluator, ap_11_point, ap_area
from tests.conftest import INFER_SH, TRAIN_SH, free_port, last_line, quick_args, run

# ---------------------------------------------------------------------------------------------------------------
# Writing small VOC layouts.
# ---------------------------------------------------------------------------------------------------------------


def annotation_xml(width, height, objects, filename=None):
    """VOC's XML; objects are ``(name, xmin, ymin, xmax, ymax, difficult, truncated)``, a flag None to leave its tag
    out (as some VOC2012 objects do)."""
    parts = ["<annotation>", "<folder>VOC2007</folder>"]
    if filename:
        parts.append(f"<filename>{filename}</filename>")
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, xmin, ymin, xmax, ymax, difficult, truncated in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose>")
        if truncated is not None:
            parts.append(f"<truncated>{truncated}</truncated>")
        if difficult is not None:
            parts.append(f"<difficult>{difficult}</difficult>")
        parts.append(f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
                     "</bndbox></object>")
    return "".join(parts + ["</annotation>"])


def write_year(folder, images, sets, image_files=True):
    """A VOC year folder: ``images`` ``{name: (width, height, objects) or raw XML text}``, ``sets``
    ``{set: [names]}``; a JPEG per image of its size unless ``image_files`` is false."""
    for d in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(folder, d), exist_ok=True)
    for name, spec in images.items():
        xml = spec if isinstance(spec, str) else annotation_xml(*spec)
        with open(os.path.join(folder, "Annotations", f"{name}.xml"), "w") as f:
            f.write(xml)
        if image_files and not isinstance(spec, str):
            Image.new("RGB", spec[:2], (90, 120, 150)).save(os.path.join(folder, "JPEGImages", f"{name}.jpg"))
    for set_name, names in sets.items():
        with open(os.path.join(folder, "ImageSets", "Main", f"{set_name}.txt"), "w") as f:
            f.write("".join(f"{n}\n" for n in names))
    return folder


def obj(name, xmin, ymin, xmax, ymax, difficult=0, truncated=0):
    return (name, xmin, ymin, xmax, ymax, difficult, truncated)


@pytest.fixture
def devkit(tmp_path):
    """VOCdevkit with VOC2007 (train, val, trainval, test) and VOC2012 (train, val, trainval), a few images each."""
    good = (60, 40, [obj("dog", 1, 1, 30, 20)])
    write_year(tmp_path / "VOCdevkit" / "VOC2007", {n: good for n in ("000001", "000002", "000003", "000004")},
               {"train": ["000001"], "val": ["000002"], "trainval": ["000001", "000002"], "test": ["000003", "000004"],
                "dog_train": ["000001  1"]})
    write_year(tmp_path / "VOCdevkit" / "VOC2012", {n: good for n in ("2008_000001", "2008_000002")},
               {"train": ["2008_000001"], "val": ["2008_000002"], "trainval": ["2008_000001", "2008_000002"]})
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------------------------------------------


def test_annotation_boxes_classes_and_flags(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(annotation_xml(60, 40, [
        obj("aeroplane", 1, 1, 60, 40),                  # the whole image: 1-based inclusive -> 0..W continuous
        obj("tvmonitor", 11, 6, 20, 15, difficult=1),    # 10 x 10 pixels
        obj("dog", 5, 5, 9, 9, truncated=1),
        ("person", 0, 3, 30, 40, None, None),           # a 0-based tool's box (xmin 0): clipped; no flags: 0
    ], filename="a.jpg"))
    ann = parse_annotation(path)
    assert (ann["width"], ann["height"], ann["filename"]) == (60, 40, "a.jpg")
    np.testing.assert_array_equal(ann["boxes"], [[0, 0, 60, 40], [10, 5, 20, 15], [4, 4, 9, 9], [0, 2, 30, 40]])
    assert ann["labels"].tolist() == [1, 20, VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert ann["difficult"].tolist() == [False, True, False, False]
    assert ann["truncated"].tolist() == [False, False, True, False]
    assert ann["clipped"] == 1 and ann["boxes"].dtype == np.float32 and ann["labels"].dtype == np.int64


@pytest.mark.parametrize("xml,message", [
    ("<annotation><size><width>60", "not valid XML"),
    ("<annotation><object/></annotation>", "no <size>"),
    (annotation_xml(60, 40, [obj("dragon", 1, 1, 10, 10)]), "object 0 (dragon) has an unknown class 'dragon'"),
    (annotation_xml(60, 40, [obj("dog", 1, 1, 10, 10), obj("cat", 1, 1, 66, 10)]),
     "object 1 (cat) lies outside the 60x40 image (xmin 1, ymin 1, xmax 66, ymax 10"),
    (annotation_xml(60, 40, [obj("dog", -5, 1, 10, 10)]), "object 0 (dog) lies outside the 60x40 image"),
    (annotation_xml(60, 40, [obj("dog", 20, 1, 10, 10)]), "object 0 (dog) has an empty box"),
    (annotation_xml(60, 40, [obj("dog", 1, 1, "ten", 10)]), "object 0 (dog) has a <xmax> that is not a number"),
    (annotation_xml(60, 40, [obj("dog", 1, 1, 10, 10, difficult="yes")]), "<difficult>yes</difficult>"),
    (annotation_xml(60, 40, [obj("dog", 1, 1, 10, 10)]).replace("<bndbox>", "<bnd>").replace("</bndbox>", "</bnd>"),
     "object 0 (dog) has no <bndbox>"),
    (annotation_xml(0, 40, []), "the image size 0x40 is empty"),
])
def test_bad_annotations_are_errors_naming_the_file(tmp_path, xml, message):
    path = tmp_path / "000007.xml"
    path.write_text(xml)
    with pytest.raises(ValueError) as err:
        parse_annotation(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*nope.xml"):
        parse_annotation(tmp_path / "nope.xml")


BAD_SPLIT = {"000001": (60, 40, [obj("dog", 1, 1, 30, 20)]),
             "000002": "<annotation><size>",                                       # bad XML
             "000003": (60, 40, [obj("dog", 1, 1, 30, 20), obj("dragon", 1, 1, 5, 5)]),   # unknown class
             "000004": (60, 40, [obj("dog", 1, 1, 90, 20)]),                       # box outside
             "000005": (60, 40, [obj("dog", 1, 1, 30, 20)])}


def test_bad_annotations_are_errors_for_evaluation_and_counted_skips_for_training(tmp_path):
    write_year(tmp_path / "VOC2007", BAD_SPLIT, {"val": list(BAD_SPLIT), "train": list(BAD_SPLIT)})
    bad_xml = tmp_path / "VOC2007" / "Annotations" / "000002.xml"
    with pytest.raises(ValueError, match=re.escape(f"{bad_xml}: not valid XML")):
        VOCDetection(tmp_path, "val", train=False)
    with pytest.warns(UserWarning) as record:
        ds = VOCDetection(tmp_path, "train", train=True)
    assert [ds.names[i[0]] for i in ds.images] == ["2007/000001", "2007/000005"]
    assert ds.stats["bad_annotation_files_skipped"] == 3
    message = str(record[0].message)
    assert message.startswith(f"{tmp_path} (2007-train): bad annotation files skipped: 3")
    assert "000002.xml: not valid XML" in message and "'dragon'" in message and "lies outside" in message


def test_missing_image_is_an_error_for_evaluation_and_a_counted_skip_for_training(tmp_path):
    split = {"000001": BAD_SPLIT["000001"], "000005": BAD_SPLIT["000005"]}
    write_year(tmp_path / "VOC2007", split, {"val": list(split), "train": list(split)})
    missing = tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg"
    os.remove(missing)
    ds = VOCDetection(tmp_path, "val", train=False)
    with pytest.raises(OSError, match=re.escape(f"image 20070000000001 ({missing}) cannot be read")):
        ds[0]
    ds = VOCDetection(tmp_path, "train", train=True)
    with pytest.warns(UserWarning, match="skipped for training: .*" + re.escape(str(missing))):
        image, target = ds[0]
    assert target["image_id"] == image_id("2007", "000005") and image.shape == (3, 40, 60)


def test_difficult_objects_are_not_training_targets_unless_kept_and_flagged_for_evaluation(tmp_path):
    images = {"000001": (60, 40, [obj("dog", 1, 1, 30, 20), obj("cat", 31, 1, 60, 20, difficult=1)]),
              "000002": (60, 40, [obj("cat", 1, 1, 30, 20, difficult=1)])}   # only a difficult object
    write_year(tmp_path / "VOC2007", images, {"trainval": list(images), "test": list(images)})
    with pytest.warns(UserWarning, match="difficult ignored: 2, .*images skipped for training: 1"):
        train = VOCDetection(tmp_path, "trainval")
    assert train.train and len(train) == 1
    _, target = train[0]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    np.testing.assert_array_equal(target["boxes"], [[0, 0, 30, 20]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = VOCDetection(tmp_path, "trainval", keep_difficult=True)
        test = VOCDetection(tmp_path, "test", train=False)
    assert len(kept) == 2 and len(kept[0][1]["labels"]) == 2
    assert len(test) == 2 and not test.train  # evaluation keeps the image with only a difficult object
    gt = test.ground_truth()[image_id("2007", "000001")]
    assert gt["difficult"].tolist() == [False, True] and gt["labels"].tolist() == [12, 8]


def test_dataset_interface_and_image_ids(devkit):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped: no warning
        ds = VOCDetection(devkit, "2007-trainval,2012-trainval", train=True, max_images=3)
    assert (ds.num_classes, ds.label_names, len(ds)) == (21, VOC_LABEL_NAMES, 3)
    assert ds.label_to_category_id == {i: i for i in range(1, 21)}
    assert ds.annotation_file == f"{devkit} (2007-trainval,2012-trainval)"
    assert [i[0] for i in ds.images] == [20070000000001, 20070000000002, 20122008000001]
    image, target = ds[2]
    assert image.dtype == np.float32 and image.shape == (3, 40, 60) and 0 <= image.min() <= image.max() <= 1
    assert target["image_id"] == 20122008000001 and target["orig_size"] == (40, 60)
    ds.set_epoch(3)
    assert ds.epoch == 3
    # Names outside VOC's scheme get a 52-bit hash above 2^52 (exact in float64); the same in any process and run.
    ours = image_id("mydata", "IMG_0001")
    assert 2 ** 52 <= ours < 2 ** 53
    code = "from cv.detection.data.voc import image_id; print(image_id('mydata', 'IMG_0001'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED="123")).stdout.split()[-1]
    assert int(other) == ours


# ---------------------------------------------------------------------------------------------------------------
# Layouts and splits.
# ---------------------------------------------------------------------------------------------------------------


def test_layout_detection_and_the_papers_07_plus_12_split(devkit, sample_dataset):
    for path in (devkit, devkit / "VOCdevkit"):
        layout = datasets.detect_layout(path)
        assert layout.format == "voc" and layout.description == \
            f"Pascal VOC layout: VOC2007, VOC2012 under {devkit / 'VOCdevkit'}"
        # The defaults are the paper's: 07+12 trainval for training, VOC2007 test for evaluation.
        assert datasets.default_splits(layout) == ("2007-trainval,2012-trainval", "2007-test")
    one = datasets.detect_layout(devkit / "VOCdevkit" / "VOC2012")
    assert one.description == f"Pascal VOC layout: VOC2012 at {devkit / 'VOCdevkit' / 'VOC2012'}"
    assert datasets.default_splits(one) == ("2012-train", "2012-val")  # never train on what is evaluated
    years = layout.years
    assert parse_split("2007-trainval,2012-trainval", years) == [("2007", "trainval"), ("2012", "trainval")]
    assert parse_split("VOC2007-test", years) == [("2007", "test")]
    assert parse_split("trainval", years) == [("2007", "trainval"), ("2012", "trainval")]  # every year with it
    assert parse_split("test", years) == [("2007", "test")]
    assert datasets.default_splits(layout, val="2012-val") == ("2007-trainval,2012-train", "2012-val")
    coco = datasets.detect_layout(sample_dataset)
    assert coco.format == "coco" and coco.description == f"COCO layout: train2017, val2017 under {sample_dataset}"
    assert datasets.default_splits(coco) == ("train", "val")


@pytest.mark.parametrize("spec,message", [
    ("2010-test", "no year '2010' here (found: 2007, 2012)"),
    ("2012-test", "VOC2012/ImageSets/Main/test.txt does not exist (the sets of 2012: train, trainval, val)"),
    ("2007-trainval,,2007-test", "an empty item"),
    ("minival", "no year has an image set 'minival'"),
])
def test_bad_split_specs_say_what_exists(devkit, spec, message):
    with pytest.raises(ValueError, match=f"split {spec!r}: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_split(spec, voc.find_years(devkit))


def test_opening_splits_and_format_specific_options(devkit, sample_dataset, tmp_path):
    layout = datasets.detect_layout(devkit)
    val = datasets.open_split(layout, "2007-test", False, voc_metric="2010")
    assert isinstance(val, VOCDetection) and len(val) == 2 and val.metric == "2010"
    assert val.evaluator().metric == "2010" and val.evaluator().primary_metric == "mAP"
    with pytest.raises(ValueError, match="--labels coco is for COCO-format data"):
        datasets.open_split(layout, "2007-test", False, labels="coco")
    coco = datasets.detect_layout(sample_dataset)
    assert datasets.open_split(coco, "val", False, max_images=2).evaluator().primary_metric == "AP"
    with pytest.raises(ValueError, match="--keep-difficult and --voc-metric are for Pascal VOC data"):
        datasets.open_split(coco, "val", False, voc_metric="2007")
    with pytest.raises(ValueError, match="split 'test': .* has no annotations/instances_test2017.json"):
        datasets.open_split(coco, "test", False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"--data-path {tmp_path / 'empty'}: neither a COCO layout"):
        datasets.detect_layout(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------------
# The evaluator: hand-computed cases.
# ---------------------------------------------------------------------------------------------------------------

NAMES = ["__background__", "aeroplane", "bicycle", "bird"]  # labels 1, 2, 3
FAR = [300, 300, 310, 310]


def box(x):
    return [x, 0, x + 10, 10]


def gt(*objects):
    """Ground truth of one image from ``(label, box)`` or ``(label, box, difficult)``."""
    return {"boxes": np.array([o[1] for o in objects], dtype=np.float64).reshape(-1, 4),
            "labels": np.array([o[0] for o in objects], dtype=np.int64),
            "difficult": np.array([len(o) > 2 and o[2] for o in objects], dtype=bool)}


def dets(*rows):
    """Detections of one image from ``(label, box, score)``, in the model's order."""
    return {"boxes": np.array([r[1] for r in rows], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([r[0] for r in rows], dtype=np.int64),
            "scores": np.array([r[2] for r in rows], dtype=np.float32)}


def evaluate(ground_truth, detections, metric="2007", batches=None):
    """``(stats, per-class results)`` of a VocEvaluator fed ``detections`` ({image id: dets}) in ``batches``
    (lists of image ids; default one batch in dict order)."""
    evaluator = VocEvaluator(ground_truth, NAMES, metric=metric)
    for batch in batches or [list(detections)]:
        evaluator.update(batch, [detections[i] for i in batch])
    results = evaluator.compute()
    return evaluator.summarize(), results


def test_ap_of_a_ranked_list_by_both_metrics(capsys):
    """Class 1, 4 objects (one never found). Ranked: TP, FP, TP, FP, TP -> recall .25 .25 .5 .5 .75, precision
    1 1/2 2/3 1/2 3/5.
    11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t = .6, .7 -> 3/5; t = .8, .9, 1 -> 0: (3 + 2 + 1.2) / 11
    = 31/55. Area: the envelope is 1 on (0, .25], 2/3 on (.25, .5], 3/5 on (.5, .75], 0 beyond:
    .25 * (1 + 2/3 + 3/5) = 17/30."""
    ground_truth = {1: gt((1, box(0)), (1, box(20))), 2: gt((1, box(0)), (1, box(40)))}
    detections = {1: dets((1, box(0), 0.9), (1, box(20), 0.7), (1, FAR, 0.6)),
                  2: dets((1, FAR, 0.8), (1, box(0), 0.5))}
    stats, results = evaluate(ground_truth, detections)
    assert results[1]["ap_11point"] == pytest.approx(31 / 55) and results[1]["ap_area"] == pytest.approx(17 / 30)
    assert (results[1]["objects"], results[1]["detections"], results[1]["tp"], results[1]["fp"]) == (4, 5, 3, 2)
    assert stats["mAP"] == stats["mAP_11point"] == pytest.approx(31 / 55) and stats["voc_metric"] == "2007"
    assert stats["mAP_area"] == pytest.approx(17 / 30)
    assert stats["class_AP"] == {"aeroplane": pytest.approx(31 / 55), "bicycle": None, "bird": None}
    out = capsys.readouterr().out
    assert "Pascal VOC evaluation: 2 images, 5 detections; AP at IoU >= 0.5, difficult objects ignored" in out
    assert "aeroplane" in out and "0.5636" in out and "0.5667" in out
    assert "mAP (VOC2007 11-point) = 0.5636   (VOC2010+ all-points (area): 0.5667)" in out
    stats, _ = evaluate(ground_truth, detections, metric="2010")
    assert stats["mAP"] == pytest.approx(17 / 30) and stats["class_AP"]["aeroplane"] == pytest.approx(17 / 30)


def test_eleven_point_thresholds_are_exactly_tenths():
    """Recall exactly 3/10 reaches the 0.3 threshold: 4 of the 11 points (0 .. .3) see precision 1 -> 4/11.
    (np.arange(0, 1.1, .1)[3] is 0.30000000000000004 and would give 3/11.)"""
    recall, precision = np.array([0.1, 0.2, 0.3, 0.3]), np.array([1.0, 1.0, 1.0, 0.75])
    assert ap_11_point(recall, precision) == pytest.approx(4 / 11)
    assert ap_area(recall, precision) == pytest.approx(0.3)


@pytest.mark.parametrize("batches", [None, [[2], [1]], [[2, 1]]], ids=["in order", "reversed", "one batch"])
def test_ties_in_score_rank_by_image_id_then_the_models_order(batches):
    """Class 1, one object in each of images 1 and 2. Score 0.5: a hit in image 1 and a miss in image 2; score 0.4:
    the hit in image 2. Image 1 ranks first: TP, FP, TP -> precision 1, 1/2, 2/3 at recall .5, .5, 1.
    11-point: (6 * 1 + 5 * 2/3) / 11 = 28/33; area: .5 * 1 + .5 * 2/3 = 5/6. The other order (FP first) would give
    2/3 for both. However the images arrive (batches, order), the result is the same."""
    ground_truth = {1: gt((1, box(0))), 2: gt((1, box(0)))}
    detections = {1: dets((1, box(0), 0.5)), 2: dets((1, FAR, 0.5), (1, box(0), 0.4))}
    _, results = evaluate(ground_truth, detections, batches=batches)
    assert results[1]["ap_11point"] == pytest.approx(28 / 33) and results[1]["ap_area"] == pytest.approx(5 / 6)
    # Within an image the model's order decides: the miss first -> FP, TP, TP: 2/3 by both metrics.
    detections = {1: dets((1, FAR, 0.5), (1, box(0), 0.5)), 2: dets((1, box(0), 0.4))}
    _, results = evaluate(ground_truth, detections, batches=batches)
    assert results[1]["ap_11point"] == pytest.approx(2 / 3) and results[1]["ap_area"] == pytest.approx(2 / 3)


def test_difficult_objects_are_ignored():
    """Class 1 in one image: a normal object, a difficult one that is found (score 0.9) and a difficult one that is
    missed. The hit on a difficult object is neither TP nor FP, and neither difficult object counts for recall:
    ranked TP (0.8), FP (0.7) -> AP 1. Counting the hit as a FP would give 1/2; counting difficult objects as
    ground truth, recall would stop at 2/3 (AP 8/11 and 2/3)."""
    ground_truth = {1: gt((1, box(0)), (1, box(20), True), (1, box(40), True))}
    detections = {1: dets((1, box(20), 0.9), (1, box(0), 0.8), (1, FAR, 0.7))}
    _, results = evaluate(ground_truth, detections)
    assert results[1]["ap_11point"] == 1.0 and results[1]["ap_area"] == 1.0
    assert (results[1]["objects"], results[1]["difficult"], results[1]["tp"], results[1]["fp"]) == (1, 2, 1, 1)


def test_duplicates_are_false_positives_even_where_another_object_is_free():
    """Objects A = box(0) and B = box(2) (IoU 2/3 with each other). Detections: box(0) at 0.9 takes A; box(0.5)
    at 0.8 overlaps A most (IoU 0.905; B: 0.739) and A is taken: a duplicate, FP, although B is free (the devkit
    matches the best-overlapping object only; COCO's matching would give it B); box(2) at 0.7 takes B.
    TP, FP, TP: 28/33 and 5/6. A second copy of the top detection adds one more FP at the end: unchanged."""
    ground_truth = {1: gt((1, box(0)), (1, box(2)))}
    detections = {1: dets((1, box(0), 0.9), (1, box(0.5), 0.8), (1, box(2), 0.7))}
    _, results = evaluate(ground_truth, detections)
    assert (results[1]["tp"], results[1]["fp"]) == (2, 1)
    assert results[1]["ap_11point"] == pytest.approx(28 / 33) and results[1]["ap_area"] == pytest.approx(5 / 6)


def test_classes_without_ground_truth_or_without_detections():
    """Class 1 perfect (AP 1), class 2 with an object but no detection (AP 0, counted in the mean), class 3 with
    detections but no object anywhere (no AP, left out of the mean): mAP = (1 + 0) / 2."""
    ground_truth = {1: gt((1, box(0)), (2, box(20))), 2: gt()}
    detections = {1: dets((1, box(0), 0.9), (3, box(40), 0.8)), 2: dets((3, box(0), 0.95))}
    stats, results = evaluate(ground_truth, detections)
    assert stats["class_AP"] == {"aeroplane": 1.0, "bicycle": 0.0, "bird": None}
    assert stats["mAP"] == stats["mAP_11point"] == stats["mAP_area"] == 0.5
    assert (results[3]["detections"], results[3]["objects"], results[3]["fp"]) == (2, 0, 2)
    assert results[2]["detections"] == 0 and results[2]["objects"] == 1


def test_nothing_evaluated_and_bad_input():
    evaluator = VocEvaluator({1: gt((1, box(0)))}, NAMES)
    evaluator.update([1], [dets()])  # an evaluated image without detections: its object is missed
    assert evaluator.summarize()["mAP"] == 0.0
    assert VocEvaluator({1: gt()}, NAMES).summarize()["mAP"] == -1.0  # no class has ground truth
    with pytest.raises(ValueError, match="image id 7 is not in the ground truth"):
        evaluator.update([7], [dets()])
    with pytest.raises(ValueError, match="image 1: detection labels must be in 1..3"):
        VocEvaluator({1: gt()}, NAMES).update([1], [dets((4, box(0), 0.5))])
    with pytest.raises(ValueError, match="VOC metric must be one of 2007, 2010"):
        VocEvaluator({}, NAMES, metric="2012")
    evaluator = VocEvaluator({1: gt((1, box(0)))}, NAMES)
    evaluator.update([1, 1], [dets((1, box(0), 0.9)), dets((1, FAR, 0.9))])  # a repeated image counts once
    assert evaluator.duplicates == 1 and evaluator.summarize()["mAP"] == 1.0


def agreement_case():
    """Ground truth and detections of :func:`test_ap50_agrees_with_the_coco_evaluator_where_the_definitions_coincide`
    (also the distributed test's)."""
    ground_truth = {1: gt((1, box(0)), (1, box(50))), 2: gt((1, box(0)), (2, box(100))),
                    3: gt((1, box(0)), (2, box(100)))}
    detections = {1: dets((1, box(0), 0.9), (1, box(50), 0.85), (2, FAR, 0.7)),
                  2: dets((1, box(0), 0.8), (2, box(106), 0.65), (2, box(100), 0.6)),   # box(106): IoU 0.25
                  3: dets((1, FAR, 0.95), (1, box(0), 0.75), (2, box(100), 0.55))}
    return ground_truth, detections


def test_ap50_agrees_with_the_coco_evaluator_where_the_definitions_coincide(tmp_path):
    """VOC's AP (either) and COCO's AP50 are the same number when the interpolated precision is constant over recall
    0..1 and both mark the same detections true: then the 11-point mean, the area and COCO's 101-point mean all
    equal that constant. Here recall reaches 1 for each class and the last hit has the best precision (so the
    envelope is flat): class 1 ranks FP, TP, TP, TP, TP (4 objects; precision at full recall 4/5), class 2 FP, FP,
    TP, TP (2 objects; 2/4). The marks agree because no detection overlaps two objects, none repeats a found one,
    nothing is difficult or crowd, no IoU is near 0.5, scores are distinct and there are under 100 per image.
    mAP = AP50 = (0.8 + 0.5) / 2 = 0.65."""
    from cv.detection.evaluation.coco import CocoEvaluator

    ground_truth, detections = agreement_case()
    voc07, _ = evaluate(ground_truth, detections)
    assert voc07["class_AP"] == {"aeroplane": pytest.approx(0.8), "bicycle": pytest.approx(0.5), "bird": None}
    assert voc07["mAP_11point"] == pytest.approx(0.65) and voc07["mAP_area"] == pytest.approx(0.65)

    images, annotations = [], []
    for image, g in ground_truth.items():
        images.append({"id": image, "width": 400, "height": 400, "file_name": f"{image}.jpg"})
        for (x1, y1, x2, y2), label in zip(g["boxes"].tolist(), g["labels"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "aeroplane"}, {"id": 2, "name": "bicycle"}]}
    evaluator = CocoEvaluator(coco, {1: 1, 2: 2})
    evaluator.update(list(detections), list(detections.values()))
    assert evaluator.summarize()["AP50"] == pytest.approx(0.65, abs=1e-12)


DISTRIBUTED_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests_dir!r})
import oneflow as flow
from test_voc import NAMES, agreement_case
from cv.detection.evaluation.voc import VocEvaluator

rank = flow.env.get_rank()
ground_truth, detections = agreement_case()
ids = list(detections)
mine = (ids + ids[:1])[rank::2]  # like a distributed sampler: every other image, the last batch padded
evaluator = VocEvaluator(ground_truth, NAMES)
evaluator.update(mine, [detections[i] for i in mine])
evaluator.gather()
stats = evaluator.summarize({out!r} if rank == 0 else None)
with open(os.path.join(os.path.dirname({out!r}), f"stats{{rank}}.json"), "w") as f:
    json.dump({{"stats": stats, "images": sorted(evaluator.image_ids), "duplicates": evaluator.duplicates}}, f)
"""


@pytest.mark.slow
def test_gather_across_two_processes_gives_the_single_process_numbers(tmp_path):
    ground_truth, detections = agreement_case()
    single, _ = evaluate(ground_truth, detections)
    script = tmp_path / "voc_dist.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT.format(
        tests_dir=os.path.dirname(os.path.abspath(__file__)), out=str(tmp_path / "detections.json"))))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [repo, str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    run([sys.executable, "-m", "cv.detection.engine.launch", "voc_dist"], tmp_path, env=env, timeout=300)
    rank0, rank1 = (json.loads((tmp_path / f"stats{r}.json").read_text()) for r in (0, 1))
    assert rank0["stats"] == single and rank1["stats"] is None  # the same arithmetic: exactly equal
    assert rank0["images"] == [1, 2, 3] and rank0["duplicates"] == 1  # image 1 came from both ranks
    written = json.loads((tmp_path / "detections.json").read_text())
    assert len(written) == 9 and written[0] == {"image_id": 1, "image": None, "label": 1, "name": "aeroplane",
                                                "score": 0.9, "box": [0.0, 0.0, 10.0, 10.0]}


# ---------------------------------------------------------------------------------------------------------------
# The VOC sample dataset.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc_sample(tmp_path_factory):
    from cv.detection.data.sample import make_voc_sample_dataset

    root = tmp_path_factory.mktemp("sample_voc")
    summary = make_voc_sample_dataset(root, seed=0, num_train=6, num_val=3, num_test=4)
    return root, summary


def test_voc_sample_layout_classes_and_difficult_objects(voc_sample, tmp_path):
    from cv.detection.data.sample import VOC_SHAPE_CLASSES

    root, summary = voc_sample
    folder = root / "VOCdevkit" / "VOC2007"
    lists = {s: (folder / "ImageSets" / "Main" / f"{s}.txt").read_text().split()
             for s in ("train", "val", "trainval", "test")}
    assert lists["trainval"] == lists["train"] + lists["val"] and lists["test"] == ["000010", "000011", "000012",
                                                                                      "000013"]
    # The summary counts what the files say; difficult objects are exactly the small ones, and there are some.
    for set_name, count in (("train", 6), ("val", 3), ("test", 4)):
        anns = [parse_annotation(folder / "Annotations" / f"{n}.xml") for n in lists[set_name]]
        sides = np.concatenate([a["boxes"][:, 2:] - a["boxes"][:, :2] for a in anns]).max(axis=1)
        difficult = np.concatenate([a["difficult"] for a in anns])
        assert summary["splits"][set_name] == {"images": count, "objects": len(sides),
                                               "difficult": int(difficult.sum())}
        assert 0 < difficult.sum() < len(difficult)
        assert (sides[difficult] <= 21).all() and (sides[~difficult] >= 20).all()
    layout = datasets.detect_layout(root)
    assert layout.description == f"Pascal VOC layout: VOC2007 under {root / 'VOCdevkit'}"
    assert datasets.default_splits(layout) == ("2007-trainval", "2007-test")
    test = VOCDetection(root, "2007-test", train=False)
    labels = np.concatenate([g["labels"] for g in test.ground_truth().values()])
    assert {VOC_LABEL_NAMES[i] for i in labels} <= set(VOC_SHAPE_CLASSES)
    difficult = sum(int(g["difficult"].sum()) for g in test.ground_truth().values())
    assert difficult == summary["splits"]["test"]["difficult"]
    # The pictures are the plain sample's: image 1 is the COCO sample's train2017 image 1, byte for byte, and its
    # first box covers that one's pixels.
    from cv.detection.data.sample import make_sample_dataset

    make_sample_dataset(tmp_path, seed=0, num_train=1, num_val=0)
    coco_image = tmp_path / "train2017" / "000000000001.jpg"
    assert (folder / "JPEGImages" / "000001.jpg").read_bytes() == coco_image.read_bytes()
    annotations = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())["annotations"]
    x, y, w, h = annotations[0]["bbox"]
    ann = parse_annotation(folder / "Annotations" / "000001.xml")
    np.testing.assert_array_equal(ann["boxes"][0], [np.floor(x), np.floor(y), np.ceil(x + w), np.ceil(y + h)])


def test_voc_sample_is_deterministic_and_the_cli_writes_it(tmp_path, voc_sample):
    root, _ = voc_sample
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                          "make_sample_dataset.py")
    out = run([sys.executable, script, "--format", "voc", "--output", tmp_path, "--num-train", "6", "--num-val", "3",
               "--num-test", "4"], tmp_path).stdout
    assert '"format": "voc"' in out and last_line(out).startswith("wrote 13 images in ")
    for sub in ("Annotations/000007.xml", "JPEGImages/000013.jpg", "ImageSets/Main/trainval.txt"):
        a, b = (p / "VOCdevkit" / "VOC2007" / sub for p in (root, tmp_path))
        assert a.read_bytes() == b.read_bytes(), sub
    bad = run([sys.executable, script, "--format", "voc", "--coco-categories", "--output", tmp_path], tmp_path,
              expect=2)
    assert "--coco-categories is a variant of the COCO format" in bad.stderr


def test_infer_eval_flag_and_its_coco_eval_alias():
    from cv.detection.ssd300_vgg16 import infer

    parser = infer.get_args_parser()
    assert parser.parse_args(["--eval"]).eval and parser.parse_args(["--coco-eval"]).eval
    assert parser.parse_args(["--eval", "--voc-metric", "2010", "--val-split", "2007-test"]).voc_metric == "2010"


# ---------------------------------------------------------------------------------------------------------------
# The programs end to end on the VOC sample (SSD300 on CPU: 2 images).
# ---------------------------------------------------------------------------------------------------------------


def devkit_aps(root, results_file, num_images, metric):
    """Per class name the AP of the written detections (None for a class without objects), recomputed from the
    results file and the annotation XML alone as the VOC devkit's VOCevaldet.m does, for the first ``num_images``
    of VOC2007's test split; ``metric`` "2007" (11-point) or "2010" (area). Boxes in the devkit's 1-based inclusive
    pixels with its +1 arithmetic: a detection's continuous [x1, y1, x2, y2] is [x1 + 1, y1 + 1, x2, y2] there."""
    import xml.etree.ElementTree as ET

    year = root / "VOCdevkit" / "VOC2007"
    names = (year / "ImageSets" / "Main" / "test.txt").read_text().split()[:num_images]
    truth, objects = {}, dict.fromkeys(VOC_CLASSES, 0)  # (image, class) -> [[box, difficult, taken], ...]
    for name in names:
        for obj in ET.parse(year / "Annotations" / f"{name}.xml").getroot().iter("object"):
            cls, difficult = obj.find("name").text.strip(), obj.findtext("difficult", "0").strip() == "1"
            box = [float(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
            truth.setdefault((name, cls), []).append([box, difficult, False])
            objects[cls] += not difficult
    detections = json.loads(results_file.read_text())
    assert {d["image"] for d in detections} <= {f"2007/{name}" for name in names}
    aps = {}
    for cls in VOC_CLASSES:
        marks = []  # 1 true, 0 false positive, in rank order; detections of difficult objects count as neither
        # sorted() is stable: ties stay in file order (image, then the model's order), as MATLAB's sort.
        for d in sorted((d for d in detections if d["name"] == cls), key=lambda d: -d["score"]):
            x1, y1, x2, y2 = d["box"]
            b = (x1 + 1, y1 + 1, x2, y2)
            best, owner = -np.inf, None
            for g in truth.get((d["image"].split("/")[1], cls), []):
                (gx1, gy1, gx2, gy2), _, _ = g
                iw, ih = min(b[2], gx2) - max(b[0], gx1) + 1, min(b[3], gy2) - max(b[1], gy1) + 1
                if iw > 0 and ih > 0:
                    union = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1) - iw * ih
                    if iw * ih / union > best:  # the first box on a tie
                        best, owner = iw * ih / union, g
            if best >= 0.5 and owner[1]:
                continue
            marks.append(int(best >= 0.5 and not owner[2]))
            if marks[-1]:
                owner[2] = True
        if objects[cls] == 0:
            aps[cls] = None
            continue
        tp = np.cumsum(marks)
        recall, precision = tp / objects[cls], tp / np.arange(1, len(marks) + 1)
        if metric == "2007":
            aps[cls] = sum(max(precision[recall >= k / 10], default=0) for k in range(11)) / 11
        else:  # VOCap: the area under the precision made monotone from the right
            mrec, mpre = np.r_[0, recall, 1], np.r_[0, precision, 0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            aps[cls] = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return aps


def mean_ap(aps):
    return np.mean([ap for ap in aps.values() if ap is not None])


def test_the_devkit_recomputation_agrees_where_the_aps_say_something(voc_sample, tmp_path):
    """:func:`devkit_aps`, the reference of the end-to-end tests below (whose one-step models find next to
    nothing), on detections whose APs lie well inside (0, 1): the sample's test objects, difficult ones included,
    jittered, some missed, with false positives, written as the evaluator writes them."""
    root, _ = voc_sample
    ds = VOCDetection(root, "2007-test", train=False)
    rng = np.random.default_rng(0)
    ids, detections = [], []
    for number, truth in ds.ground_truth().items():
        boxes, labels = truth["boxes"], truth["labels"]
        keep = rng.random(len(boxes)) < 0.8
        found = boxes[keep] + rng.normal(0, 0.1, (int(keep.sum()), 4)) * np.tile(boxes[keep, 2:] - boxes[keep, :2], 2)
        corner = rng.uniform(0, 200, (3, 2))
        ids.append(number)
        detections.append({"boxes": np.concatenate([found, np.c_[corner, corner + rng.uniform(20, 80, (3, 2))]]),
                           "labels": np.r_[labels[keep], rng.choice(labels, 3)],
                           "scores": rng.uniform(0.05, 1, int(keep.sum()) + 3)})
    evaluator = ds.evaluator()
    evaluator.update(ids, detections)
    stats = evaluator.summarize()  # without the pictures (seconds of matplotlib); the results file by hand:
    (tmp_path / "detections.json").write_text(json.dumps(evaluator.results()))
    aps, areas = (devkit_aps(root, tmp_path / "detections.json", len(ds), metric) for metric in ("2007", "2010"))
    assert 0.1 < mean_ap(aps) < 0.9 and 0.1 < mean_ap(areas) < 0.9 and sum(ap is not None for ap in aps.values()) >= 3
    assert stats["class_AP"] == pytest.approx(aps, abs=1e-12) and stats["mAP"] == pytest.approx(mean_ap(aps))
    assert [r["ap_area"] for r in evaluator.compute().values()] == pytest.approx(list(areas.values()), abs=1e-12)
    assert stats["mAP_area"] == pytest.approx(mean_ap(areas))


@pytest.fixture(scope="module")
def voc_trained(voc_sample, tmp_path_factory):
    """train.sh on the VOC sample: 1 epoch of one step on 2 images, evaluated on 2 test images."""
    root, _ = voc_sample
    out = tmp_path_factory.mktemp("voc_train")
    res = run(["bash", TRAIN_SH, *quick_args(root, out, "--train-subset", "2", "--val-subset", "2", "--batch-size",
                                             "2", "--epochs", "1")], out)
    return root, out, res.stdout


@pytest.mark.slow
def test_train_sh_on_voc_evaluates_and_records_the_map(voc_trained):
    from cv.detection.engine import checkpoint as ckpt
    from cv.detection.engine.trainer import read_metrics

    root, out, stdout = voc_trained
    assert stdout.splitlines()[0] == (f"Pascal VOC layout: VOC2007 under {root / 'VOCdevkit'}; training on "
                                      "2007-trainval, evaluating on 2007-test")
    assert "20 classes" in stdout and "Pascal VOC evaluation: 2 images" in stdout
    assert "mAP (VOC2007 11-point) = " in stdout and "aeroplane" in stdout
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "eval"]
    assert len(evals) == 1 and evals[0]["primary"] == "mAP" and evals[0]["voc_metric"] == "2007"
    # The recorded APs are the devkit's, recomputed from the written detections and the annotation files.
    aps = devkit_aps(root, out / "detections_epoch0000.json", 2, "2007")
    assert evals[0]["class_AP"] == pytest.approx(aps, abs=1e-12) and evals[0]["mAP"] == pytest.approx(mean_ap(aps))
    payload = ckpt.load(out / "checkpoint_epoch0000")
    meta = payload["meta"]
    assert meta["num_classes"] == 21 and meta["label_names"] == VOC_LABEL_NAMES
    assert meta["primary_metric"] == "mAP" and meta["eval_split"] == "2007-test"
    assert meta["stats"]["mAP"] == evals[0]["mAP"] and payload["args"]["train_split"] == "2007-trainval"
    index = ckpt.read_index(out)
    assert index["best"] == "checkpoint_epoch0000" and index["best_ap"] == evals[0]["mAP"]
    assert f"best checkpoint: {out / 'checkpoint_epoch0000'} (mAP " in stdout
    results = json.loads((out / "detections_epoch0000.json").read_text())
    assert results and set(results[0]) == {"image_id", "image", "label", "name", "score", "box"}
    assert results[0]["image"].startswith("2007/") and (out / "training.png").exists()


@pytest.mark.slow
def test_test_only_on_voc_with_the_area_metric(voc_trained, tmp_path):
    root, out, _ = voc_trained
    res = run(["bash", TRAIN_SH, *quick_args(root, tmp_path, "--val-subset", "2", "--test-only", "--voc-metric",
                                             "2010", "--weights", out / "checkpoint_epoch0000")], tmp_path)
    assert res.stdout.splitlines()[0].endswith("; evaluating on 2007-test")
    assert "mAP (VOC2010+ all-points (area)) = " in res.stdout and "epoch 0 [" not in res.stdout
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["test_only"] and record["voc_metric"] == "2010" and record["mAP"] == record["mAP_area"]
    aps = devkit_aps(root, tmp_path / "detections_test.json", 2, "2010")
    assert record["class_AP"] == pytest.approx(aps, abs=1e-12) and record["mAP"] == pytest.approx(mean_ap(aps))
    assert record["mAP_11point"] == pytest.approx(mean_ap(devkit_aps(root, tmp_path / "detections_test.json", 2,
                                                                     "2007")))


@pytest.mark.slow
def test_infer_sh_eval_mode_on_voc(voc_trained, tmp_path):
    root, out, _ = voc_trained
    res = run(["bash", INFER_SH, "--weights", out / "checkpoint_epoch0000", "--eval", "--data-path", root,
               "--max-images", "2", "--workers", "0", "--output-dir", tmp_path], tmp_path)
    assert f"Pascal VOC layout: VOC2007 under {root / 'VOCdevkit'}; evaluating on 2007-test" in res.stdout
    assert "evaluating on 2 images" in res.stdout and "Pascal VOC evaluation: 2 images" in res.stdout
    assert json.loads((tmp_path / "detections_val.json").read_text())
    aps = devkit_aps(root, tmp_path / "detections_val.json", 2, "2007")
    assert f"mAP (VOC2007 11-point) = {mean_ap(aps):.4f}" in res.stdout
    report = json.loads((tmp_path / "detections_val_report.json").read_text())  # beside the pictures
    assert report["names"] == list(VOC_CLASSES) and len(report["confusion"]["counts"]) == len(VOC_CLASSES) + 1
    assert (tmp_path / "detections_val_pr.png").exists() and (tmp_path / "detections_val_confusion.png").exists()


@pytest.mark.slow
def test_publish_card_names_the_voc_metric(voc_trained, tmp_path):
    from cv.detection.ssd300_vgg16.publish import publish

    _, out, _ = voc_trained
    card = publish(str(out / "checkpoint_epoch0000"), str(tmp_path))
    ev = card["evaluation"]
    assert ev["metric"].startswith("Pascal VOC box mAP at IoU 0.5, VOC2007 11-point AP, difficult objects ignored")
    assert ev["headline"]["name"] == "VOC mAP (VOC2007 11-point)" and ev["box_ap"] is None
    assert ev["split"] == "2007-test" and list(ev["class_ap"]) == list(VOC_CLASSES)
    assert card["label_names"] == VOC_LABEL_NAMES and card["num_classes"] == 21
    md = (tmp_path / "ssd300_vgg16.md").read_text()
    assert f"| VOC mAP (VOC2007 11-point) | {ev['headline']['value']} (" in md
    assert "Pascal VOC box mAP at IoU 0.5" in md and "the metric of the SSD paper's VOC2007 test results" in md
    assert "| **mAP (VOC2007 11-point)** |" in md and "| AP aeroplane |" in md and "COCO" not in md.split("## Use")[0]
