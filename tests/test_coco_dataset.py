"""The COCO-format dataset: label mapping, box handling, and every kind of bad input."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from cv.detection.data import base, coco
from cv.detection.data.coco import CocoDetection, label_mapping
from tests.conftest import decompression_bomb

CATEGORIES = [{"id": 3, "name": "cat", "supercategory": "animal"}, {"id": 7, "name": "dog", "supercategory": "animal"},
              {"id": 12, "name": "bird", "supercategory": "animal"}]


def pattern(h, w):
    """An RGB test pattern whose every pixel is known."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def write_dataset(root, images, annotations, categories=CATEGORIES, split="train"):
    """``images``: list of (id, file_name, PIL image or None for "do not write", (w, h) declared)."""
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for image_id, name, img, (w, h) in images:
        if img is not None:
            img.save(root / f"{split}2017" / name)
        entries.append({"id": image_id, "file_name": name, "width": w, "height": h})
    anns = [dict({"id": i + 1, "iscrowd": 0, "area": 100.0}, **a) for i, a in enumerate(annotations)]
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return root


def rgb(h=40, w=60):
    return Image.fromarray(pattern(h, w))


def test_contiguous_labels_for_custom_categories():
    mapping, names, num_classes = label_mapping(CATEGORIES)
    assert mapping == {1: 3, 2: 7, 3: 12}
    assert names == ["__background__", "cat", "dog", "bird"] and num_classes == 4


def test_coco_categories_keep_coco_ids():
    cats = [{"id": i, "name": n} for i, n in coco.COCO_CATEGORIES.items()]
    mapping, names, num_classes = label_mapping(cats)
    assert num_classes == 91 and mapping[90] == 90 and mapping[1] == 1
    assert names[18] == "dog" and names[12] == "N/A" and len(names) == 91
    # A subset of COCO's categories, same ids and names, also keeps the ids (the published 91-way head).
    assert label_mapping(cats[:5])[2] == 91
    with pytest.raises(ValueError, match=r"outside COCO's 1..90"):
        label_mapping(CATEGORIES + [{"id": 95, "name": "x"}], mode="coco")


def test_boxes_are_converted_clipped_and_filtered(tmp_path):
    anns = [
        {"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [-5, 30, 20, 20]},  # clipped to the image
        {"image_id": 1, "category_id": 12, "bbox": [5, 5, 10, 10], "iscrowd": 1},  # ignored
        {"image_id": 1, "category_id": 3, "bbox": [70, 5, 10, 10]},  # outside: empty after clipping
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},  # zero width
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, -3, 10]},  # negative width
    ]
    root = write_dataset(tmp_path, [(1, "a.jpg", rgb(), (60, 40)), (2, "b.jpg", rgb(), (60, 40))], anns)
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(root, "train")
    message = str(record[0].message)
    assert "crowd ignored: 1" in message and "degenerate dropped: 3" in message
    assert "images skipped for training: 1" in message
    assert len(ds) == 1 and ds.stats["images_without_boxes"] == 1
    image, target = ds[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 30, 15], [0, 30, 15, 40]])
    np.testing.assert_array_equal(target["labels"], [2, 1])
    assert target["image_id"] == 1 and target["orig_size"] == (40, 60)
    assert image.dtype == np.float32 and image.shape == (3, 40, 60)
    # For evaluation, the image without boxes is kept.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(CocoDetection(root, "train", train=False)) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_image_mode_becomes_rgb_in_0_1(tmp_path, mode):
    base = pattern(40, 60)
    if mode == "I;16":
        img = Image.fromarray((base[..., 0].astype(np.uint16) * 257))  # 16-bit: 0..65535
        expected = np.repeat(base[..., :1], 3, -1)
    elif mode == "L":
        img = Image.fromarray(base[..., 0])
        expected = np.repeat(base[..., :1], 3, -1)
    else:
        img = Image.fromarray(base).convert(mode)
        expected = np.asarray(img.convert("RGB"))
    name = "a.png" if mode in ("I;16", "RGBA", "P") else "a.jpg"
    root = write_dataset(tmp_path, [(1, name, img, (60, 40))],
                         [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 9, 9]}])
    image, _ = CocoDetection(root, "train")[0]
    assert image.shape == (3, 40, 60)
    tolerance = 1.5 / 255 if name.endswith("png") else 12 / 255  # JPEG is lossy
    assert np.abs(image.transpose(1, 2, 0) - expected / 255.0).max() <= tolerance


def broken_files(root):
    good = rgb()
    good.save(root / "train2017" / "ok.jpg")
    data = (root / "train2017" / "ok.jpg").read_bytes()
    (root / "train2017" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "train2017" / "garbage.jpg").write_bytes(b"this is not a JPEG at all")
    rgb(50, 60).save(root / "train2017" / "wrong_size.jpg")
    decompression_bomb(root / "train2017" / "bomb.png")


def bad_file_dataset(root, split="train"):
    (root / f"{split}2017").mkdir(parents=True)
    broken_files(root) if split == "train" else None
    names = ["ok.jpg", "truncated.jpg", "missing.jpg", "garbage.jpg", "wrong_size.jpg", "bomb.png"]
    images = [(i, name, None, (60, 40)) for i, name in enumerate(names, start=1)]
    anns = [{"image_id": i, "category_id": 3, "bbox": [1, 1, 9, 9]} for i in range(1, 7)]
    return write_dataset(root, images, anns, split=split)


@pytest.mark.parametrize("index,image_id,file_name,reason", [
    (1, 2, "truncated.jpg", "cannot be read"),
    (2, 3, "missing.jpg", "cannot be read"),
    (3, 4, "garbage.jpg", "cannot be read"),
    (4, 5, "wrong_size.jpg", "is 60x50 but the annotation file says 60x40"),
    (5, 6, "bomb.png", "cannot be read: refused as a decompression bomb"),
])
def test_unreadable_images_are_errors_for_evaluation(tmp_path, index, image_id, file_name, reason):
    ds = CocoDetection(bad_file_dataset(tmp_path), "train", train=False)
    with pytest.raises(OSError) as err:
        ds[index]
    assert f"image {image_id} (" in str(err.value) and file_name in str(err.value) and reason in str(err.value)


def test_unreadable_images_are_counted_skips_for_training(tmp_path):
    ds = CocoDetection(bad_file_dataset(tmp_path), "train")
    with pytest.warns(UserWarning) as record:
        samples = [ds[i] for i in range(len(ds))]
    # Every sample is the one readable image, and each skip was announced with the file, id and count.
    assert [t["image_id"] for _, t in samples] == [1] * 6
    messages = [str(r.message) for r in record]
    assert any("truncated.jpg" in m and "image 2" in m for m in messages)
    assert any("missing.jpg" in m for m in messages) and any("wrong_size.jpg" in m for m in messages)
    assert any("bomb.png" in m and "decompression bomb" in m for m in messages)
    assert "so far: 15" in messages[-1]  # walking forward from index 1 meets 5 bad files, from 2 four, ...


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": [], "annotations": []}', "missing or malformed 'categories'"),
])
def test_annotation_files_that_do_not_parse(tmp_path, content, message):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        CocoDetection(tmp_path, "train")
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("ann,message", [
    ({"image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5]}, "annotation 1 refers to unknown image id 99"),
    ({"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}, "annotation 1 (image 1) refers to unknown category id 5"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, 5]}, "annotation 1 (image 1) has a malformed bbox [1, 1, 5]"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 1, float("inf"), 5]},
     "annotation 1 (image 1) has a non-finite bbox [1, 1, inf, 5]"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, float("nan"), 5, 5]},
     "annotation 1 (image 1) has a non-finite bbox [1, nan, 5, 5]"),
])
def test_annotations_with_unknown_references(tmp_path, ann, message):
    root = write_dataset(tmp_path, [(1, "a.jpg", rgb(), (60, 40))], [ann])
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        CocoDetection(root, "train")


@pytest.mark.parametrize("image,message", [
    ({"id": 1, "file_name": "a.jpg", "width": 60}, "image 1 has no valid 'height' (got None)"),
    ({"id": 1, "file_name": "a.jpg", "width": 60, "height": 0}, "image 1 has no valid 'height' (got 0)"),
    ({"id": 1, "width": 60, "height": 40}, "image 1 has no valid 'file_name' (got None)"),
    ({"id": "1", "file_name": "a.jpg", "width": 60, "height": 40}, "image 1 has no valid 'id' (got '1')"),
    ([1, 2], "an entry of 'images' is not an object: [1, 2]"),
])
def test_images_without_what_the_loader_needs(tmp_path, image, message):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps({"images": [image], "annotations": [], "categories": CATEGORIES}))
    with pytest.raises(ValueError) as err:
        CocoDetection(tmp_path, "val")
    assert str(err.value) == f"{path}: {message}"


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        CocoDetection(tmp_path, "val")


def test_loader_batches_variable_box_counts_with_workers(tmp_path):
    anns = [{"image_id": i, "category_id": 3, "bbox": [1, 1, 5 + i, 5]} for i in range(1, 6) for _ in range(i)]
    root = write_dataset(tmp_path, [(i, f"{i}.jpg", rgb(30 + i, 40), (40, 30 + i)) for i in range(1, 6)], anns)
    ds = CocoDetection(root, "train")
    loader = base.make_loader(ds, batch_size=2, workers=2, shuffle=False)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 2, 1]
    seen = [t["image_id"] for _, targets in batches for t in targets]
    assert seen == [1, 2, 3, 4, 5]
    assert [len(t["boxes"]) for _, targets in batches for t in targets] == [1, 2, 3, 4, 5]
    images, targets = base.to_tensors(*batches[1])
    assert tuple(images[0].shape) == (3, 33, 40) and targets[1]["labels"].numpy().tolist() == [1] * 4


def test_loader_order_depends_on_seed_and_epoch_only_and_can_begin_part_way(tmp_path):
    """What resume relies on: an epoch's batches depend on the seed and the epoch, not on what the loader did
    before, and an epoch begun at batch k (a run resumed mid-epoch) yields exactly the rest of them."""
    root = write_dataset(tmp_path, [(i, f"{i}.jpg", rgb(), (60, 40)) for i in range(1, 12)],
                         [{"image_id": i, "category_id": 3, "bbox": [1, 1, 5, 5]} for i in range(1, 12)])
    ds = CocoDetection(root, "train")
    loader = base.make_loader(ds, batch_size=2, workers=0, shuffle=True, drop_last=True, seed=3)

    def epoch(e, start=0):
        base.set_epoch(loader, e, start)
        return [[t["image_id"] for t in targets] for _, targets in loader]

    first, second = epoch(0), epoch(1)
    assert len(first) == len(second) == 5 and first != second  # 11 images, batches of 2, the last one dropped
    assert sorted(sum(first, [])) == sorted(set(sum(first, []))) and len(set(sum(first, []))) == 10
    assert epoch(0) == first and epoch(1) == second  # the same again, whatever came before
    assert epoch(1, start=2) == second[2:] and len(loader) == 3
    assert epoch(1) == second and len(loader) == 5  # the next epoch starts at the beginning again
    other = base.make_loader(ds, batch_size=2, workers=0, shuffle=True, drop_last=True, seed=4)
    base.set_epoch(other, 0)
    assert [[t["image_id"] for t in targets] for _, targets in other] != first


def test_ground_truth_for_evaluation(tmp_path):
    root = write_dataset(tmp_path, [(5, "a.jpg", rgb(), (60, 40))],
                         [{"image_id": 5, "category_id": 7, "bbox": [10, 5, 20, 10]}])
    from cv.detection.evaluation.coco import ground_truth

    gt = ground_truth(CocoDetection(root, "train", train=False).dataset)
    assert gt.getImgIds() == [5] and gt.getCatIds() == [3, 7, 12]
    assert gt.loadAnns(gt.getAnnIds(imgIds=[5]))[0]["bbox"] == [10, 5, 20, 10]
