"""YOLO-format data (:mod:`cv.detection.data.yolo`): data.yaml in both of ultralytics' ``names`` forms, the folder
form, label files and their errors, the YOLO sample, and its evaluation by COCO's protocol."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cv.detection.data import layouts as datasets
from cv.detection.data.coco import CocoDetection
from cv.detection.data.sample import make_yolo_sample_dataset
from cv.detection.data.yolo import YoloDetection, image_size, label_path
from tests.conftest import INFER_SH, REPO, TRAIN_SH, run


def image(path, width=40, height=20, exif_orientation=None):
    """A grey image file of ``width`` x ``height`` stored pixels (format by extension), with an EXIF orientation."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.new("RGB", (width, height), (128, 128, 128))
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    img.save(path, exif=exif) if exif_orientation else img.save(path)
    return path


def labels(path, *lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def tiny(tmp_path):
    """A YOLO dataset in ultralytics' layout: 2 train images (one without a label file), 1 val image; classes
    cat, dog; no data.yaml yet."""
    root = tmp_path / "tiny"
    image(root / "images" / "train" / "a.jpg")
    image(root / "images" / "train" / "b.png", 30, 30)
    image(root / "images" / "val" / "c.jpg")
    labels(root / "labels" / "train" / "a.txt", "0 0.5 0.5 0.5 0.5", "1 0.25 0.25 0.5 0.5")
    labels(root / "labels" / "val" / "c.txt", "1 0.5 0.5 1 1")
    return root


def write_yaml(path, text):
    path.write_text(text)
    return path


# --- data.yaml and the folder form ---------------------------------------------------------------------------


@pytest.mark.parametrize("names", ["[cat, dog]", "{0: cat, 1: dog}", "\n  1: dog\n  0: cat"])
def test_data_yaml_names_as_list_and_as_map(tiny, names):
    layout = datasets.detect_layout(write_yaml(tiny / "data.yaml", f"train: images/train\nval: images/val\n"
                                                                    f"names: {names}\n"))
    assert layout.format == "yolo" and layout.names == ["cat", "dog"] and layout.root == str(tiny)
    assert layout.description.startswith(f"YOLO dataset YAML: {tiny / 'data.yaml'} (2 classes; splits train, val), "
                                         "evaluated by COCO's protocol")
    val = datasets.open_split(layout, "val", False)
    assert val.label_names == ["__background__", "cat", "dog"] and val.label_to_category_id == {1: 1, 2: 2}
    [record] = val.images
    assert (record.path, record.width, record.height) == (str(tiny / "images" / "val" / "c.jpg"), 40, 20)
    np.testing.assert_array_equal(record.boxes, [[0, 0, 40, 20]])
    np.testing.assert_array_equal(record.labels, [2])  # class 1 (dog) + 1


def test_path_key_relative_paths_and_roboflows_parent_quirk(tiny, tmp_path):
    # `path` absolute; train/val relative to it; the YAML elsewhere.
    elsewhere = write_yaml(tmp_path / "elsewhere.yaml", f"path: {tiny}\ntrain: images/train\nval: images/val\n"
                                                        "names: [cat, dog]\n")
    assert datasets.detect_layout(elsewhere).splits == {"train": [str(tiny / "images" / "train")],
                                                        "val": [str(tiny / "images" / "val")]}
    # `path` relative: from the YAML's folder.
    relative = write_yaml(tmp_path / "relative.yaml", "path: tiny\ntrain: images/train\nnames: [cat, dog]\nnc: 2\n")
    assert datasets.detect_layout(relative).root == str(tiny)
    # Roboflow: ../train/images beside data.yaml; the folder holding data.yaml is a --data-path too.
    os.rename(tiny / "images", tiny / "split")
    (tiny / "train").mkdir()
    os.rename(tiny / "split" / "train", tiny / "train" / "images")
    os.rename(tiny / "labels" / "train", tiny / "train" / "labels")
    write_yaml(tiny / "data.yaml", "train: ../train/images\nval: ../train/images\nnames: [cat, dog]\n")
    layout = datasets.detect_layout(tiny)
    assert layout.splits["train"] == [str(tiny / "train" / "images")]
    train = datasets.open_split(layout, "train", True)
    assert [os.path.basename(r.path) for r in train.images] == ["a.jpg"]  # b.png has no objects: not trained on


def test_a_list_of_images_and_several_folders_as_a_split(tiny):
    (tiny / "train.txt").write_text("./images/train/a.jpg\nimages/val/c.jpg\n")  # both from the list's folder
    layout = datasets.detect_layout(write_yaml(tiny / "data.yaml", "train: train.txt\n"
                                               "val: [images/val, images/train]\nnames: [cat, dog]\n"))
    assert [os.path.basename(r.path) for r in datasets.open_split(layout, "train", True).images] == ["a.jpg", "c.jpg"]
    val = datasets.open_split(layout, "val", False)
    assert [os.path.basename(r.path) for r in val.images] == ["c.jpg", "a.jpg", "b.png"]  # sources in order
    # The same file has the same id in every split (the overlap warning relies on it).
    assert val.images[0].image_id == datasets.open_split(layout, "train", True).images[1].image_id


def test_folder_form_with_classes_txt(tiny):
    (tiny / "classes.txt").write_text("cat\ndog\n")
    layout = datasets.detect_layout(tiny)
    assert layout.format == "yolo" and layout.names == ["cat", "dog"] and layout.file == str(tiny / "classes.txt")
    assert layout.description.startswith(f"YOLO layout: images/train, images/val under {tiny} (2 classes from "
                                         "classes.txt)")
    assert len(datasets.open_split(layout, "val", False)) == 1
    # Label Studio's export: images/ and labels/ without split folders is one split, train.
    flat = tiny.parent / "flat"
    image(flat / "images" / "x.jpg")
    labels(flat / "labels" / "x.txt", "0 0.5 0.5 0.2 0.2")
    (flat / "classes.txt").write_text("cat\n")
    assert datasets.default_splits(datasets.detect_layout(flat), carve=True) == ("train", None)
    # Without classes.txt: as many classes as the highest class id says, named by number.
    (tiny / "classes.txt").unlink()
    layout = datasets.detect_layout(tiny)
    assert layout.names == ["class0", "class1"] and layout.description.startswith(
        f"YOLO layout: images/train, images/val under {tiny} (2 classes named class0..class1: no data.yaml or "
        "classes.txt names them)")
    os.remove(flat / "labels" / "x.txt")
    os.remove(flat / "classes.txt")
    with pytest.raises(ValueError, match=f"^{flat / 'labels'}: the dataset has no classes$"):
        datasets.detect_layout(flat)


def test_images_without_label_files_are_images_without_objects(tiny):
    layout = datasets.detect_layout(write_yaml(tiny / "data.yaml", "train: images/train\nnames: [cat, dog]\n"))
    with pytest.warns(UserWarning, match="images without label file: 1, .*images without boxes: 1"):
        evaluated = datasets.open_split(layout, "train", False)
    assert [(os.path.basename(r.path), len(r.boxes)) for r in evaluated.images] == [("a.jpg", 2), ("b.png", 0)]
    with pytest.warns(UserWarning, match="images skipped for training: 1"):
        trained = datasets.open_split(layout, "train", True)
    assert [os.path.basename(r.path) for r in trained.images] == ["a.jpg"]
    np.testing.assert_allclose(trained.images[0].boxes, [[10, 5, 30, 15], [0, 0, 20, 10]])
    np.testing.assert_array_equal(trained.images[0].labels, [1, 2])


def test_label_path_is_ultralytics_rule():
    assert label_path("/d/images/train/x.y.jpg") == "/d/labels/train/x.y.txt"
    assert label_path("/images/d/images/train/a.png") == "/images/d/labels/train/a.txt"  # the last one
    assert label_path("/d/pictures/a.jpg") == "/d/pictures/a.txt"  # no images component: beside it


def test_image_size_follows_exif_orientation_and_samples_are_turned(tmp_path):
    path = image(tmp_path / "images" / "r.jpg", 40, 20, exif_orientation=6)  # stored 40x20, shown 20x40
    assert image_size(str(path)) == (20, 40)
    labels(tmp_path / "labels" / "r.txt", "0 0.5 0.25 1 0.5")  # the top half of the picture as shown
    ds = YoloDetection(tmp_path / "images", ["thing"], split="val")
    img, target = ds[0]
    assert img.shape == (3, 40, 20) and target["orig_size"] == (40, 20)
    np.testing.assert_allclose(target["boxes"], [[0, 0, 20, 20]])


# --- bad data --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line,message", [
    ("0 0.5 0.5 0.2", "4 fields, expected 5 (class cx cy w h)"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3", "7 fields, expected 5 (class cx cy w h); polygon (segmentation) labels are not "
                                  "read"),
    ("2 0.5 0.5 0.2 0.2", "class 2 is not one of the 2 classes (0..1)"),
    ("-1 0.5 0.5 0.2 0.2", "class -1 is not one of the 2 classes (0..1)"),
    ("0.5 0.5 0.5 0.2 0.2", "class 0.5 is not one of the 2 classes (0..1)"),
    ("0 nan 0.5 0.2 0.2", "a non-finite value in '0 nan 0.5 0.2 0.2'"),
    ("0 0.5 inf 0.2 0.2", "a non-finite value in '0 0.5 inf 0.2 0.2'"),
    ("0 0.5 0.5 -0.2 0.2", "negative width or height in '0 0.5 0.5 -0.2 0.2'"),
    ("0 0.95 0.5 0.2 0.2", "the box 0.95 0.5 0.2 0.2 leaves the image (normalised coordinates are 0-1; at most 1 px "
                           "beyond the 40x20 image is clipped)"),
    ("0 x 0.5 0.2 0.2", "not a number in '0 x 0.5 0.2 0.2'"),
])
def test_bad_lines_are_errors_for_evaluation_and_counted_skips_for_training(tiny, line, message):
    labels(tiny / "labels" / "val" / "c.txt", "1 0.5 0.5 1 1", line)
    layout = datasets.detect_layout(write_yaml(tiny / "data.yaml", "train: images/val\nval: images/val\n"
                                                                    "names: [cat, dog]\n"))
    error = f"{tiny / 'labels' / 'val' / 'c.txt'}, line 2: {message}"
    with pytest.raises(ValueError) as e:
        datasets.open_split(layout, "val", False)
    assert str(e.value) == error
    (tiny / "images" / "val" / "d.jpg").write_bytes((tiny / "images" / "val" / "c.jpg").read_bytes())
    labels(tiny / "labels" / "val" / "d.txt", "0 0.5 0.5 0.5 0.5")
    with pytest.warns(UserWarning, match=re.escape(f"bad files skipped: 1; {error}")):
        train = datasets.open_split(layout, "train", True)
    assert [os.path.basename(r.path) for r in train.images] == ["d.jpg"] and train.stats["bad_files_skipped"] == 1


def test_tolerated_border_duplicates_and_empty_boxes(tiny):
    # 0.5 px beyond the 40 px wide image is clipped; a repeated line is kept once; an empty box is dropped.
    labels(tiny / "labels" / "val" / "c.txt", "0 0.8875 0.5 0.25 0.5", "0 0.8875 0.5 0.25 0.5", "1 0.5 0.5 0 0.5")
    with pytest.warns(UserWarning, match="boxes clipped: 1, degenerate dropped: 1, duplicate boxes dropped: 1"):
        ds = YoloDetection(tiny / "images" / "val", ["cat", "dog"], split="val")
    np.testing.assert_allclose(ds.images[0].boxes, [[30.5, 5, 40, 15]])


@pytest.mark.parametrize("names,message", [
    ("[cat, dog, cat]", "the class name 'cat' is given twice"),
    ("[]", "the dataset has no classes"),
    ("{0: cat, 2: dog}", r"the class ids of 'names' must be 0\.\.1"),
    ("cat", "'names' must be a list of class names or a map"),
    ("[" + ", ".join(f"c{i}" for i in range(5001)) + "]", "5001 classes, more than 5000"),
], ids=["twice", "none", "ids with a gap", "a string", "5001"])
def test_bad_class_names_are_one_line_naming_the_file(tiny, names, message):
    path = write_yaml(tiny / "data.yaml", f"train: images/train\nnames: {names}\n")
    with pytest.raises(ValueError, match=f"^{path}: {message}") as e:
        datasets.detect_layout(path)
    assert "\n" not in str(e.value)
    (tiny / "classes.txt").write_text("cat\ndog\ncat\n")
    os.remove(path)
    with pytest.raises(ValueError, match=f"^{tiny / 'classes.txt'}: the class name 'cat' is given twice"):
        datasets.detect_layout(tiny)


def test_missing_splits_name_the_key_and_the_path(tiny):
    path = write_yaml(tiny / "data.yaml", "train: images/train\ntest: images/nope\nnames: [cat, dog]\n")
    layout = datasets.detect_layout(path)
    with pytest.raises(ValueError, match=f"^{path}: 'test' names {tiny / 'images' / 'nope'}, which does not exist"):
        datasets.open_split(layout, "test", False)
    with pytest.raises(ValueError, match=f"split 'val': {path} has no 'val' .*--val-fraction F holds out a part"):
        datasets.open_split(layout, "val", False)
    with pytest.raises(ValueError, match="--labels coco is for COCO-format data; a YOLO dataset's labels are its "
                                         "names"):
        datasets.open_split(layout, "train", True, labels="coco")


# --- the YOLO sample and its evaluation ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolo_sample(tmp_path_factory):
    """The YOLO sample with the val split of conftest's ``sample_dataset`` (12 images; train images are only 8)."""
    root = tmp_path_factory.mktemp("sample_yolo")
    make_yolo_sample_dataset(root, seed=0, num_train=8, num_val=12)
    return root


def test_the_yolo_sample_is_the_coco_sample_converted(yolo_sample, sample_dataset):
    assert sorted(os.listdir(yolo_sample)) == ["data.yaml", "images", "labels"]
    layout = datasets.detect_layout(yolo_sample / "data.yaml")
    assert layout.names == ["circle", "square", "triangle", "ring", "cross", "star"]
    yolo_val = datasets.open_split(layout, "val", False)
    coco_val = CocoDetection(sample_dataset, "val")
    assert yolo_val.label_names == coco_val.label_names and len(yolo_val) == len(coco_val) == 12
    for y, c in zip(yolo_val.images, coco_val.images):
        assert os.path.basename(y.path) == os.path.basename(c.path)
        assert open(y.path, "rb").read() == open(c.path, "rb").read()
        np.testing.assert_array_equal(y.labels, c.labels)
        np.testing.assert_allclose(y.boxes, c.boxes, atol=2e-3)  # 6 decimals of a normalised coordinate


def detections_for(dataset, seed=0):
    """Per image, detections near its boxes (jittered, some with another label) and a few at random, scored."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in dataset.images:
        boxes = r.boxes + rng.normal(0, 3, r.boxes.shape)
        noise = rng.uniform(0, 1, (3, 4)) * [r.width, r.height, r.width, r.height]
        noise = np.concatenate([noise[:, :2], noise[:, :2] + 20], axis=1)
        labels = np.where(rng.uniform(size=len(r.labels)) < 0.2, 1 + (r.labels % 6), r.labels)
        out[os.path.basename(r.path)] = {"boxes": np.concatenate([boxes, noise]).astype(np.float32),
                                         "labels": np.concatenate([labels, rng.integers(1, 7, 3)]),
                                         "scores": rng.uniform(0.05, 1, len(labels) + 3).astype(np.float32)}
    return out


def stats(dataset, evaluator, detections):
    """COCO's twelve numbers (the per-class table is compared by tests/test_coco_eval.py)."""
    from cv.detection.evaluation.coco import STAT_NAMES

    for r in dataset.images:
        evaluator.update([r.image_id], [detections[os.path.basename(r.path)]])
    summary = evaluator.summarize()
    return {k: summary[k] for k in STAT_NAMES}


def test_converted_ground_truth_scores_what_the_coco_sample_scores(yolo_sample, sample_dataset):
    from cv.detection.evaluation.coco import CocoEvaluator

    yolo_val = datasets.open_split(datasets.detect_layout(yolo_sample / "data.yaml"), "val", False)
    coco_val = CocoDetection(sample_dataset, "val")
    detections = detections_for(coco_val)
    ours, theirs = stats(yolo_val, yolo_val.evaluator(), detections), \
        stats(coco_val, coco_val.evaluator(), detections)
    assert 0.2 < theirs["AP"] < 0.9  # neither trivial nor hopeless: the comparison means something
    # The area ranges differ by construction (the sample's areas are pixel counts, YOLO's the boxes'): the
    # all-area numbers must be equal.
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    # With the sample's areas replaced by its boxes' areas, all twelve numbers are equal.
    box_areas = json.loads(json.dumps(coco_val.dataset))
    for ann in box_areas["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    assert ours == pytest.approx(stats(coco_val, CocoEvaluator(box_areas, coco_val.label_to_category_id),
                                       detections), abs=1e-12)


def test_the_cli_writes_the_yolo_sample(tmp_path):
    out = tmp_path / "y"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_sample_dataset.py"), "--format", "yolo",
                           "--output", str(out), "--num-train", "2", "--num-val", "1"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 images in" in proc.stdout
    assert sorted(os.listdir(out / "labels" / "train")) == ["000000000001.txt", "000000000002.txt"]
    assert sorted(os.listdir(out / "images" / "val")) == ["000010000001.jpg"]
    assert "names:\n  0: circle\n" in (out / "data.yaml").read_text()


@pytest.mark.slow
def test_train_sh_and_infer_sh_on_the_yolo_sample(yolo_sample, tmp_path):
    out = tmp_path / "out"
    res = run(["bash", TRAIN_SH, "--data-path", yolo_sample / "data.yaml", "--epochs", "1", "--train-subset", "2",
               "--val-subset", "2", "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone",
               "--output-dir", out], tmp_path)
    assert res.stdout.startswith(f"YOLO dataset YAML: {yolo_sample / 'data.yaml'} (6 classes; splits train, val)")
    assert "training on 2 images" in res.stdout and "COCO bbox evaluation: 2 images" in res.stdout
    ap_line = next(line for line in res.stdout.splitlines() if "(AP) @[ IoU=0.50:0.95 | area=   all" in line)
    res = run(["bash", INFER_SH, "--weights", out / "checkpoint_epoch0000", "--eval", "--data-path",
               yolo_sample / "data.yaml", "--max-images", "2", "--workers", "0", "--backend", "oneflow",
               "--output-dir", tmp_path / "eval"], tmp_path)
    assert "evaluating on 2 images" in res.stdout and ap_line in res.stdout  # the same weights, the same AP
