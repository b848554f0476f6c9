"""An end-to-end ONNX model of an SSD: images in, final detections out, runnable with nothing of ours.

The network (trunk and heads) is exported by our converter (:func:`cv.detection.deploy.onnx_backend.export`, opset
12, for ``model.size``), its batch dimension made dynamic, and the pre- and post-processing of :class:`SSD` are
composed around it with ``onnx.helper`` into one graph (opset 12: dynamic ``Resize`` and ``NonMaxSuppression`` need
11). Any ONNX runtime with those operators runs the file; ONNX Runtime and OpenVINO (CPU) are checked here.
OpenVINO 2026.4.1 reads ONNX's ``TopK`` as unstable, so the order of equal scores needs
:func:`cv.detection.deploy.openvino_backend.read_onnx` (or its loop, shown in docs/deploy.md) to be ONNX's.

Contract of the exported model
------------------------------
Input ``images``: uint8 ``[N, 3, H, W]``, RGB, channels first (``np.asarray(pil_image).transpose(2, 0, 1)`` stacked);
``N``, ``H`` and ``W`` are dynamic, but one run's images share one size (run images of other sizes separately).
Inside: ``/ 255``, bilinear resize to ``model.size`` (half-pixel centres, no antialiasing: ``F.interpolate(...,
mode="bilinear", align_corners=False)`` as :meth:`SSD.preprocess`), then ``(x - image_mean) / image_std``.

Outputs, ``K = min(detections_per_img, topk_candidates * (num_classes - 1))`` rows per image (200 for SSD300):

* ``boxes``: float32 ``[N, K, 4]``, ``[x1, y1, x2, y2]`` in pixels of the input image;
* ``scores``: float32 ``[N, K]``, decreasing;
* ``labels``: int64 ``[N, K]``, ``1 .. num_classes - 1`` (names in the metadata ``class_names``);
* ``num_detections``: int64 ``[N]``. Rows from ``num_detections[i]`` on are padding: boxes and scores 0, label 0
  (the background, never a detection).

The post-processing is :meth:`SSD.postprocess_detections`: softmax, background dropped; boxes decoded with the
model's :class:`BoxCoder` weights and clamp and clipped to the resized input; per class, the ``topk_candidates``
best default boxes (ties: the lower default-box index), of which those scoring above ``score_thresh`` and at least
``MIN_BOX_SIZE`` wide and high are candidates; ``NonMaxSuppression`` per class at ``nms_thresh`` (a box is dropped
when its IoU with a kept box of its class is above it); the ``detections_per_img`` best of all classes; boxes scaled
to the input size. Equal scores are ordered as ours are: within a class the lower default box first, across classes
by rank in its class, then by label. ONNX's ``NonMaxSuppression`` leaves the order of equal scores open (ONNX
Runtime 1.16 takes the lower index first; its older heap-based kernel, and other runtimes, need not), so it is
given each class's candidates in their order with strictly decreasing stand-in scores: any conforming runtime then
suppresses as ours does. What can differ from the
OneFlow model is float rounding (softmax, exp, resize): scores agree to about 1e-6 and boxes to a thousandth of a
pixel, two scores that close may be listed the other way round, and a candidate within rounding of the top-k,
score or IoU boundary may fall the other way.

Metadata (``metadata_props``): ``class_names`` (JSON list by label, 0 the background), ``source_weights`` (what the
weights were loaded from), ``weights_sha256`` (:func:`~cv.detection.deploy.onnx_backend.weights_fingerprint`: the
parameters and buffers, whatever file held them), ``source_sha256`` (the file's, when the source is one file), the
post-processing settings, and ``contract`` (this input/output summary).
"""
import json
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cv.detection.deploy.onnx_backend import export, weights_fingerprint
from cv.detection.models.ssd import MIN_BOX_SIZE
from cv.detection.utils import cli, fileio, hub

INPUT = "images"
OUTPUTS = ("boxes", "scores", "labels", "num_detections")
# The batch size the network is traced with before its batch dimension is made dynamic: not 1, so that no
# reshape of a parameter (whose leading 1 is not the batch) can be mistaken for the batch.
TRACE_BATCH = 2
CONTRACT = ("input images: uint8 [N,3,H,W] RGB (one size per run); outputs boxes float32 [N,K,4] x1y1x2y2 in input "
            "pixels, scores float32 [N,K] decreasing, labels int64 [N,K], num_detections int64 [N]; rows from "
            "num_detections on are padding (label 0, score 0)")


class _Graph:
    """Nodes and constants being added to a graph, with names under ``prefix``."""

    def __init__(self, prefix):
        self.prefix, self.nodes, self.initializers, self.count = prefix, [], [], 0

    def _name(self, what):
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, value, dtype=np.float32):
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, *inputs, outputs=1, **attrs):
        """Add one ``op_type`` node; its output name (a list of them if ``outputs > 1``)."""
        name = self._name(op_type)
        names = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=name, **attrs))
        return names if outputs > 1 else names[0]


def network_model(model, work_dir):
    """``(onnx ModelProto, grid sizes)``: ``model``'s network exported by our converter for ``model.size``, its
    batch dimension made dynamic (:func:`dynamic_batch`)."""
    path = export(model, os.path.join(work_dir, "network.onnx"), TRACE_BATCH)
    with open(path + ".json") as f:
        grid_sizes = [tuple(g) for g in json.load(f)["grid_sizes"]]
    return dynamic_batch(onnx.load(path), TRACE_BATCH), grid_sizes


def dynamic_batch(network, batch):
    """``network`` (traced for ``batch`` images) with a dynamic batch dimension ``N``: every reshape of an activation
    copies its leading dimension from its input (0 in ``Reshape``'s shape) instead of the traced ``batch``.

    The traced shapes are checked, not guessed: a reshape of an activation whose target does not start with
    ``batch``, or whose target is not a constant, is a graph this function does not know (RuntimeError)."""
    graph = network.graph
    initializers = {t.name: t for t in graph.initializer}
    targets = {}
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] in initializers:
            continue
        shape = initializers.get(node.input[1])
        target = None if shape is None else numpy_helper.to_array(shape).copy()
        if target is None or target.ndim != 1 or target[0] != batch:
            raise RuntimeError(f"cannot make the batch dynamic: reshape {node.name} has target {target}, not one "
                               f"starting with the traced batch {batch}")
        target[0] = 0
        targets[node.input[1]] = target
    for name, target in targets.items():
        initializers[name].CopyFrom(numpy_helper.from_array(target, name))
    del graph.value_info[:]  # traced shapes with the fixed batch; runtimes infer them again
    for value in list(graph.input) + list(graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return network


def preprocess(g, model, network_input):
    """Nodes from ``images`` (uint8) to the network's input: float 0-1, bilinear resize, normalisation."""
    x = g.op("Div", g.op("Cast", INPUT, to=TensorProto.FLOAT), g.const(255.0))
    batch_and_channels = g.op("Slice", g.op("Shape", INPUT), g.const([0], np.int64), g.const([2], np.int64))
    sizes = g.op("Concat", batch_and_channels, g.const(list(model.size), np.int64), axis=0)
    # Resize-11: with ``sizes`` given, ``roi`` and ``scales`` are empty. half_pixel with a linear mode is
    # align_corners=False: source coordinate (x + 0.5) * in / out - 0.5, clamped to the image, no antialiasing.
    x = g.op("Resize", x, g.const([], np.float32), g.const([], np.float32), sizes, mode="linear",
             coordinate_transformation_mode="half_pixel")
    mean = g.const(np.reshape(model.image_mean, (1, 3, 1, 1)))
    std = g.const(np.reshape(model.image_std, (1, 3, 1, 1)))
    g.nodes.append(_identity(g.op("Div", g.op("Sub", x, mean), std), network_input))


def _identity(source, target):
    return helper.make_node("Identity", [source], [target], name=f"{target}/from_preprocess")


def decode_boxes(g, model, codes, anchors):
    """Nodes decoding ``codes [N, A, 4]`` against ``anchors [A, 4]`` (as :meth:`BoxCoder.decode`, the same float32
    operations in the same order), clipped to ``model.size``: ``(boxes [N, A, 4], nonempty [N, A] bool)``."""
    wx, wy, ww, wh = model.box_coder.weights
    anchors = anchors.astype(np.float32)
    ref_w = anchors[:, 2] - anchors[:, 0]
    ref_h = anchors[:, 3] - anchors[:, 1]
    ref_x = anchors[:, 0] + np.float32(0.5) * ref_w
    ref_y = anchors[:, 1] + np.float32(0.5) * ref_h
    dx, dy, dw, dh = g.op("Split", codes, outputs=4, axis=2)  # [N, A, 1] each; reference values as [A, 1]

    def col(values):
        return g.const(values[:, None])

    x = g.op("Add", g.op("Mul", g.op("Div", dx, g.const(wx)), col(ref_w)), col(ref_x))
    y = g.op("Add", g.op("Mul", g.op("Div", dy, g.const(wy)), col(ref_h)), col(ref_y))
    clip = g.const(model.box_coder.bbox_xform_clip)
    half_w = g.op("Mul", g.op("Mul", g.const(0.5), g.op("Exp", g.op("Min", g.op("Div", dw, g.const(ww)), clip))),
                  col(ref_w))
    half_h = g.op("Mul", g.op("Mul", g.const(0.5), g.op("Exp", g.op("Min", g.op("Div", dh, g.const(wh)), clip))),
                  col(ref_h))
    height, width = model.size
    zero = g.const(0.0)
    x1, x2 = (g.op("Clip", v, zero, g.const(float(width))) for v in (g.op("Sub", x, half_w), g.op("Add", x, half_w)))
    y1, y2 = (g.op("Clip", v, zero, g.const(float(height))) for v in (g.op("Sub", y, half_h), g.op("Add", y, half_h)))
    least = g.const(MIN_BOX_SIZE)
    nonempty = g.op("And", g.op("GreaterOrEqual", g.op("Sub", x2, x1), least),
                    g.op("GreaterOrEqual", g.op("Sub", y2, y1), least))
    return g.op("Concat", x1, y1, x2, y2, axis=2), g.op("Squeeze", nonempty, axes=[2])


def candidates(g, model, logits, boxes, nonempty, num_anchors):
    """Per image and class, the ``k`` best default boxes: ``(scores, boxes, usable)`` of shapes ``[N, C-1, k]``,
    ``[N, C-1, k, 4]`` and ``[N, C-1, k]`` (bool: above ``score_thresh`` and not empty), in decreasing score."""
    num_classes = model.num_classes
    k = min(model.topk_candidates, num_anchors)
    probabilities = g.op("Softmax", logits, axis=2)  # opset 12: over the last axis of [N, A, C]
    scores = g.op("Slice", probabilities, g.const([1], np.int64), g.const([num_classes], np.int64),
                  g.const([2], np.int64))  # background dropped
    top_scores, top_index = g.op("TopK", g.op("Transpose", scores, perm=[0, 2, 1]), g.const([k], np.int64),
                                 outputs=2, axis=2, largest=1, sorted=1)  # ties: the lower index first
    batch = g.op("Gather", g.op("Shape", logits), g.const(0, np.int64), axis=0)
    offsets = g.op("Mul", g.op("Range", g.const(0, np.int64), batch, g.const(1, np.int64)),
                   g.const(num_anchors, np.int64))
    flat_index = g.op("Add", top_index, g.op("Reshape", offsets, g.const([-1, 1, 1], np.int64)))
    top_boxes = g.op("Gather", g.op("Reshape", boxes, g.const([-1, 4], np.int64)), flat_index, axis=0)
    top_nonempty = g.op("Gather", g.op("Reshape", nonempty, g.const([-1], np.int64)), flat_index, axis=0)
    usable = g.op("And", top_nonempty, g.op("Greater", top_scores, g.const(model.score_thresh)))
    return top_scores, top_boxes, usable, k


def suppress(g, model, top_boxes, usable, k):
    """``NonMaxSuppression`` per image and class: ``[N, C-1, k]`` float, 1 where a candidate is kept.

    Each (image, class) is one NMS "batch" of its ``k`` candidates, scored ``k, k-1, ..., 1`` in their order
    (unusable ones -1, under the score threshold 0): strictly decreasing stand-ins, so the greedy visiting order is
    the candidates' order whatever the runtime does with equal scores."""
    stand_in = g.op("Where", usable, g.const(np.arange(k, 0, -1)), g.const(-1.0))
    nms_boxes = g.op("Reshape", top_boxes, g.const([-1, k, 4], np.int64))
    nms_scores = g.op("Reshape", stand_in, g.const([-1, 1, k], np.int64))
    selected = g.op("NonMaxSuppression", nms_boxes, nms_scores, g.const([k], np.int64),
                    g.const([model.nms_thresh]), g.const([0.0]))  # [M, 3]: (image * (C-1) + class, 0, candidate)
    where = g.op("Gather", selected, g.const([0, 2], np.int64), axis=1)
    flat = g.op("Reshape", stand_in, g.const([-1, k], np.int64))
    ones = g.op("ConstantOfShape", g.op("Shape", g.op("Gather", selected, g.const(0, np.int64), axis=1)),
                value=_tensor(1.0))
    kept = g.op("ScatterND", g.op("ConstantOfShape", g.op("Shape", flat), value=_tensor(0.0)), where, ones)
    return g.op("Reshape", kept, g.op("Shape", stand_in))


def _tensor(value):
    return numpy_helper.from_array(np.array([value], dtype=np.float32))


def best_detections(g, model, top_scores, top_boxes, kept, k):
    """The ``detections_per_img`` best kept candidates of each image, padded (see the module docstring), boxes still
    in pixels of the resized input: ``(boxes, scores, labels, valid)``.

    The candidates are laid out rank-major (``[N, k, C-1]`` flattened: rank in its class, then class), so that
    ``TopK``'s lower-index-first order of equal scores is :meth:`SSD.postprocess_detections`' order."""
    classes = model.num_classes - 1

    def rank_major(t):  # [N, C-1, k] -> [N, k * (C-1)]
        return g.op("Reshape", g.op("Transpose", t, perm=[0, 2, 1]), g.const([0, -1], np.int64))

    kept_flat = rank_major(kept)
    key = g.op("Where", g.op("Greater", kept_flat, g.const(0.5)), rank_major(top_scores), g.const(-1.0))
    count = min(model.detections_per_img, k * classes)
    scores, index = g.op("TopK", key, g.const([count], np.int64), outputs=2, axis=1, largest=1, sorted=1)
    valid = g.op("Greater", g.op("GatherElements", kept_flat, index, axis=1), g.const(0.5))
    labels = g.op("Add", g.op("Mod", index, g.const(classes, np.int64)), g.const(1, np.int64))
    boxes_flat = g.op("Reshape", g.op("Transpose", top_boxes, perm=[0, 2, 1, 3]), g.const([0, -1, 4], np.int64))
    box_index = g.op("Expand", g.op("Unsqueeze", index, axes=[2]), g.const([1, 1, 4], np.int64))
    boxes = g.op("GatherElements", boxes_flat, box_index, axis=1)
    return boxes, scores, labels, valid


def outputs(g, model, boxes, scores, labels, valid):
    """The graph's outputs: boxes scaled to the input image (as ours: ``w / width`` in double, then float32),
    padding zeroed, and the count per image."""
    shape = g.op("Cast", g.op("Shape", INPUT), to=TensorProto.DOUBLE)
    height, width = model.size
    h = g.op("Gather", shape, g.const([2], np.int64), axis=0)
    w = g.op("Gather", shape, g.const([3], np.int64), axis=0)
    fx, fy = g.op("Div", w, g.const([width], np.float64)), g.op("Div", h, g.const([height], np.float64))
    scale = g.op("Cast", g.op("Concat", fx, fy, fx, fy, axis=0), to=TensorProto.FLOAT)
    boxes = g.op("Mul", boxes, scale)
    g.nodes.append(_where("boxes", g.op("Unsqueeze", valid, axes=[2]), boxes, g.const(0.0)))
    g.nodes.append(_where("scores", valid, scores, g.const(0.0)))
    g.nodes.append(_where("labels", valid, labels, g.const(0, np.int64)))
    count = g.op("Cast", valid, to=TensorProto.INT64)
    g.nodes.append(helper.make_node("ReduceSum", [count], ["num_detections"], name="num_detections", axes=[1],
                                    keepdims=0))


def _where(name, condition, value, padding):
    return helper.make_node("Where", [condition, value, padding], [name], name=name)


def compose(model, network, grid_sizes):
    """One ``ModelProto``: :func:`preprocess`, ``network`` (from :func:`network_model`), and the post-processing."""
    weights = {t.name for t in network.graph.initializer}
    (network_input,) = [i.name for i in network.graph.input if i.name not in weights]
    logits, codes = (o.name for o in network.graph.output)  # _Network returns (cls_logits, bbox_regression)
    anchors = model.anchor_generator(grid_sizes, model.size, "cpu").numpy()
    pre, post = _Graph("preprocess/"), _Graph("postprocess/")
    preprocess(pre, model, network_input)
    boxes, nonempty = decode_boxes(post, model, codes, anchors)
    top_scores, top_boxes, usable, k = candidates(post, model, logits, boxes, nonempty, len(anchors))
    kept = suppress(post, model, top_boxes, usable, k)
    outputs(post, model, *best_detections(post, model, top_scores, top_boxes, kept, k))
    count = min(model.detections_per_img, k * (model.num_classes - 1))
    graph = helper.make_graph(
        pre.nodes + list(network.graph.node) + post.nodes, "ssd_end_to_end",
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", count, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", count]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", count]),
         helper.make_tensor_value_info("num_detections", TensorProto.INT64, ["N"])],
        pre.initializers + list(network.graph.initializer) + post.initializers)
    composed = helper.make_model(graph, opset_imports=list(network.opset_import), producer_name="cv.detection",
                                 doc_string=CONTRACT)
    composed.ir_version = network.ir_version
    onnx.checker.check_model(composed)
    return composed


def metadata(model, class_names, source):
    """``metadata_props`` of the export (see the module docstring)."""
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    local = source is not None and not hub.is_url(source) and os.path.isfile(source)
    props = {
        "class_names": json.dumps(list(class_names)),
        "source_weights": os.path.abspath(source) if source is not None and not hub.is_url(source) else str(source),
        "weights_sha256": weights_fingerprint(model),
        "score_threshold": repr(model.score_thresh), "nms_threshold": repr(model.nms_thresh),
        "topk_candidates": str(model.topk_candidates), "detections_per_img": str(model.detections_per_img),
        "min_box_size": repr(MIN_BOX_SIZE), "input_size": json.dumps(list(model.size)), "contract": CONTRACT,
    }
    if local:
        props["source_sha256"] = hub.file_sha256(source)
    return props


def check_output_path(path):
    """ValueError naming ``path`` unless a file can be written there (its folder created if needed)."""
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a directory; give the .onnx file to write")
    cli.writable_dir(os.path.dirname(os.path.abspath(path)), f"--output {path}: its folder")
    return path


def export_end_to_end(model, path, class_names, source=None):
    """Write ``model`` (an :class:`SSD`) as one end-to-end ONNX file ``path`` (contract: the module docstring),
    with ``class_names`` (by label) and where its weights came from (``source``) in the metadata. The output path
    is checked first (ValueError naming it) and written atomically: no partial file on any failure. Returns
    ``path``."""
    check_output_path(path)
    model = model.to("cpu").eval()
    props = metadata(model, class_names, source)
    with tempfile.TemporaryDirectory(prefix="onnx-e2e-") as work:
        network, grid_sizes = network_model(model, work)
    composed = compose(model, network, grid_sizes)
    onnx.helper.set_model_props(composed, props)
    with fileio.atomic_path(path) as tmp:
        onnx.save(composed, tmp)
    return path
