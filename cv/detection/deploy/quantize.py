"""Static int8 quantization of SSD300-VGG16's exported network, for ONNX Runtime on CPU.

The float32 network that :mod:`cv.detection.deploy.onnx_backend` exports is quantized with ONNX Runtime's own tools
(``onnxruntime.quantization.quantize_static``): QDQ format (QuantizeLinear/DequantizeLinear pairs around float
operators, which ONNX Runtime fuses into int8 kernels when it loads the model), int8 weights with one scale per
output channel, uint8 activations with ranges calibrated on images of the training data (the unsigned-activation,
signed-weight pairing is the one its x86 kernels run fastest, with AVX2 or AVX-512 VNNI). What is quantized is the
trunk, where the arithmetic is (VGG16's convolutions, its max-pools, and the extra blocks: 98% of it). Three parts
stay float32 (quantizing them too cost AP and matched detections on a fitted model, and saves little time):

- the conv4_3 L2 normalisation (a square, a sum over channels, a reciprocal square root): squaring in 8 bits
  loses the small values;
- the twelve head convolutions (2% of the arithmetic): an int8 convolution also gives int8 output, which would
  put the class logits on a grid of one 255th of their range and the box offsets on one of theirs;
- the reshapes and the concatenation of the head outputs (a shared scale over all six maps otherwise).

Post-processing (softmax, box decoding, NMS) is not part of the network: it stays the model's own float32 code.

Two steps come before quantizing:

- **Opset 13.** Per-channel QDQ needs opset 13 (``axis`` of QuantizeLinear/DequantizeLinear). Our exporter,
  ``oneflow-onnx`` 0.6.2, writes ReduceSum's ``axes`` as an attribute whatever the opset, but opset 13 moved it to
  an input, so its opset-13 graph is wrong (see ``onnx_backend.OPSET``; ONNX Runtime 1.16 refuses the attribute
  there, and a runtime that ignores it sums over every axis). So the network is
  exported at opset 12, where the attribute is right, and converted with ONNX's own version converter, which turns
  the attribute into an input; :func:`to_opset13` checks that it did, and the tests that both give bit-identical
  outputs.
- **One initializer per use.** The exporter's simplifier merges equal constants, so convolutions whose biases are
  equal (zero-initialised ones) share one bias tensor. A bias is quantized with the scales of the convolution
  that uses it, so a shared one is quantized for one of them and wrong for the others (and ONNX Runtime 1.16
  fails on the duplicated dequantization once the fusion does not apply). :func:`unshare_initializers` gives every
  use its own copy first.

A quantized network is cached beside the float32 one, keyed by the weights, the calibration images (their
content) and :data:`RECIPE`, so ``infer.sh --precision int8`` quantizes once per set of weights and calibration
data.
"""
import glob
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np
import oneflow as flow

from cv.detection.models.box_ops_numpy import box_iou
from cv.detection.utils import fileio
from cv.detection.utils.arrays import as_numpy

# Everything that decides the quantized network besides the weights and the calibration images: part of the
# cache key, so changing any of it re-quantizes.
RECIPE = {"version": 1, "format": "QDQ", "per_channel": True, "activations": "uint8", "weights": "int8",
          "calibration": "MinMax", "opset": 13, "float32": ["l2norm", "head"]}
# Calibration images: the activation ranges are the extremes seen over these (MinMax). On the sample dataset 16 and
# 32 images gave identical ranges: the extremes come from a few images.
DEFAULT_CALIBRATION_IMAGES = 16
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def _require_quantization_tools():
    """ONNX Runtime's quantization package, or a one-line error (:class:`cli.UserError`) saying what to install."""
    try:
        import onnx
        from onnxruntime import quantization
    except (ImportError, AttributeError) as e:
        import onnx

        from cv.detection.utils.cli import UserError

        raise UserError(f"int8 quantization needs onnx >= 1.14 (ONNX Runtime's quantization tools use its float8 "
                          f"types); this environment has onnx {onnx.__version__} ({e}). "
                          "Run bash scripts/setup.sh to install the pinned versions.") from None
    return onnx, quantization


def to_opset13(model):
    """``model`` (an opset-12 ``ModelProto`` from our exporter) converted to opset 13 by ONNX's version converter.
    Raises ValueError if a ReduceSum still carries ``axes`` as an attribute (it would sum over every axis)."""
    from onnx import version_converter

    converted = version_converter.convert_version(model, 13)
    for node in converted.graph.node:
        if node.op_type == "ReduceSum" and (len(node.input) < 2 or any(a.name == "axes" for a in node.attribute)):
            raise ValueError(f"ReduceSum node {node.name!r} still has its axes as an attribute after conversion to "
                             "opset 13")
    return converted


def unshare_initializers(model):
    """Give every node input that reads an initializer already read by an earlier node its own copy (in place);
    returns ``model``."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    seen = set()
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in initializers:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}/{node.name}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
            seen.add(name)
    return model


def float32_nodes(model):
    """Names of the nodes that stay float32 (see the module docstring): all but the trunk's convolutions, ReLUs and
    max-pools. The trunk is what feeds the L2 normalisation and the heads; the heads' convolutions are the ones
    whose output reaches a graph output through reshapes only."""
    producers = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    head = set()
    # Walk back from each graph output through the data-movement ops to the convolutions that feed them.
    stack = list(outputs)
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in head:
            continue
        head.add(node.name)
        if node.op_type != "Conv":
            stack += [i for i in node.input if i in producers]
    trunk_ops = {"Conv", "Relu", "MaxPool"}
    return sorted(n.name for n in model.graph.node if n.name in head or n.op_type not in trunk_ops)


def image_files(source):
    """Image paths of a calibration source: a COCO-format dataset root (its ``train2017/``), a folder of images
    (searched recursively), sorted."""
    folder = os.path.join(source, "train2017") if os.path.isdir(os.path.join(source, "train2017")) else source
    if not os.path.isdir(folder):
        raise ValueError(f"--calibration-data {source}: no such directory")
    paths = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not paths:
        raise ValueError(f"--calibration-data {source}: no images in {folder}")
    return paths


def calibration_images(source, count=DEFAULT_CALIBRATION_IMAGES):
    """``count`` image paths from ``source`` (see :func:`image_files`), spread evenly over its sorted files (all of
    them when it has fewer)."""
    paths = image_files(source)
    if len(paths) <= count:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, count).round().astype(int)]


def files_fingerprint(paths):
    """SHA-256 over the names (base names) and contents of ``paths``, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _calibration_reader(model, paths, input_name, batch_size):
    """The model's own pre-processing of each calibration image (decode, resize, normalise), ``batch_size`` at a
    time, as ONNX Runtime's CalibrationDataReader; an unreadable image is an error naming it."""
    from onnxruntime.quantization import CalibrationDataReader

    from cv.detection.data.base import load_rgb
    from cv.detection.data.transforms import to_chw_float

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(paths), batch_size))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                return None
            chunk = paths[start:start + batch_size]
            images = []
            for path in chunk:
                try:
                    images.append(flow.tensor(to_chw_float(load_rgb(path))))
                except OSError as e:
                    raise ValueError(f"calibration image {path} cannot be read: {e}") from None
            with flow.no_grad():
                x = model.preprocess(images).numpy()
            if len(x) < batch_size:  # the exported network has a fixed batch: repeat the last image
                x = np.concatenate([x, np.repeat(x[-1:], batch_size - len(x), axis=0)])
            return {input_name: x}

    return Reader()


def quantize(model, float_path, path, calibration_paths, method="MinMax", also_float=()):
    """Quantize the float32 network ``float_path`` (exported from ``model`` by :func:`onnx_backend.export`) into
    ``path``, calibrated on ``calibration_paths`` (images, through ``model``'s pre-processing); the JSON beside it
    is the float32 one's plus the precision and the calibration. Written aside and renamed into place (JSON last).
    Returns ``path``.

    ``method`` and ``also_float`` are for experiments (``benchmark.py --sections calibration``): ONNX Runtime's
    calibration method (``"MinMax"``, ``"Percentile"``: the range that holds 99.999% of the values seen, or
    ``"Entropy"``), and the names of trunk nodes to leave float32 besides the usual ones. Either recorded in the
    JSON's ``recipe`` when not the default."""
    onnx, quantization = _require_quantization_tools()

    with open(float_path + ".json") as f:
        info = json.load(f)
    network = unshare_initializers(to_opset13(onnx.load(float_path)))
    keep_float = float32_nodes(network) + list(also_float)
    with tempfile.TemporaryDirectory(prefix="int8-") as work, fileio.atomic_path(path) as tmp:
        opset13 = os.path.join(work, "opset13.onnx")
        onnx.save(network, opset13)
        reader = _calibration_reader(model, calibration_paths, network.graph.input[0].name, info["batch_size"])
        # ONNX Runtime logs a suggestion to run its shape-inference pre-processing on the root logger; the exporter's
        # simplifier has already done what it would (shapes, constant folding), so users need not see it.
        root = logging.getLogger()
        level, root.level = root.level, max(root.level, logging.ERROR)
        try:
            quantization.quantize_static(
                opset13, tmp, reader, quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=getattr(quantization.CalibrationMethod, method), nodes_to_exclude=keep_float,
                # Percentile's range is symmetric by default, which would waste half of uint8's levels on a ReLU's
                # non-negative outputs.
                extra_options={"CalibTensorRangeSymmetric": False})
        finally:
            root.setLevel(level)
    recipe = RECIPE if (method, tuple(also_float)) == ("MinMax", ()) else {**RECIPE, "calibration": method,
                                                                            "float32_nodes": list(also_float)}
    fileio.write_json(path + ".json", {**info, "precision": "int8", "recipe": recipe,
                                       "calibration_images": [os.path.abspath(p) for p in calibration_paths]})
    return path


def cached_quantized_export(model, cache_dir, calibration_paths, batch_size=1, log=print):
    """The int8 network of ``model`` for ``batch_size`` calibrated on ``calibration_paths``, in ``cache_dir``:
    exported (float32, see :func:`onnx_backend.cached_export`) and quantized first if not there yet."""
    from cv.detection.deploy.onnx_backend import cached_export, weights_fingerprint

    _require_quantization_tools()  # before announcing anything
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode() + files_fingerprint(calibration_paths).encode())
    path = os.path.join(cache_dir, f"ssd300_vgg16-{weights_fingerprint(model)[:16]}-b{batch_size}-int8-"
                                   f"{key.hexdigest()[:12]}.onnx")
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        float_path = cached_export(model, cache_dir, batch_size)
        start = time.perf_counter()
        log(f"quantizing the network to int8 (once for these weights and calibration images), calibrated on "
            f"{len(calibration_paths)} images: {path}")
        quantize(model, float_path, path, calibration_paths)
        log(f"quantized in {time.perf_counter() - start:.0f} s")
    return path


def match_rate(reference, candidate, score_threshold=0.3, iou_threshold=0.9):
    """``(matched, total)``: of ``reference``'s detections scoring at least ``score_threshold`` (per image, dicts of
    ``boxes``, ``scores``, ``labels``: tensors or arrays), how many have a twin in ``candidate``: the same label and
    an IoU of at least ``iou_threshold`` (any score). One to one: the reference's detections, best score first, each
    take the best twin still free, so one candidate box never stands for two reference boxes."""
    matched = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        scores = as_numpy(ref["scores"])
        keep = np.flatnonzero(scores >= score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        boxes, labels = as_numpy(ref["boxes"]).reshape(-1, 4)[keep], as_numpy(ref["labels"])[keep]
        other, other_labels = as_numpy(cand["boxes"]).reshape(-1, 4), as_numpy(cand["labels"])
        total += len(boxes)
        if not len(boxes) or not len(other):
            continue
        iou = box_iou(boxes, other)
        iou[labels[:, None] != other_labels[None, :]] = 0
        for row in iou:
            best = int(row.argmax())
            if row[best] >= iou_threshold:
                matched += 1
                iou[:, best] = 0  # taken
    return matched, total
