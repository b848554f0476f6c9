"""The synthetic COCO-format sample dataset (cv.detection.sample_dataset): layout, COCO validity, determinism, the
CLI, and that the scenes are varied enough to make a detector's AP meaningful."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cv.detection.sample_dataset import CATEGORIES, make_sample_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"train2017": 40, "val2017": 12}  # as made by the sample_dataset fixture (conftest.py)


def _load(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def _all_files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def test_layout_and_counts(sample_dataset):
    assert sorted(os.listdir(sample_dataset)) == ["annotations", "train2017", "val2017"]
    assert sorted(os.listdir(sample_dataset / "annotations")) == ["instances_train2017.json",
                                                                   "instances_val2017.json"]
    for split, n in SPLITS.items():
        files = os.listdir(sample_dataset / split)
        assert len(files) == n and all(f.endswith(".jpg") for f in files)  # no temporary files left behind
        data = _load(sample_dataset, split)
        assert len(data["images"]) == n
        assert len(data["annotations"]) >= n  # at least one object per image
        assert {a["image_id"] for a in data["annotations"]} == {im["id"] for im in data["images"]}


def test_pycocotools_loads_both(sample_dataset):
    from pycocotools.coco import COCO

    for split, n in SPLITS.items():
        coco = COCO(str(sample_dataset / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == n
        assert sorted(coco.getCatIds()) == sorted(cid for cid, _ in CATEGORIES)
        ann = coco.loadAnns(coco.getAnnIds(imgIds=coco.getImgIds()[:1]))[0]
        mask = coco.annToMask(ann)  # needs `segmentation`
        assert mask.shape == (coco.imgs[ann["image_id"]]["height"], coco.imgs[ann["image_id"]]["width"])
        assert mask.sum() > 0


def test_annotations_are_valid(sample_dataset):
    image_ids = {}
    for split in SPLITS:
        data = _load(sample_dataset, split)
        for key in ("description", "version", "year", "contributor", "date_created"):
            assert key in data["info"]
        assert len(data["licenses"]) == 1
        cats = {c["id"]: c for c in data["categories"]}
        assert all(c["name"] and c["supercategory"] for c in cats.values())
        ids = sorted(cats)
        assert len(ids) >= 5 and ids != list(range(ids[0], ids[0] + len(ids)))  # non-contiguous on purpose
        images = {im["id"]: im for im in data["images"]}
        assert len(images) == len(data["images"])
        image_ids[split] = set(images)
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for a in data["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= im["width"] and y + h <= im["height"], (a, im)
            assert a["category_id"] in cats
            assert a["iscrowd"] == 0 and a["area"] > 0
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert len(poly) >= 3
            # The outline spans the box (amodal extent), within rounding.
            assert np.allclose(poly.min(0), [x, y], atol=0.02) and np.allclose(poly.max(0), [x + w, y + h],
                                                                                atol=0.02)
    assert not image_ids["train2017"] & image_ids["val2017"]


def test_images_match_json(sample_dataset):
    for split in SPLITS:
        for im in _load(sample_dataset, split)["images"]:
            path = sample_dataset / split / im["file_name"]
            assert path.is_file()
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert img.size == (im["width"], im["height"])
    sizes = [(im["width"], im["height"]) for im in _load(sample_dataset, "train2017")["images"]]
    assert len(set(sizes)) > 20  # sizes vary


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    make_sample_dataset(tmp_path / "a", seed=3, num_train=5, num_val=3)
    make_sample_dataset(tmp_path / "b", seed=3, num_train=5, num_val=3)
    make_sample_dataset(tmp_path / "c", seed=4, num_train=5, num_val=3)
    a, b, c = (_all_files(tmp_path / d) for d in "abc")
    assert len(a) == 5 + 3 + 2
    assert a == b
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpgs)
    assert _load(tmp_path / "a", "train2017")["annotations"] != _load(tmp_path / "c", "train2017")["annotations"]


def test_regeneration_replaces_files(tmp_path):
    """Regenerating into the same directory with fewer images leaves exactly the new dataset."""
    make_sample_dataset(tmp_path / "a", seed=1, num_train=4, num_val=2)
    make_sample_dataset(tmp_path / "a", seed=1, num_train=2, num_val=1)
    make_sample_dataset(tmp_path / "b", seed=1, num_train=2, num_val=1)
    assert _all_files(tmp_path / "a") == _all_files(tmp_path / "b")


def test_cli(tmp_path):
    out = tmp_path / "cli"
    # Run from an unrelated directory, by path, as users would.
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_sample_dataset.py"), "--output",
                           str(out), "--seed", "2", "--num-train", "3", "--num-val", "2"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"train2017"' in proc.stdout and "circle" in proc.stdout
    assert "wrote 5 images in" in proc.stdout
    assert len(os.listdir(out / "train2017")) == 3 and len(os.listdir(out / "val2017")) == 2


def test_module_does_not_import_oneflow():
    code = "import sys, cv.detection.sample_dataset; assert 'oneflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, seed=-1, num_train=1, num_val=1)
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, num_train=-1, num_val=1)


def test_objects_are_varied(sample_dataset):
    anns = _load(sample_dataset, "train2017")["annotations"] + _load(sample_dataset, "val2017")["annotations"]
    boxes = np.array([a["bbox"] for a in anns])
    longest = boxes[:, 2:].max(1)
    assert longest.max() / longest.min() >= 4
    assert longest.min() < 20 and longest.max() > 150
    aspect = boxes[:, 2] / boxes[:, 3]
    assert (aspect < 0.7).any() and (aspect > 1.4).any()
    assert {a["category_id"] for a in anns} == {cid for cid, _ in CATEGORIES}

    per_image = {}
    for a in anns:
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert max(len(b) for b in per_image.values()) >= 4
    overlapping = sum(any(_iou(b[i], b[j]) > 0 for i in range(len(b)) for j in range(i)) for b in per_image.values())
    assert overlapping >= 3
