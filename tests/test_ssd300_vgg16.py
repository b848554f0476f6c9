"""Fidelity of our SSD300-VGG16 to flowvision's (the implementation behind the published zoo weights): same
parameters, same preprocessing, head outputs, losses and gradients on identical weights and inputs."""
import numpy as np
import oneflow as flow
import pytest

from cv.detection.ssd300_vgg16 import ssd300_vgg16


def images_and_targets():
    g = flow.Generator()
    g.manual_seed(7)
    images = [flow.rand(3, 240, 320, generator=g), flow.rand(3, 375, 250, generator=g)]
    targets = [
        {"boxes": flow.tensor([[10.0, 20.0, 100.0, 200.0], [50.0, 60.0, 300.0, 230.0], [200.0, 5.0, 240.0, 40.0]]),
         "labels": flow.tensor([3, 17, 90])},
        {"boxes": flow.tensor([[5.0, 5.0, 150.0, 280.0]]), "labels": flow.tensor([1])},
    ]
    return images, targets


def copy_targets(targets):
    return [{k: v.clone() for k, v in t.items()} for t in targets]


def rel_close(actual, expected, rtol=1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def trained_step(ssd300_pair):
    """Losses and gradients of one training forward/backward of both models on the same batch."""
    out = {}
    images, targets = images_and_targets()
    for name, model in zip(("ours", "flowvision"), ssd300_pair):
        model.train()
        model.zero_grad()
        losses = model(images, copy_targets(targets))
        sum(losses.values()).backward()
        out[name] = {"losses": {k: float(v) for k, v in losses.items()},
                     "grads": {n: (None if p.grad is None else p.grad.numpy().copy())
                               for n, p in model.named_parameters()}}
    return out


@pytest.mark.slow
def test_state_dict_is_flowvisions(ssd300_pair):
    ours, reference = ssd300_pair
    sd, ref_sd = ours.state_dict(), reference.state_dict()
    assert list(sd) == list(ref_sd)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert len(sd) == 71
    assert sum(v.numel() for v in sd.values()) == 35_641_826


@pytest.mark.slow
def test_preprocessing_and_head_outputs_equal_flowvisions(ssd300_pair):
    ours, reference = ssd300_pair
    ours.eval()
    reference.eval()
    images, _ = images_and_targets()
    with flow.no_grad():
        x = ours.preprocess(images)
        ref_x = reference.transform(images)[0].tensors
        rel_close(x.numpy(), ref_x.numpy(), rtol=1e-5)
        head = ours.head(ours.backbone(x))
        ref_head = reference.head(list(reference.backbone(x).values()))
    assert head["cls_logits"].shape == (2, 8732, 91)
    for key in ("cls_logits", "bbox_regression"):
        rel_close(head[key].numpy(), ref_head[key].numpy())


@pytest.mark.slow
def test_losses_equal_flowvisions(trained_step):
    ours, ref = trained_step["ours"]["losses"], trained_step["flowvision"]["losses"]
    assert ours.keys() == ref.keys() == {"bbox_regression", "classification"}
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], rel=1e-4)
        assert ours[k] > 0


@pytest.mark.slow
def test_gradients_equal_flowvisions_and_reach_every_parameter(trained_step):
    ours, ref = trained_step["ours"]["grads"], trained_step["flowvision"]["grads"]
    missing = [n for n, g in ours.items() if g is None or not np.abs(g).sum()]
    assert missing == []
    rel = {n: np.linalg.norm(g - ref[n]) / np.linalg.norm(ref[n]) for n, g in ours.items()}
    # Heads and the added blocks: equal to float32 precision.
    shallow = {n: r for n, r in rel.items() if n.startswith("head.") or n.startswith("backbone.extra.0.7")
               or (n.startswith("backbone.extra.") and not n.startswith("backbone.extra.0."))}
    assert max(shallow.values()) < 1e-4, max(shallow.items(), key=lambda kv: kv[1])
    # Deeper in the VGG trunk, float32 rounding flips a few ReLU / max-pool decisions: both implementations are
    # then ~1e-3 (up to 6e-3 at conv1_1) away from a float64 computation of the same gradient, and at most
    # 2e-3 from each other. A wrong gradient would be off by order 1.
    assert max(rel.values()) < 5e-3, max(rel.items(), key=lambda kv: kv[1])


@pytest.mark.slow
def test_eval_runs_on_cpu_and_maps_boxes_to_each_image(ssd300_pair):
    ours, _ = ssd300_pair
    ours.eval()
    images, _ = images_and_targets()
    with flow.no_grad():
        detections = ours(images)
    for det, img in zip(detections, images):
        h, w = img.shape[-2:]
        b = det["boxes"].numpy()
        assert 0 < len(b) <= 200
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w + 1e-3).all() and (b[:, 3] <= h + 1e-3).all()
        # Boxes reach beyond the 300x300 network input, so they really were mapped back (375 rows here).
        assert b[:, 3].max() > 300 or b[:, 2].max() > 300


@pytest.mark.parametrize("layers,trainable", [(0, 0), (1, 3), (4, 11), (5, 13)])
def test_trainable_backbone_layers_freeze_vgg_stages(layers, trainable):
    model = ssd300_vgg16(pretrained_backbone=False, trainable_backbone_layers=layers) if layers == 5 else None
    if model is None:
        # Freezing only applies with pretrained weights, which this machine cannot download: check the
        # freezing itself on the trunk the builder makes.
        from cv.detection.ssd300_vgg16.model import freeze_vgg_stages, vgg16_features

        features = vgg16_features()
        freeze_vgg_stages(features, layers)
        convs = [m for m in features if isinstance(m, flow.nn.Conv2d)]
    else:
        convs = [m for m in list(model.backbone.features) + list(model.backbone.extra[0])
                 if isinstance(m, flow.nn.Conv2d)]
    assert sum(c.weight.requires_grad for c in convs) == trainable


def test_builder_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="label_names has 3 names \\(background first\\) for num_classes=21"):
        ssd300_vgg16(pretrained=True, num_classes=21, label_names=["__background__", "a", "b"])
    with pytest.raises(ValueError, match="fixed at 300x300"):
        ssd300_vgg16(size=(512, 512))
    with pytest.raises(ValueError, match="must be in 0..5"):
        from cv.detection.ssd300_vgg16.model import freeze_vgg_stages, vgg16_features

        freeze_vgg_stages(vgg16_features(), 6)
    with pytest.warns(UserWarning, match="only applies to pretrained weights"):
        model = ssd300_vgg16(trainable_backbone_layers=2)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_pretrained_weights_come_through_the_hub(monkeypatch, tmp_path):
    import tarfile

    from cv.detection.utils.hub import DownloadError

    flow.manual_seed(3)
    published = ssd300_vgg16()
    flow.save(published.state_dict(), str(tmp_path / "ssd300_vgg16"))
    with tarfile.open(tmp_path / "ssd300_vgg16.tar.gz", "w:gz", compresslevel=1) as tar:
        tar.add(tmp_path / "ssd300_vgg16", arcname="ssd300_vgg16")
    monkeypatch.setenv("FLOWVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SSD300_VGG16_URL", f"file://{tmp_path / 'ssd300_vgg16.tar.gz'}")
    model = ssd300_vgg16(pretrained=True)
    for name, tensor in published.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
    assert not any(p.requires_grad for p in model.backbone.features[0].parameters())  # conv1 frozen by default

    monkeypatch.setenv("FLOWVISION_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("SSD300_VGG16_URL", f"file://{tmp_path / 'nowhere.tar.gz'}")
    with pytest.raises(DownloadError, match="nowhere.tar.gz"):
        ssd300_vgg16(pretrained=True)
