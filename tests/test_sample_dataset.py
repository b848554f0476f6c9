"""The synthetic COCO-format sample dataset (cv.detection.data.sample): layout, COCO validity, determinism, the
CLI, and that the scenes are varied enough to make a detector's AP meaningful; then the COCO-faithful variant
(``coco_categories=True``): COCO's label space, crowd regions, area ranges, empty, grayscale and PNG images."""
import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from cv.detection.data.sample import CATEGORIES, COCO_SHAPE_CATEGORIES, make_sample_dataset

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


def test_a_failed_write_leaves_no_temporary_and_no_annotation_file(tmp_path, monkeypatch):
    make_sample_dataset(tmp_path, seed=1, num_train=3, num_val=1)
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            with open(fp, "wb") as f:
                f.write(b"half an image")
            raise OSError("No space left on device")
        return original_save(self, fp, *args, **kwargs)

    original_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        make_sample_dataset(tmp_path, seed=2, num_train=3, num_val=1)
    assert sorted(os.listdir(tmp_path / "train2017")) == [f"{i:012d}.jpg" for i in (1, 2, 3)]  # no temporary
    assert not os.path.basename(calls[1]).endswith(".jpg")  # written under a temporary name, not in place
    # The annotation file of the split being rewritten is gone (no JSON describes a mix); the other is intact.
    assert sorted(os.listdir(tmp_path / "annotations")) == ["instances_val2017.json"]


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
    code = "import sys, cv.detection.data.sample; assert 'oneflow' not in sys.modules"
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


def _digest(root, suffix):
    """SHA-256 over the relative paths and bytes of the files under root ending with suffix, in path order."""
    h = hashlib.sha256()
    for path, data in sorted(_all_files(root).items()):
        if path.endswith(suffix):
            h.update(path.encode() + b"\0" + data)
    return h.hexdigest()


def test_plain_sample_bytes_are_pinned(tmp_path):
    """The plain sample is what earlier versions wrote, byte for byte: digests recorded with the generator as it was
    before the COCO-faithful variant existed (seed 0, 4 train, 2 val; pillow 10.4.0, numpy 1.23.5). A change of
    the pinned Pillow (its libjpeg) may change the JPEG bytes legitimately; the annotation files depend on NumPy's
    random streams and Pillow's polygon filling only."""
    make_sample_dataset(tmp_path, seed=0, num_train=4, num_val=2)
    assert _digest(tmp_path, ".json") == "c9c5d4a423e5515a17c809c56dc344ed6db941ebb8dd15f6ef4333022b216dab"
    assert _digest(tmp_path, ".jpg") == "733447b7d4e942005c82573989560e5f2c9cfa6b9a133eab29bf98d940534b89"


# ---------------------------------------------------------------------------------------------------------------
# The COCO-faithful variant.
# ---------------------------------------------------------------------------------------------------------------

COCO_SPLITS = {"train2017": 40, "val2017": 16}
SMALL, LARGE = 32 ** 2, 96 ** 2  # COCO's area ranges


@pytest.fixture(scope="module")
def coco_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_coco_faithful")
    summary = make_sample_dataset(root, seed=0, num_train=COCO_SPLITS["train2017"], num_val=COCO_SPLITS["val2017"],
                                  coco_categories=True)
    assert summary["coco_categories"] is True
    return root


def _objects(data):
    return [a for a in data["annotations"] if not a["iscrowd"]]


def _crowds(data):
    return [a for a in data["annotations"] if a["iscrowd"]]


def test_coco_variant_uses_coco_label_space(coco_sample):
    from cv.detection.data.coco import COCO_CATEGORIES, COCO_NUM_CLASSES, CocoDetection, label_mapping

    cats = _load(coco_sample, "val2017")["categories"]
    ids = [c["id"] for c in cats]
    assert ids == sorted(ids) and len(ids) >= 6
    assert all(COCO_CATEGORIES[c["id"]] == c["name"] for c in cats)  # COCO's real ids and names
    # Ids beside COCO's unused ids (12, 26, 66, 68, 83 ...) and the last id, where an off-by-one would show.
    unused = set(range(1, 91)) - set(COCO_CATEGORIES)
    assert len({g for g in unused if g - 1 in ids or g + 1 in ids}) >= 4 and 90 in ids

    with pytest.warns(UserWarning, match="crowd ignored"):
        ds = CocoDetection(coco_sample, "val", train=False)
    assert ds.num_classes == COCO_NUM_CLASSES == 91
    assert ds.label_to_category_id == {i: i for i in ids}
    assert all(ds.label_names[c["id"]] == c["name"] for c in cats)
    assert ds.label_names[12] == "N/A" and len(ds.label_names) == 91
    assert label_mapping(_load(coco_sample, "train2017")["categories"], "auto")[2] == 91


def test_coco_variant_has_coco_fields_and_loads_in_pycocotools(coco_sample):
    from pycocotools.coco import COCO

    for split, n in COCO_SPLITS.items():
        data = _load(coco_sample, split)
        assert list(data) == ["info", "licenses", "images", "annotations", "categories"]  # COCO's keys, order
        assert set(data["info"]) == {"description", "url", "version", "year", "contributor", "date_created"}
        # Per-record fields as in COCO's instances_*2017.json, in the same order.
        assert all(list(lic) == ["url", "id", "name"] for lic in data["licenses"])
        assert all(list(c) == ["supercategory", "id", "name"] for c in data["categories"])
        assert all(list(im) == ["license", "file_name", "coco_url", "height", "width", "date_captured",
                                "flickr_url", "id"] for im in data["images"])
        assert all(list(a) == ["segmentation", "area", "iscrowd", "image_id", "bbox", "category_id", "id"]
                   for a in data["annotations"])
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)

        coco = COCO(str(coco_sample / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == n == len(os.listdir(coco_sample / split))
        assert sorted(coco.getCatIds()) == [c["id"] for c in data["categories"]]
        for a in _objects(data):
            im = coco.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"], a
            mask = coco.annToMask(a)
            assert mask.sum() == a["area"] > 0  # area is the segmentation's pixel area, as in COCO
            rows, cols = np.nonzero(mask)
            assert cols.min() >= np.floor(x) and cols.max() <= np.ceil(x + w), a  # the mask is inside the bbox
            assert rows.min() >= np.floor(y) and rows.max() <= np.ceil(y + h), a


def test_coco_variant_ring_segmentations_keep_their_hole(coco_sample):
    """A COCO polygon cannot have holes; the ring's is one polygon with a cut to the hole, which COCO's rasterizer
    leaves empty: the centre of every whole (untruncated) ring is not part of its mask."""
    from pycocotools.coco import COCO

    ring_id = next(cid for shape, cid, _, _ in COCO_SHAPE_CATEGORIES if shape == "ring")
    coco = COCO(str(coco_sample / "annotations" / "instances_train2017.json"))
    checked = 0
    for a in coco.loadAnns(coco.getAnnIds(catIds=[ring_id], iscrowd=False)):
        im = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        if min(w, h) < 12 or x == 0 or y == 0 or x + w > im["width"] - 0.01 or y + h > im["height"] - 0.01:
            continue  # too small for a clear hole, or clipped at the border (its box centre is not its centre)
        assert coco.annToMask(a)[int(y + h / 2), int(x + w / 2)] == 0, a["id"]
        checked += 1
    assert checked >= 5


def test_coco_variant_objects_do_not_overlap(coco_sample):
    """Every segmentation is exactly what is visible of its object: no two annotations of an image share a pixel."""
    from pycocotools.coco import COCO

    coco = COCO(str(coco_sample / "annotations" / "instances_val2017.json"))
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        if anns:
            cover = sum(coco.annToMask(a).astype(np.int32) for a in anns)
            assert cover.max() == 1, image_id


def test_coco_variant_crowd_regions_are_rle_masks(coco_sample):
    from pycocotools import mask as mask_utils

    for split in COCO_SPLITS:
        data = _load(coco_sample, split)
        images = {im["id"]: im for im in data["images"]}
        crowds = _crowds(data)
        assert len(crowds) >= 3, split
        for a in crowds:
            im = images[a["image_id"]]
            seg = a["segmentation"]
            assert isinstance(seg, dict) and isinstance(seg["counts"], list)  # uncompressed RLE, as COCO's crowds
            assert seg["size"] == [im["height"], im["width"]] and sum(seg["counts"]) == im["height"] * im["width"]
            rle = mask_utils.frPyObjects(seg, *seg["size"])
            mask = mask_utils.decode(rle)
            assert mask.sum() == mask_utils.area(rle) == a["area"] > 0
            x, y, w, h = (int(v) for v in a["bbox"])
            assert a["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
            assert mask[y:y + h, x:x + w].sum() == a["area"]  # the whole mask inside its bbox, touching all sides
            assert mask[y, x:x + w].any() and mask[y + h - 1, x:x + w].any()
            assert mask[y:y + h, x].any() and mask[y:y + h, x + w - 1].any()
            # One region made of many shapes (a crowd), not one object: many separate pieces along some row.
            assert max(np.count_nonzero(np.diff(row.astype(np.int8)) == 1) for row in mask) >= 3
            assert a["id"] >= 900_000_000_000  # numbered apart, as COCO's crowd annotations


def test_coco_variant_val_covers_all_coco_area_ranges(coco_sample):
    areas = np.array([a["area"] for a in _objects(_load(coco_sample, "val2017"))])
    assert (areas < SMALL).sum() >= 10
    assert ((areas > SMALL) & (areas < LARGE)).sum() >= 2
    assert (areas > LARGE).sum() >= 1


def test_coco_variant_has_empty_images_in_both_splits(coco_sample):
    for split in COCO_SPLITS:
        data = _load(coco_sample, split)
        annotated = {a["image_id"] for a in data["annotations"]}
        empty = [im for im in data["images"] if im["id"] not in annotated]
        assert len(empty) >= 2, split
        assert all((coco_sample / split / im["file_name"]).is_file() for im in empty)


def test_coco_variant_image_formats(coco_sample):
    from cv.detection.data.base import load_rgb

    found = {}
    for split in COCO_SPLITS:
        for im in _load(coco_sample, split)["images"]:
            path = coco_sample / split / im["file_name"]
            with Image.open(path) as img:
                kind = (img.format, img.mode)
                assert img.size == (im["width"], im["height"])
                assert path.suffix == {"JPEG": ".jpg", "PNG": ".png"}[img.format]
                if img.format == "JPEG":
                    assert img.mode in ("RGB", "L")  # grayscale is stored as a 1-channel JPEG
            found[kind] = found.get(kind, 0) + 1
            rgb = load_rgb(path)
            assert rgb.mode == "RGB" and rgb.size == (im["width"], im["height"])
    assert set(found) == {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "P")}
    assert found[("JPEG", "L")] >= 4 and found[("JPEG", "RGB")] > len(found)


def test_coco_variant_sizes_and_aspects_vary(coco_sample):
    sizes = [(im["width"], im["height"]) for split in COCO_SPLITS for im in _load(coco_sample, split)["images"]]
    aspects = np.array([w / h for w, h in sizes])
    assert aspects.min() < 0.3 and aspects.max() > 3.3  # very tall and very wide
    assert ((aspects > 0.5) & (aspects < 0.9)).any() and ((aspects > 1.1) & (aspects < 2)).any()  # portrait, landscape
    assert len(set(sizes)) >= 30 and max(max(s) for s in sizes) <= 640


def test_coco_variant_has_images_with_many_objects(coco_sample):
    for split in COCO_SPLITS:
        per_image = {}
        for a in _objects(_load(coco_sample, split)):
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert 30 <= max(per_image.values()) <= 60, split
        assert np.median(list(per_image.values())) < 10  # most images are ordinary


@pytest.mark.slow
def test_coco_variant_is_deterministic(tmp_path):
    # 10 train images: every kind of the generator's schedule (PNG, grayscale, crowd, empty, wide, tall).
    make_sample_dataset(tmp_path / "a", seed=3, num_train=10, num_val=2, coco_categories=True)
    make_sample_dataset(tmp_path / "b", seed=3, num_train=10, num_val=2, coco_categories=True)
    make_sample_dataset(tmp_path / "c", seed=4, num_train=10, num_val=2, coco_categories=True)
    a, b, c = (_all_files(tmp_path / d) for d in "abc")
    assert len(a) == 10 + 2 + 2 and any(k.endswith(".png") for k in a)
    assert a == b
    assert all(a[k] != c.get(k) for k in a if not k.endswith(".json"))


def test_switching_variants_in_one_directory_leaves_only_the_new_one(tmp_path):
    make_sample_dataset(tmp_path / "a", seed=1, num_train=10, num_val=1, coco_categories=True)
    make_sample_dataset(tmp_path / "a", seed=1, num_train=10, num_val=1)
    make_sample_dataset(tmp_path / "b", seed=1, num_train=10, num_val=1)
    assert _all_files(tmp_path / "a") == _all_files(tmp_path / "b")  # the COCO variant's PNGs are gone too


def test_coco_training_split_skips_empty_images_and_ignores_crowds(coco_sample):
    from cv.detection.data.coco import CocoDetection

    data = _load(coco_sample, "train2017")
    with_objects = {a["image_id"] for a in _objects(data)}
    annotated = {a["image_id"] for a in data["annotations"]}
    without_objects = [im["id"] for im in data["images"] if im["id"] not in with_objects]
    empty = [im["id"] for im in data["images"] if im["id"] not in annotated]
    assert set(empty) <= set(without_objects) and len(empty) >= 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(coco_sample, "train")
    assert ds.stats == {"crowd_ignored": len(_crowds(data)), "degenerate_dropped": 0,
                        "images_without_boxes": len(without_objects),
                        "images_skipped_for_training": len(without_objects)}
    assert len(ds) == COCO_SPLITS["train2017"] - len(without_objects)
    assert not set(without_objects) & {ds.images[i][0] for i in range(len(ds))}
    assert sum(len(entry[4]) for entry in ds.images) == len(_objects(data))  # every single object, no crowd
    assert any(f"crowd ignored: {len(_crowds(data))}" in str(w.message) for w in caught)

    with pytest.warns(UserWarning, match="images without boxes"):
        val = CocoDetection(coco_sample, "val")  # evaluation keeps every image, empty ones with no boxes
    assert len(val) == COCO_SPLITS["val2017"]
    val_data = _load(coco_sample, "val2017")
    empty_val = {im["id"] for im in val_data["images"]} - {a["image_id"] for a in val_data["annotations"]}
    for i in range(len(val)):
        if val.images[i][0] in empty_val:
            image, target = val[i]
            assert image.shape[0] == 3 and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_coco_ground_truth_as_detections_scores_ap_1_in_coco_label_space(coco_sample, tmp_path):
    """End to end in the 91-way label space: model labels are COCO ids, crowds are ignored by the evaluation."""
    from cv.detection.data.coco import CocoDetection
    from cv.detection.evaluation.coco import CocoEvaluator

    with pytest.warns(UserWarning, match="crowd ignored"):
        ds = CocoDetection(coco_sample, "val")
    evaluator = CocoEvaluator(ds.dataset, ds.label_to_category_id)
    for i in range(len(ds)):
        _, t = ds[i]
        evaluator.update([t["image_id"]], [{"boxes": t["boxes"], "labels": t["labels"],
                                            "scores": np.ones(len(t["labels"]), np.float32)}])
    stats = evaluator.summarize(str(tmp_path / "detections.json"))
    assert stats["AP"] == 1.0 and stats["APs"] == 1.0 and stats["APm"] == 1.0 and stats["APl"] == 1.0
    with open(tmp_path / "detections.json") as f:
        results = json.load(f)
    assert {r["category_id"] for r in results} == {c["id"] for c in ds.dataset["categories"]}


def test_cli_coco_categories(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_sample_dataset.py"), "--output",
                           str(out), "--seed", "2", "--num-train", "3", "--num-val", "2", "--coco-categories"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"fire hydrant"' in proc.stdout and '"features"' in proc.stdout and "wrote 5 images in" in proc.stdout
    assert "circle" not in proc.stdout
    assert [c["id"] for c in _load(out, "val2017")["categories"]] == [11, 13, 27, 67, 84, 90]
