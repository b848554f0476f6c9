"""The data pieces together, on the generated sample dataset: dataset -> augmentation -> loader -> evaluation."""
import warnings

import numpy as np

from cv.detection.data.coco import CocoDetection
from cv.detection.data.base import make_loader, set_epoch
from cv.detection.evaluation.coco import CocoEvaluator
from cv.detection.ssd300_vgg16.model import train_transform


def test_sample_dataset_reads_with_contiguous_labels(sample_dataset):
    ds = CocoDetection(sample_dataset, "val")
    names = [c["name"] for c in sorted(ds.dataset["categories"], key=lambda c: c["id"])]
    assert ds.label_names == ["__background__"] + names and ds.num_classes == len(names) + 1
    assert sorted(ds.label_to_category_id.values()) == sorted(c["id"] for c in ds.dataset["categories"])
    assert len(ds) == 12


def test_ground_truth_as_detections_scores_ap_1_end_to_end(sample_dataset, tmp_path, capsys):
    ds = CocoDetection(sample_dataset, "val")
    evaluator = CocoEvaluator(ds.dataset, ds.label_to_category_id)
    for i in range(len(ds)):
        _, t = ds[i]
        evaluator.update([t["image_id"]], [{"boxes": t["boxes"], "labels": t["labels"],
                                            "scores": np.ones(len(t["labels"]), np.float32)}])
    stats = evaluator.summarize(str(tmp_path / "detections.json"))
    assert stats["AP"] == 1.0 and stats["AP50"] == 1.0
    assert "Average Precision" in capsys.readouterr().out
    assert (tmp_path / "detections.json").exists()


def test_training_loader_is_reproducible_and_boxes_valid(sample_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(sample_dataset, "train", transform=train_transform(), seed=5)

    def first_batches(epoch):
        loader = make_loader(ds, batch_size=4, workers=2, shuffle=True, seed=5)
        set_epoch(loader, epoch)
        return [(images, targets) for (images, targets), _ in zip(loader, range(3))]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    for (ia, ta), (ib, tb) in zip(a, b):
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        for x, y in zip(ia, ib):
            np.testing.assert_array_equal(x, y)
    assert [t["image_id"] for _, ts in a for t in ts] != [t["image_id"] for _, ts in c for t in ts]
    for images, targets in a:
        for image, t in zip(images, targets):
            assert image.shape == (3, 300, 300) and image.dtype == np.float32
            b_ = t["boxes"]
            assert (b_[:, 2] > b_[:, 0]).all() and (b_[:, 3] > b_[:, 1]).all()
            assert (b_ >= 0).all() and (b_ <= 300).all() and len(b_) == len(t["labels"])
