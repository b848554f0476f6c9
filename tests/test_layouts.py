"""What ``--data-path`` may hold (:mod:`cv.detection.data.layouts`): the dataset YAML naming COCO annotation files,
bad dataset YAMLs, and the validation part held out of a training split (``--val-fraction``)."""
import json
import os

import numpy as np
import pytest

from cv.detection.data import layouts as datasets
from cv.detection.data.base import ImageRecord
from cv.detection.data.coco import CocoDetection


def coco_yaml(path, root, **splits):
    """A dataset YAML with ``path: root`` and COCO splits ``name=(images, annotations)``."""
    lines = [f"path: {root}"] + [f"{k}: {{images: {v[0]}, annotations: {v[1]}}}" for k, v in splits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


SAMPLE_SPLITS = dict(train=("train2017", "annotations/instances_train2017.json"),
                     val=("val2017", "annotations/instances_val2017.json"))


def test_a_dataset_yaml_names_coco_annotation_files_anywhere(sample_dataset, tmp_path):
    path = coco_yaml(tmp_path / "dataset.yaml", sample_dataset, **SAMPLE_SPLITS)
    layout = datasets.detect_layout(path)
    assert layout.format == "coco" and layout.root == str(sample_dataset) and layout.file == str(path)
    assert layout.description == f"COCO-format dataset YAML: {path} (splits train, val: image folders and " \
                                 "annotation files)"
    assert datasets.default_splits(layout) == ("train", "val")
    ours, reference = datasets.open_split(layout, "val", False), CocoDetection(sample_dataset, "val")
    assert [(r.image_id, r.path, r.boxes.tolist()) for r in ours.images] == \
        [(r.image_id, r.path, r.boxes.tolist()) for r in reference.images]
    assert ours.label_names == reference.label_names and ours.annotation_file == str(
        sample_dataset / "annotations" / "instances_val2017.json")
    # The COCO 2017 layout itself is what it was.
    assert datasets.detect_layout(sample_dataset).description == f"COCO layout: train2017, val2017 under " \
                                                                 f"{sample_dataset}"


@pytest.mark.parametrize("text,message", [
    ("train: [a, b\n", "not valid YAML"),
    ("- train\n", "expected a map with 'train', 'val' and (YOLO) 'names'"),
    ("names: [a]\n", "no 'train', 'val' or 'test' key: nothing to train or evaluate on"),
    ("train: {images: i, annotations: a.json}\nval: images/val\n",
     "splits of two kinds: 'train' COCO (images, annotations), 'val' YOLO (images); all must be one"),
    ("train: {images: i, annotations: a.json}\nnames: [a]\n", "'names' is for YOLO data; with COCO annotation files "
                                                              "the categories are the files'"),
    ("train: {images: i}\n", "'train' must be {images: FOLDER, annotations: FILE.json}; got {'images': 'i'}"),
    ("train: 3\nnames: [a]\n", "'train' must be an image folder, a .txt list of images, or a list of them; got 3"),
    ("path: [x]\ntrain: i\n", "'path' must be a folder, got ['x']"),
    ("train: i\nnames: [a, b]\nnc: 3\n", "nc is 3 but 'names' has 2 classes"),
])
def test_bad_dataset_yamls_are_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        datasets.detect_layout(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_missing_paths_name_the_flag_the_key_and_the_path(sample_dataset, tmp_path):
    with pytest.raises(ValueError, match=f"--data-path {tmp_path / 'nope.yaml'}: no such file or directory"):
        datasets.detect_layout(tmp_path / "nope.yaml")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="a file, but not a dataset YAML"):
        datasets.detect_layout(tmp_path / "notes.txt")
    path = coco_yaml(tmp_path / "d.yaml", sample_dataset, train=SAMPLE_SPLITS["train"],
                     val=("val2017", "annotations/missing.json"))
    layout = datasets.detect_layout(path)
    with pytest.raises(ValueError) as e:
        datasets.open_split(layout, "val", False)
    assert str(e.value) == f"{path}: 'val.annotations' names {sample_dataset / 'annotations' / 'missing.json'}, " \
                           "which does not exist"
    with pytest.raises(ValueError, match="--keep-difficult and --voc-metric are for Pascal VOC data"):
        datasets.open_split(layout, "train", True, voc_metric="2007")


# --- the validation part held out of a training split ------------------------------------------------------------


def records(class_lists):
    """Image records 1..N whose labels are the given lists (boxes do not matter here)."""
    return [ImageRecord(i, f"{i}.jpg", 10, 10, np.zeros((len(c), 4), np.float32), np.array(c, np.int64))
            for i, c in enumerate(class_lists, start=1)]


def test_the_val_fraction_is_deterministic_sized_and_seeded():
    pool = records([[1 + i % 3] for i in range(40)])
    first = datasets.choose_val_images(pool, 0.2, seed=0)
    assert first == datasets.choose_val_images(pool, 0.2, seed=0) and first == sorted(first)
    assert len(first) == 8 and len(set(first)) == 8 and set(first) <= set(range(1, 41))
    assert datasets.choose_val_images(pool, 0.2, seed=1) != first
    assert len(datasets.choose_val_images(pool, 0.01, seed=0)) == 1      # at least one
    assert len(datasets.choose_val_images(records([[1]] * 40), 0.999, seed=0)) == 39  # one is left to train on
    assert len(datasets.choose_val_images(pool, 0.999, seed=0)) == 37  # and one of each of the 3 classes
    with pytest.raises(ValueError, match="needs at least 2 usable training images, it has 1"):
        datasets.choose_val_images(pool[:1], 0.5, seed=0)


def test_the_val_fraction_is_stratified_and_keeps_every_class_in_training():
    # Class 1 is everywhere; class 2 in two images, class 3 in one, class 4 in three.
    lists = [[1] for _ in range(30)]
    lists[4], lists[17], lists[9], lists[20], lists[21], lists[22] = [1, 2], [2], [3, 1], [4], [4, 1], [4]
    pool = records(lists)
    for seed in range(20):
        held = set(datasets.choose_val_images(pool, 0.1, seed))  # 3 images
        classes = set().union(*(set(lists[i - 1]) for i in held))
        assert len(held) == 3 and classes >= {1, 2, 4}, seed  # every class that can be in val is
        assert 10 not in held, seed  # the only image of class 3 stays in training
        trained = set().union(*(set(c) for i, c in enumerate(lists, start=1) if i not in held))
        assert trained == {1, 2, 3, 4}, seed


def test_carving_a_coco_split_gives_disjoint_parts(sample_dataset):
    whole = CocoDetection(sample_dataset, "train", transform=lambda *a: a[:3], train=True)
    train, val, ids = datasets.carve_val_split(whole, 0.25, seed=3)
    assert ids == sorted(r.image_id for r in val.images) and len(ids) == round(0.25 * len(whole))
    assert not {r.image_id for r in train.images} & set(ids)
    assert sorted(r.image_id for r in train.images + val.images) == sorted(r.image_id for r in whole.images)
    assert train.train and train.transform is whole.transform and not val.train and val.transform is None
    evaluator = val.evaluator()
    for r in val.images:  # its ground truth as detections: the held-out part is evaluated on its own
        evaluator.update([r.image_id], [{"boxes": r.boxes, "labels": r.labels, "scores": np.ones(len(r.labels))}])
    assert evaluator.summarize()["AP"] == 1.0


def test_the_training_program_records_the_held_out_images(sample_dataset, tmp_path, capsys):
    from cv.detection.ssd300_vgg16 import train as program

    parser = program.get_args_parser()
    path = coco_yaml(tmp_path / "one_file.yaml", sample_dataset, train=SAMPLE_SPLITS["train"])
    args = program.resolve(parser.parse_args(["--data-path", str(path), "--val-fraction", "0.2", "--val-subset", "3",
                                              "--seed", "5", "--output-dir", str(tmp_path / "out")]))
    data = program.resolve_data(args)
    _, train_set, val_set = data
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"COCO-format dataset YAML: {path} (splits train: image folders and annotation files); " \
                     "training on train, evaluating on 0.2 of train held out"
    assert out[1].startswith("held out 8 of the 40 usable images of train for evaluation (--val-fraction 0.2, seed 5")
    recorded = json.loads(json.dumps(vars(args)))["val_image_ids"]  # what run() writes to args.json
    assert len(recorded) == 8 and [r.image_id for r in val_set.images] == recorded[:3]
    assert not set(recorded) & {r.image_id for r in train_set.images} and len(train_set) == 32
    assert program.build_data(args, data)[:2] == (train_set, val_set)
    with pytest.raises(ValueError, match="give --val-split or --val-fraction"):
        program.resolve(parser.parse_args(["--data-path", str(path), "--val-fraction", "0.2", "--val-split", "val"]))
    with pytest.raises(ValueError, match="--val-fraction 1: must be between 0 and 1 .exclusive."):
        program.resolve(parser.parse_args(["--data-path", str(path), "--val-fraction", "1"]))


def test_nothing_is_written_before_the_data_is_known_to_be_usable(sample_dataset, tmp_path):
    from cv.detection.ssd300_vgg16 import train as program

    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [a, a]\n")
    out = tmp_path / "out"

    def refused(data, *flags):
        args = program.get_args_parser().parse_args(["--data-path", str(data), "--output-dir", str(out), "--device",
                                                     "cpu", *flags])
        with pytest.raises(ValueError) as e:
            program.run(args, stop=None)
        assert not os.path.exists(out)
        return str(e.value)

    assert refused(tmp_path / "data.yaml") == f"{tmp_path / 'data.yaml'}: the class name 'a' is given twice (the " \
                                              "second time as class 1)"
    assert refused(sample_dataset, "--batch-size", "41") == "--batch-size 41 x 1 process(es) is more than the 40 " \
        f"training images of {sample_dataset / 'annotations' / 'instances_train2017.json'}"


def test_carving_pascal_voc_trains_on_every_trainval_and_evaluates_the_part_alone(tmp_path):
    from cv.detection.data.sample import make_voc_sample_dataset

    make_voc_sample_dataset(tmp_path, num_train=8, num_val=4, num_test=2)
    layout = datasets.detect_layout(tmp_path)
    assert datasets.default_splits(layout) == ("2007-trainval", "2007-test")
    assert datasets.default_splits(layout, carve=True) == ("2007-trainval", None)  # val is no longer held apart
    with pytest.warns(UserWarning, match="difficult ignored"):
        whole = datasets.open_split(layout, "2007-trainval", True)
    train, val, ids = datasets.carve_val_split(whole, 0.25, seed=0)
    assert len(ids) == 3 and len(train) + len(val) == len(whole) == 12
    evaluator = val.evaluator()
    for r in val.images:  # the training targets (difficult objects left out) as detections: they are ignored
        evaluator.update([r.image_id], [{"boxes": r.boxes, "labels": r.labels, "scores": np.ones(len(r.labels))}])
    assert evaluator.summarize()["mAP"] == 1.0


@pytest.mark.parametrize("categories,message", [
    ([{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "cat"}],
     "the class name 'cat' is given twice (the second time as class 2)"),
    ([], "the dataset has no classes"),
    ([{"id": i, "name": f"c{i}"} for i in range(1, 5002)], "5001 classes, more than 5000: is the names list right?"),
], ids=["twice", "none", "5001"])
def test_coco_files_with_bad_categories_are_one_line_naming_the_file(tmp_path, categories, message):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path, "val", annotation_file=str(path), image_dir=str(tmp_path))
    assert str(e.value) == f"{path}: {message}"
