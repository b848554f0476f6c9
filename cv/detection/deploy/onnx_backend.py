"""ONNX Runtime backend for SSD300-VGG16 inference on CPU.

The network (VGG16 trunk and the two heads: all the convolutions, 99.9% of the arithmetic) is exported to ONNX with
``oneflow-onnx`` and run by ONNX Runtime, whose CPU kernels use the whole vector width of the machine. Resizing,
normalisation, default boxes, box decoding, NMS and mapping boxes back to each image stay in the :class:`SSD`
module (:class:`ExportedNetworkSSD`, which the OpenVINO backend shares), so all backends share that code and give
the same detections up to float rounding in the network.

An exported network is cached by the fingerprint of its weights and its batch size, next to a small JSON file
describing it, so ``infer.sh --backend onnxruntime`` exports once per checkpoint.
"""
import contextlib
import hashlib
import io
import json
import os
import tempfile
import time

import numpy as np
import oneflow as flow
from oneflow import nn

from cv.detection.utils import fileio

# oneflow-onnx 0.6.2 writes ReduceSum's axes as an attribute, which opset 13 moved to an input: ONNX Runtime then
# sums over every axis (the L2-normalised conv4_3 map came out wrong). Opset 12 still takes the attribute.
OPSET = 12


class _Network(nn.Module):
    """Backbone and heads only: ``[N, 3, H, W]`` normalised input -> ``(cls_logits, bbox_regression)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model.head(self.model.backbone(x))
        return out["cls_logits"], out["bbox_regression"]


class _NetworkGraph(nn.Graph):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def build(self, x):
        return self.network(x)


def network_graph(model):
    """``model``'s backbone and heads as an ``nn.Graph`` (OneFlow's traced static-graph mode): what the ONNX
    exporter converts, and what the benchmark compares with eager."""
    return _NetworkGraph(_Network(model))


def weights_fingerprint(model):
    """SHA-256 of the model's parameters and buffers (names, shapes and values), as a hex string."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = np.ascontiguousarray(tensor.numpy())
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def export(model, path, batch_size=1):
    """Export ``model``'s network for ``batch_size`` images to the ONNX file ``path``, with ``path + ".json"``
    holding the feature-map sizes the post-processing needs; both written aside and renamed into place (the JSON
    last: an export without it is redone). Returns ``path``."""
    from oneflow_onnx.oneflow2onnx.util import export_onnx_model

    model = model.to("cpu").eval()
    graph = network_graph(model)
    x = flow.zeros(batch_size, 3, *model.size)
    graph(x)  # traced once; the exporter converts the traced job
    with flow.no_grad():
        grid_sizes = [tuple(f.shape[-2:]) for f in model.backbone(x[:1])]
    # The exporter reads the weights from a flow.save directory; left to itself it uses a fixed /tmp name that
    # concurrent exports would share, so it gets one of ours.
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as work, fileio.atomic_path(path) as tmp:
        weights = os.path.join(work, "weights")
        flow.save(graph.state_dict(), weights)
        with contextlib.redirect_stdout(io.StringIO()):  # its "Converting model..." lines, naming our temporary
            export_onnx_model(graph, opset=OPSET, flow_weight_dir=weights, onnx_model_path=tmp)
    fileio.write_json(path + ".json", {"batch_size": batch_size, "size": list(model.size), "grid_sizes": grid_sizes,
                                       "num_classes": model.num_classes, "opset": OPSET})
    return path


def cached_export(model, cache_dir, batch_size=1):
    """The ONNX file of ``model`` for ``batch_size`` in ``cache_dir``, exported first if it is not there yet."""
    path = os.path.join(cache_dir, f"ssd300_vgg16-{weights_fingerprint(model)[:16]}-b{batch_size}.onnx")
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        print(f"exporting the network to ONNX (once for these weights): {path}", flush=True)
        start = time.perf_counter()
        export(model, path, batch_size)
        print(f"exported in {time.perf_counter() - start:.0f} s; later runs with these weights reuse it", flush=True)
    return path


class ExportedNetworkSSD:
    """``model``'s inference with its network run from a file of :func:`export` (or its int8 quantization) by
    another runtime: call it like ``model`` in eval mode (``detector(images) -> [{"boxes", "scores", "labels"}]``).
    Pre- and post-processing are ``model``'s own; a subclass runs the network on one batch (:meth:`run_batch`).

    Args:
        model: the :class:`SSD` whose pre- and post-processing (and settings) are used.
        onnx_path: its network exported by :func:`export` (with the JSON beside it). ValueError if that was
            exported for another number of classes or input size.
    """

    def __init__(self, model, onnx_path):
        with open(onnx_path + ".json") as f:
            self.info = json.load(f)
        if self.info["num_classes"] != model.num_classes or tuple(self.info["size"]) != tuple(model.size):
            raise ValueError(f"{onnx_path} was exported for {self.info['num_classes']} classes at "
                             f"{self.info['size']}, not for this model ({model.num_classes} classes at "
                             f"{list(model.size)})")
        self.precision = self.info.get("precision", "float32")  # what the network runs in
        self.batch_size = self.info["batch_size"]
        self.grid_sizes = [tuple(g) for g in self.info["grid_sizes"]]
        self.model = model.eval()

    def run_batch(self, x):
        """``(cls_logits, bbox_regression)`` as NumPy arrays for a contiguous float32 batch of ``batch_size``."""
        raise NotImplementedError

    def network(self, x):
        """Head outputs for a normalised batch ``x`` (numpy ``[N, 3, H, W]``), run ``batch_size`` at a time (the
        last chunk padded with zeros)."""
        n, b = len(x), self.batch_size
        cls, reg = [], []
        for start in range(0, n, b):
            chunk = x[start:start + b]
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            c, r = self.run_batch(np.ascontiguousarray(chunk))
            cls.append(c)
            reg.append(r)
        return {"cls_logits": flow.tensor(np.concatenate(cls)[:n]),
                "bbox_regression": flow.tensor(np.concatenate(reg)[:n])}

    def eval(self):
        """Inference only (for code written for modules, like :func:`cv.detection.engine.trainer.evaluate`)."""
        return self

    @flow.no_grad()
    def __call__(self, images):
        x = self.model.preprocess(images)
        head_outputs = self.network(x.numpy())
        return self.model.detect(head_outputs, self.grid_sizes, [tuple(img.shape[-2:]) for img in images])


class OnnxRuntimeSSD(ExportedNetworkSSD):
    """:class:`ExportedNetworkSSD` with the network run by ONNX Runtime (CPU).

    Args:
        model, onnx_path: as :class:`ExportedNetworkSSD`.
        threads: ONNX Runtime's intra-op threads (default: its own choice, the physical cores).
    """

    def __init__(self, model, onnx_path, threads=None):
        import onnxruntime as ort

        super().__init__(model, onnx_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # ONNX Runtime's worker threads otherwise spin for a while after each run, taking the cores the
        # post-processing that follows (OneFlow and NumPy) needs, which slows every image down (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run_batch(self, x):
        return self.session.run(None, {self.input_name: x})
