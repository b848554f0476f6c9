"""Fine-tuning from weights trained on other classes (cv.detection.models.transfer): what is copied, what is
rebuilt, and that the classes the weights knew keep their logits and boxes at step 0."""
import numpy as np
import oneflow as flow
import pytest

from tests.conftest import tiny_ssd
from cv.detection.models.transfer import TransferReport, class_mapping, name_key, transfer

SOURCE_NAMES = ["__background__", "person", "stop sign", "N/A", "car"]
HEAD = "head.classification_head.module_list."


def states(seed_source=1, seed_target=2, target_names=("__background__", "Car", "my_widget", "Stop_Sign")):
    source = tiny_ssd(num_classes=len(SOURCE_NAMES), seed=seed_source).eval()
    with flow.no_grad():  # a fresh head's biases are zero: give the source's rows values to be told apart
        for conv in source.head.classification_head.module_list:
            conv.bias.copy_(flow.randn(*conv.bias.shape))
    target = tiny_ssd(num_classes=len(target_names), seed=seed_target).eval()
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    return source, target, fresh, list(target_names)


def test_names_match_ignoring_case_spaces_underscores_and_placeholders():
    assert name_key("Stop sign") == name_key("stop_sign") == name_key("STOP-SIGN") == "stopsign"
    assert class_mapping(["__background__", "Car", "n/a", "widget", "Person"], SOURCE_NAMES) == {0: 0, 1: 4, 4: 1}
    assert class_mapping(["__background__", "car"], None) == {0: 0}


def test_tensors_that_fit_are_copied_and_head_rows_move_by_class_name():
    source, target, fresh, names = states()
    report = transfer(target, source.state_dict(), SOURCE_NAMES, names, source="W")
    src, got = source.state_dict(), target.state_dict()
    for key, value in got.items():
        if not key.startswith(HEAD):
            assert np.array_equal(value.numpy(), src[key].numpy()), key
    anchors = target.anchor_generator.num_anchors_per_location()
    for k, a_k in enumerate(anchors):
        for part in ("weight", "bias"):
            s, t, f = (d[f"{HEAD}{k}.{part}"].numpy() for d in (src, got, fresh))
            for a in range(a_k):
                # target label -> source label: background 0 -> 0, Car 1 -> car 4, Stop_Sign 3 -> stop sign 2
                for tl, sl in ((0, 0), (1, 4), (3, 2)):
                    assert np.array_equal(t[a * 4 + tl], s[a * 5 + sl])
                assert np.array_equal(t[a * 4 + 2], f[a * 4 + 2])  # my_widget: the fresh model's own rows
    heads = 2 * len(anchors)
    assert (report.tensors_copied, report.tensors_total) == (len(got) - heads, len(got))
    assert report.class_sources == {"Car": "car", "my_widget": None, "Stop_Sign": "stop sign"}
    assert str(report) == (f"transferred {len(got) - heads} of {len(got)} tensors from W; classification head "
                           "rebuilt for 4 classes (background + Car, Stop_Sign from its classes; my_widget new)")


def head_outputs(model, images):
    with flow.no_grad():
        features = model.backbone(model.preprocess(images))
        return model.head(features), [f.shape[-2:] for f in features]


def test_known_classes_keep_their_logits_and_boxes_at_step_zero():
    source, target, _, names = states()
    transfer(target, source.state_dict(), SOURCE_NAMES, names)
    images = [flow.rand(3, 64, 64), flow.rand(3, 48, 80)]
    (out_s, _), (out_t, _) = head_outputs(source, images), head_outputs(target, images)
    assert np.array_equal(out_t["bbox_regression"].numpy(), out_s["bbox_regression"].numpy())
    assert np.array_equal(out_t["cls_logits"].numpy()[..., [0, 1, 3]], out_s["cls_logits"].numpy()[..., [0, 4, 2]])


def test_a_subset_of_known_classes_detects_as_the_source_restricted_to_them():
    """Scores are a softmax over the model's classes, so the reference is the source's own logits of the kept
    classes (background, car, stop sign), decoded as a 3-class model decodes them."""
    source, target, _, names = states(target_names=("__background__", "car", "stop sign"))
    transfer(target, source.state_dict(), SOURCE_NAMES, names)
    target.score_thresh = source.score_thresh = 0.0
    images = [flow.rand(3, 64, 64), flow.rand(3, 48, 80)]
    out_s, grids = head_outputs(source, images)
    restricted = {"bbox_regression": out_s["bbox_regression"], "cls_logits": out_s["cls_logits"][..., [0, 4, 2]]}
    with flow.no_grad():
        expected = target.detect(restricted, grids, [(64, 64), (48, 80)])
        got = target(images)
    for e, g in zip(expected, got):
        assert len(g["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert np.array_equal(g[key].numpy(), e[key].numpy()), key


def test_same_classes_load_everything_and_other_architectures_are_refused():
    source, target, _, _ = states(target_names=SOURCE_NAMES)
    report = transfer(target, source.state_dict(), SOURCE_NAMES, SOURCE_NAMES, source="W")
    assert not report.rebuilt and str(report) == f"loaded all {report.tensors_total} tensors from W (same 5 classes)"
    for key, value in target.state_dict().items():
        assert np.array_equal(value.numpy(), source.state_dict()[key].numpy())
    foreign = dict(source.state_dict())
    foreign["backbone.stem.0.weight"] = flow.zeros(4, 3, 3, 3)
    with pytest.raises(ValueError, match="W does not fit this model's architecture: 1 tensors missing or of another "
                                         "shape \\(backbone.stem.0.weight\\)"):
        transfer(states()[1], foreign, SOURCE_NAMES, SOURCE_NAMES, source="W")


def test_unknown_source_names_transfer_only_the_background_row():
    source, target, fresh, names = states()
    report = transfer(target, source.state_dict(), None, names)
    assert report.class_sources == {"Car": None, "my_widget": None, "Stop_Sign": None}
    t, f = target.state_dict()[f"{HEAD}0.bias"].numpy(), fresh[f"{HEAD}0.bias"].numpy()
    s = source.state_dict()[f"{HEAD}0.bias"].numpy()
    assert t[0] == s[0] != 0 and t[4] == s[5] and np.array_equal(t[1:4], f[1:4])
    assert isinstance(report, TransferReport)


def test_coco_weights_onto_coco_labels_are_the_same_classes():
    """A 91-way head trained in COCO's label space (unused ids named N/A) onto data in COCO's label space: the same
    classes, loaded as they are (what --test-only needs), not a rebuilt head."""
    from cv.detection.data.coco import COCO_LABEL_NAMES
    from cv.detection.ssd300_vgg16.weights import known_label_names

    source = tiny_ssd(num_classes=91, seed=1)
    target = tiny_ssd(num_classes=91, seed=2)
    names = known_label_names({"head.classification_head.module_list.0.weight": flow.zeros(91 * 4, 1, 1, 1)},
                              {"label_names": COCO_LABEL_NAMES})
    report = transfer(target, source.state_dict(), names, COCO_LABEL_NAMES)
    assert not report.rebuilt and names == COCO_LABEL_NAMES


def test_the_zoo_weights_load_whole_into_a_default_91_class_model(tmp_path, monkeypatch):
    """ssd300_vgg16(pretrained=True) as flowvision users call it (91 classes, no names): every tensor as it is."""
    from cv.detection.ssd300_vgg16.weights import load_into

    source = tiny_ssd(num_classes=91, seed=1)
    flow.save(source.state_dict(), str(tmp_path / "zoo"))
    target = tiny_ssd(num_classes=91, seed=2)
    report = load_into(target, str(tmp_path / "zoo"))
    assert not report.rebuilt
    for key, value in source.state_dict().items():
        assert np.array_equal(target.state_dict()[key].numpy(), value.numpy()), key
