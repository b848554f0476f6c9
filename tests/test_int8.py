"""int8 inference (:mod:`cv.detection.deploy.quantize`, ``infer.sh --precision int8``), and the other runtime and
precisions of the same networks (OpenVINO float32, int8 and bfloat16) against ONNX Runtime float32.

The accuracy check needs a model that really detects objects: SSD300-VGG16 with its random trunk frozen and its
heads fitted to 8 sample images (:mod:`fitting`), built once for this module, exported and quantized once
(calibrated on 16 other training images), all under pytest's tmp dirs. Agreement with float32 is measured on the
fitted images and on held-out ones (the val split: neither fitted nor calibrated on).
"""
import contextlib
import io
import json
import os
import shutil

from typing import NamedTuple

import numpy as np
import oneflow as flow
import pytest

from cv.detection.data.coco import CocoDetection

pytestmark = pytest.mark.slow

FITTED_IMAGES = 8
CALIBRATION_IMAGES = 16
HELD_OUT_IMAGES = 12
# What bfloat16 (OpenVINO, on a CPU with BF16) must keep of float32: AP within 2 points and 90% of float32's
# detections >= 0.3 twinned. A guard, not the bar for a default (docs/performance.md has the measurements): 8 images
# give few detections, so one miss is 2% of the twins, and a box or two crossing an IoU threshold moves AP by about
# a point, which real BF16 hardware does on this model.
BFLOAT16_AP = 0.02
BFLOAT16_TWINS = 0.90


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``(model, dataset, calibration folder, held-out dataset)``: the fitted SSD300, the plain dataset of its 8
    images, a folder holding 16 other images of the same training split, and the 12 val images."""
    from fitting import fitted_ssd300
    from cv.detection.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("int8_data")
    make_sample_dataset(root, seed=0, num_train=FITTED_IMAGES + CALIBRATION_IMAGES, num_val=HELD_OUT_IMAGES)
    model, dataset = fitted_ssd300(root, FITTED_IMAGES, augmented_views=3, steps=150, batch_size=8)
    fitted_files = {os.path.basename(image[1]) for image in dataset.images}
    calibration = tmp_path_factory.mktemp("calibration")
    for name in sorted(os.listdir(root / "train2017")):
        if name not in fitted_files:
            shutil.copy(root / "train2017" / name, calibration / name)
    return model, dataset, calibration, CocoDetection(root, "val")


@pytest.fixture(scope="module")
def networks(fitted, tmp_path_factory):
    """The float32 export and its int8 quantization in a fresh ``$FLOWVISION_CACHE/onnx``, and what quantizing
    said: ``(cache root, float32 path, int8 path, messages)``."""
    from cv.detection.deploy.onnx_backend import cached_export
    from cv.detection.deploy.quantize import cached_quantized_export, calibration_images

    model, _, calibration, _ = fitted
    cache_root = tmp_path_factory.mktemp("flowvision_cache")
    messages = []
    float_path = cached_export(model, str(cache_root / "onnx"))
    int8_path = cached_quantized_export(model, str(cache_root / "onnx"), calibration_images(str(calibration)),
                                        log=messages.append)
    return cache_root, float_path, int8_path, messages


def detect_all(detector, paths):
    from cv.detection.data.base import load_rgb
    from cv.detection.data.transforms import to_chw_float

    with flow.no_grad():
        return [detector([flow.tensor(to_chw_float(load_rgb(path)))])[0] for path in paths]


def coco_stats(dataset, detections):
    evaluator = dataset.evaluator()
    evaluator.update([image[0] for image in dataset.images], detections)
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.summarize(None)


def test_opset13_conversion_is_exact(networks):
    """The exporter's opset-12 graph converted by ONNX's version converter: ReduceSum's axes become an input holding
    [1] (the channels), and ONNX Runtime gives bit-identical outputs for both graphs."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from cv.detection.deploy.quantize import to_opset13

    _, float_path, _, _ = networks
    opset12 = onnx.load(float_path)
    assert [o.version for o in opset12.opset_import if o.domain in ("", "ai.onnx")] == [12]
    opset13 = to_opset13(opset12)
    onnx.checker.check_model(opset13)
    (reduce_sum,) = [n for n in opset13.graph.node if n.op_type == "ReduceSum"]
    assert not [a for a in reduce_sum.attribute if a.name == "axes"]
    constants = {n.output[0]: n for n in opset13.graph.node if n.op_type == "Constant"}
    initializers = {t.name: numpy_helper.to_array(t) for t in opset13.graph.initializer}
    axes = initializers.get(reduce_sum.input[1])
    if axes is None:
        axes = numpy_helper.to_array(constants[reduce_sum.input[1]].attribute[0].t)
    assert axes.tolist() == [1]

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (opset12, opset13)]
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.normal(0, 60, (1, 3, 300, 300)).astype(np.float32)
        a, b = (s.run(None, {s.get_inputs()[0].name: x}) for s in sessions)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_the_stamp_alone_is_not_a_conversion(networks):
    """What the conversion is needed for: the same graph merely stamped opset 13 keeps ReduceSum's attribute, which
    opset 13 no longer has (ONNX Runtime 1.16 refuses it; others sum over every axis)."""
    import onnx
    import onnxruntime as ort

    _, float_path, _, _ = networks
    stamped = onnx.load(float_path)
    stamped.opset_import[0].version = 13
    with pytest.raises(Exception, match="axes"):
        ort.InferenceSession(stamped.SerializeToString(), providers=["CPUExecutionProvider"])


def test_quantized_graph(networks):
    """QDQ, opset 13: every trunk convolution reads int8 weights with one scale per output channel; the heads, the
    L2 normalisation and the outputs stay float32."""
    import onnx
    from onnx import numpy_helper

    _, _, int8_path, _ = networks
    model = onnx.load(int8_path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    init = {t.name: t for t in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    trunk = [n for n in convs if ".head." not in n.name]
    head = [n for n in convs if ".head." in n.name]
    assert len(trunk) == 23 and len(head) == 12
    for conv in trunk:
        weight = producers[conv.input[1]]
        assert weight.op_type == "DequantizeLinear", conv.name
        q, scale = init[weight.input[0]], numpy_helper.to_array(init[weight.input[1]])
        assert q.data_type == onnx.TensorProto.INT8
        assert scale.shape == (q.dims[0],)  # per output channel
        assert producers[conv.input[0]].op_type == "DequantizeLinear"
    for conv in head:
        assert conv.input[1] in init and init[conv.input[1]].data_type == onnx.TensorProto.FLOAT, conv.name
    for kind in ("ReduceSum", "Sqrt", "Reciprocal"):
        (node,) = [n for n in model.graph.node if n.op_type == kind]
        assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
    assert all(producers[o.name].op_type == "Concat" for o in model.graph.output)


@pytest.fixture(scope="module")
def reference(fitted, networks):
    """ONNX Runtime float32's detections on the fitted images, what the other precisions and runtimes are measured
    against."""
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD

    model, dataset, _, _ = fitted
    return detect_all(OnnxRuntimeSSD(model, networks[1]), [image[1] for image in dataset.images])


class Agreement(NamedTuple):
    """float32 against int8 (ONNX Runtime) on one set of images: their COCO numbers, and how many of float32's
    detections scoring >= 0.3 int8 finds too (same label, IoU >= 0.9)."""
    float32: dict
    int8: dict
    matched: int
    total: int

    def __str__(self):
        f, q = self.float32, self.int8
        return (f"float32 AP {f['AP']:.4f} AP50 {f['AP50']:.4f}; int8 AP {q['AP']:.4f} AP50 {q['AP50']:.4f}; "
                f"{self.matched}/{self.total} matched")


@pytest.fixture(scope="module")
def accuracy(fitted, networks, reference):
    """``{"fitted": Agreement, "held-out": Agreement}``."""
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.deploy.quantize import match_rate

    model, dataset, _, held_out = fitted
    _, float_path, int8_path, _ = networks
    result = {}
    for name, images in (("fitted", dataset), ("held-out", held_out)):
        paths = [image[1] for image in images.images]
        float32 = reference if name == "fitted" else detect_all(OnnxRuntimeSSD(model, float_path), paths)
        quantized = detect_all(OnnxRuntimeSSD(model, int8_path), paths)
        result[name] = Agreement(coco_stats(images, float32), coco_stats(images, quantized),
                                 *match_rate(float32, quantized))
    return result


def test_the_fitted_model_detects(accuracy):
    fitted = accuracy["fitted"]
    assert fitted.float32["AP50"] >= 0.4 and fitted.float32["AP"] >= 0.2, fitted
    assert fitted.total >= 3 * FITTED_IMAGES, fitted  # detections scoring >= 0.3 on every image, on average


def test_int8_stays_close_to_float32(accuracy):
    """What int8 is measured to keep on this model (benchmark.py --sections int8 has the fuller numbers): on the
    fitted images AP and AP50 within 3 points and 80% of the detections (one to one: see match_rate); on held-out
    images, where the model's few confident detections are not the objects (its AP there is near 0), int8 still
    has to find two thirds of them. A broken quantization (a quantized L2 normalisation, int8 class logits,
    ReduceSum over all axes) misses these by far."""
    fitted, held_out = accuracy["fitted"], accuracy["held-out"]
    assert abs(fitted.int8["AP"] - fitted.float32["AP"]) <= 0.03, fitted
    assert abs(fitted.int8["AP50"] - fitted.float32["AP50"]) <= 0.03, fitted
    assert fitted.matched >= 0.80 * fitted.total, fitted
    assert held_out.total >= HELD_OUT_IMAGES and held_out.matched >= 2 / 3 * held_out.total, held_out


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="int8 moves boxes by a few percent (the box offsets get noise from the quantized trunk): "
                          "fewer than 95% of float32's detections have a twin at IoU >= 0.9; int8 stays opt-in")
def test_int8_finds_95_percent_of_float32s_detections(accuracy):
    """The bar for making int8 the default on CPU, its unmet part: int8 finds at least 95% of float32's detections
    scoring >= 0.3 (same label, IoU >= 0.9). The other part, AP and AP50 within 1 point, is met: the next test."""
    fitted = accuracy["fitted"]
    assert fitted.matched >= 0.95 * fitted.total, fitted


def test_int8_keeps_ap_within_one_point(accuracy):
    fitted = accuracy["fitted"]
    assert abs(fitted.int8["AP"] - fitted.float32["AP"]) <= 0.01, fitted
    assert abs(fitted.int8["AP50"] - fitted.float32["AP50"]) <= 0.01, fitted


def openvino(fitted, path, precision):
    """OpenVINO's detections on the fitted images with the network ``path`` in ``precision``."""
    from cv.detection.deploy.openvino_backend import OpenVinoSSD

    model, dataset, _, _ = fitted
    return detect_all(OpenVinoSSD(model, path, precision), [image[1] for image in dataset.images])


def kept(detections, threshold=0.3):
    """``(boxes, scores, labels)`` of one image's detections scoring at least ``threshold``, as NumPy arrays."""
    keep = detections["scores"].numpy() >= threshold
    return detections["boxes"].numpy()[keep], detections["scores"].numpy()[keep], detections["labels"].numpy()[keep]


def test_openvino_float32_gives_onnxruntimes_detections(fitted, networks, reference):
    """The same float32 file in OpenVINO: on every fitted image as many detections scoring >= 0.3, each of ONNX
    Runtime's with its own twin of the same label, box within 1e-3 px and score within 3e-4. OpenVINO's kernels round
    differently (its scores were measured up to 1.2e-4 from ONNX Runtime's on the end-to-end file), so near-equal
    scores may swap places, which in the long tail below 0.3 reorders the list."""
    total = 0
    for expected, got in zip(reference, openvino(fitted, networks[1], "float32"), strict=True):
        (boxes, scores, labels), (other_boxes, other_scores, other_labels) = kept(expected), kept(got)
        assert len(other_labels) == len(labels)
        free = list(range(len(labels)))
        for box, score, label in zip(boxes, scores, labels):
            twins = [k for k in free if other_labels[k] == label and np.abs(other_boxes[k] - box).max() <= 1e-3
                     and abs(other_scores[k] - score) <= 3e-4]
            assert twins, (box, score, label)
            free.remove(twins[0])
        total += len(labels)
    assert total >= 3 * FITTED_IMAGES


def test_openvino_int8_stays_close_to_float32(fitted, networks, reference):
    """OpenVINO on the QDQ network keeps what ONNX Runtime's int8 is held to (test_int8_stays_close_to_float32)."""
    from cv.detection.deploy.quantize import match_rate

    _, dataset, _, _ = fitted
    quantized = openvino(fitted, networks[2], "int8")
    f, q = coco_stats(dataset, reference), coco_stats(dataset, quantized)
    matched, total = match_rate(reference, quantized)
    summary = f"float32 AP {f['AP']:.4f} AP50 {f['AP50']:.4f}; openvino int8 AP {q['AP']:.4f} AP50 {q['AP50']:.4f}; " \
              f"{matched}/{total} matched"
    assert abs(q["AP"] - f["AP"]) <= 0.03 and abs(q["AP50"] - f["AP50"]) <= 0.03, summary
    assert matched >= 0.80 * total, summary


def test_openvino_bfloat16_stays_close_to_float32_or_runs_float32(fitted, networks, reference):
    """On a CPU with BF16, bfloat16 keeps AP within BFLOAT16_AP of float32's and twins BFLOAT16_TWINS of its
    detections; on a CPU without it, OpenVINO says so in one line and runs float32, which holds to the same bar."""
    from cv.detection.deploy.openvino_backend import OpenVinoSSD, require_openvino, supports_bfloat16
    from cv.detection.deploy.quantize import match_rate

    model, dataset, _, _ = fitted
    said = []
    detector = OpenVinoSSD(model, networks[1], "bfloat16", log=said.append)
    if supports_bfloat16(require_openvino().Core()):
        assert detector.precision == "bfloat16" and said == []
    else:
        assert detector.precision == "float32" and len(said) == 1 and "running float32 instead" in said[0]
    half = detect_all(detector, [image[1] for image in dataset.images])
    f, h = coco_stats(dataset, reference), coco_stats(dataset, half)
    matched, total = match_rate(reference, half)
    summary = f"float32 AP {f['AP']:.4f}; {detector.precision} AP {h['AP']:.4f}; {matched}/{total} matched"
    assert abs(h["AP"] - f["AP"]) <= BFLOAT16_AP and matched >= BFLOAT16_TWINS * total, summary


def test_calibration_method_and_extra_float32_nodes_are_applied_and_recorded(fitted, networks, tmp_path):
    """quantize()'s experiment settings (benchmark.py --sections calibration): the named trunk convolution keeps
    float32 weights, and the JSON records the method and the node, while the default network records the recipe."""
    import onnx

    from cv.detection.deploy.quantize import RECIPE, calibration_images, quantize

    model, _, calibration, _ = fitted
    _, float_path, int8_path, _ = networks
    assert json.loads(open(int8_path + ".json").read())["recipe"] == RECIPE
    conv = next(n.name for n in onnx.load(float_path).graph.node if n.op_type == "Conv")  # conv1_1
    path = quantize(model, float_path, str(tmp_path / "variant.onnx"), calibration_images(str(calibration), 2),
                    method="Percentile", also_float=[conv])
    recipe = json.loads(open(path + ".json").read())["recipe"]
    assert recipe == {**RECIPE, "calibration": "Percentile", "float32_nodes": [conv]}
    variant = onnx.load(path)
    producers = {out: n for n in variant.graph.node for out in n.output}
    (node,) = [n for n in variant.graph.node if n.name == conv]
    assert node.input[1] in {t.name for t in variant.graph.initializer} and node.input[1] not in producers
    others = [n for n in variant.graph.node if n.op_type == "Conv" and ".head." not in n.name and n.name != conv]
    assert len(others) == 22 and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_quantized_once_per_weights_and_calibration(fitted, networks):
    """The first quantization said what it did and how long it took; asked again, the cached file is returned
    without a word; other calibration images make another file."""
    from cv.detection.deploy.quantize import cached_quantized_export, calibration_images

    model, _, calibration, _ = fitted
    cache_root, _, int8_path, messages = networks
    assert len(messages) == 2 and "calibrated on 16 images" in messages[0] and messages[1].startswith("quantized in")
    again = []
    paths = calibration_images(str(calibration))
    assert cached_quantized_export(model, str(cache_root / "onnx"), paths, log=again.append) == int8_path
    assert again == []
    info = json.loads(open(int8_path + ".json").read())
    assert info["precision"] == "int8" and len(info["calibration_images"]) == 16
    from cv.detection.deploy import quantize

    other = quantize.files_fingerprint(paths[:-1])
    assert other != quantize.files_fingerprint(paths)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_infer_int8(fitted, networks, tmp_path, monkeypatch, capsys, backend):
    """``infer.sh --precision int8`` (ONNX Runtime implied, or OpenVINO) on the fitted images: it reuses the cached
    int8 network (same weights, same calibration images), says which backend and precision it runs, and writes the
    detections the int8 detector gives; and, computed independently of ONNX, they are twins of the float32 OneFlow
    model's."""
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.deploy.openvino_backend import OpenVinoSSD
    from cv.detection.deploy.quantize import match_rate
    from cv.detection.ssd300_vgg16 import infer

    model, dataset, calibration, _ = fitted
    cache_root, _, int8_path, _ = networks
    weights = tmp_path / "weights"
    flow.save(model.state_dict(), str(weights))
    monkeypatch.setenv("FLOWVISION_CACHE", str(cache_root))
    images = [image[1] for image in dataset.images]
    chosen = [] if backend == "onnxruntime" else ["--backend", backend]
    args = infer.get_args_parser().parse_args(
        ["--weights", str(weights), "--precision", "int8", "--calibration-data", str(calibration), "--images", *images,
         "--output-dir", str(tmp_path / "out"), "--batch-size", "1", *chosen])
    infer.main(args)
    out = capsys.readouterr().out
    assert f"backend {backend} (int8), device cpu" in out
    assert "exporting" not in out and "quantizing" not in out
    runtime = OnnxRuntimeSSD(model, int8_path) if backend == "onnxruntime" else OpenVinoSSD(model, int8_path, "int8")
    expected = detect_all(runtime, images)
    written = []
    for path, det in zip(images, expected):
        record = json.loads((tmp_path / "out" / (os.path.splitext(os.path.basename(path))[0] + ".json")).read_text())
        keep = det["scores"].numpy() >= 0.3
        assert [d["label"] for d in record["detections"]] == det["labels"].numpy()[keep].tolist()
        np.testing.assert_allclose([d["box"] for d in record["detections"]], det["boxes"].numpy()[keep].reshape(-1, 4),
                                   atol=0.01)
        written.append({"boxes": np.array([d["box"] for d in record["detections"]], np.float32).reshape(-1, 4),
                        "scores": np.array([d["score"] for d in record["detections"]], np.float32),
                        "labels": np.array([d["label"] for d in record["detections"]])})
    # Fewer twins than test_int8_stays_close_to_float32 counts: int8 detections scoring under 0.3 are not written.
    matched, total = match_rate(detect_all(model, images), written)
    assert total >= 3 * FITTED_IMAGES and matched >= 2 / 3 * total, (matched, total)


def test_infer_int8_needs_onnxruntime(tmp_path):
    from cv.detection.ssd300_vgg16 import infer

    args = infer.get_args_parser().parse_args(["--weights", str(tmp_path), "--precision", "int8", "--backend",
                                               "oneflow"])
    with pytest.raises(ValueError, match="--precision int8 runs on ONNX Runtime"):
        infer.main(args)
    args = infer.get_args_parser().parse_args(["--weights", str(tmp_path), "--calibration-data", str(tmp_path)])
    with pytest.raises(ValueError, match="--calibration-data is for --precision int8"):
        infer.main(args)


def test_unshare_initializers():
    """Two convolutions reading one bias tensor each get their own copy, with the same values."""
    import onnx
    from onnx import helper, numpy_helper

    from cv.detection.deploy.quantize import unshare_initializers

    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1"),
             helper.make_node("Conv", ["y", "w", "b"], ["z"], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
                              [weight, bias])
    model = unshare_initializers(helper.make_model(graph))
    c1, c2 = model.graph.node
    assert list(c1.input[1:]) == ["w", "b"] and list(c2.input[1:]) == ["w/c2", "b/c2"]
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(values["b/c2"], values["b"])
    np.testing.assert_array_equal(values["w/c2"], values["w"])
    onnx.checker.check_model(model)


def test_match_rate_pairs_one_to_one_on_hand_built_boxes():
    """Two float32 detections of one object (IoU 0.95 with each other) and one int8 box on it: one twin, not two.
    A box of another label, or at IoU below 0.9, is no twin; detections below the score threshold are not counted."""
    from cv.detection.deploy.quantize import match_rate

    reference = [{"boxes": np.array([[0, 0, 100, 100], [0, 0, 100, 95], [200, 200, 300, 300], [0, 0, 10, 10]], "f4"),
                  "scores": np.array([0.9, 0.8, 0.7, 0.1], "f4"), "labels": np.array([1, 1, 2, 1])}]
    one_box = [{"boxes": np.array([[0, 0, 100, 97]], "f4"), "scores": np.array([0.5], "f4"), "labels": np.array([1])}]
    assert match_rate(reference, one_box) == (1, 3)
    both = [{"boxes": np.array([[0, 0, 100, 97], [1, 1, 100, 96], [200, 200, 300, 300]], "f4"),
             "scores": np.array([0.5, 0.4, 0.3], "f4"), "labels": np.array([1, 1, 3])}]
    assert match_rate(reference, both) == (2, 3)  # the third has the wrong label
    shifted = [{"boxes": np.array([[20, 0, 120, 100]], "f4"), "scores": np.array([0.9], "f4"),
                "labels": np.array([1])}]  # IoU 80 / 120 = 0.67 with the first
    assert match_rate(reference, shifted) == (0, 3)
