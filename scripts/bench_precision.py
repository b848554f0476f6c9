"""``benchmark.py --sections precision``: accuracy, not speed, of each runtime and precision that runs the exported
network, against ONNX Runtime float32, on the int8 section's model (SSD300-VGG16 with its heads fitted to
--int8-images sample images; its int8 network calibrated on 16 other training images: ``bench_int8.fitted_networks``).

Per row: COCO AP and AP50 on the fitted images, and how many of ONNX Runtime float32's detections scoring >= 0.3
have a twin (same label, IoU >= 0.9, one to one: :func:`cv.detection.deploy.quantize.match_rate`). The bar for a
precision to become a default (issue 19): AP within 0.5 point of float32's, and at least 97% of the detections
twinned.

Rows: ONNX Runtime float32 (the reference) and int8; OpenVINO float32, bfloat16 and int8. OpenVINO runs bfloat16
only on CPUs with BF16 (AVX-512 BF16, AMX); elsewhere its row says so, and "bfloat16, emulated" stands in: the
float32 network with every convolution's weights and every computed tensor rounded to bfloat16 (8 significant bits,
to nearest), the arithmetic in float32 (as oneDNN's bf16 convolutions accumulate), run by ONNX Runtime. It rounds
where a BF16 CPU may keep float32 (OpenVINO keeps some operators in float32) and does not reproduce the kernels'
summation order, so it estimates what bfloat16 costs; it does not replace the row of a BF16 CPU.
"""
import os
import shutil
import tempfile

import numpy as np
import oneflow as flow

CRITERION = {"ap_points": 0.5, "twins": 0.97}
# Operators whose outputs are computed (rounded to bfloat16 by the emulation) and operators that only move values
# (their inputs are rounded already); any other operator is not expected in the exported network.
COMPUTING = {"Conv", "Relu", "MaxPool", "Mul", "Add", "Sub", "Div", "Pow", "ReduceSum", "Sqrt", "Reciprocal"}
MOVING = {"Reshape", "Transpose", "Concat", "Flatten", "Identity"}


def round_bfloat16(array):
    """float32 ``array`` rounded to the nearest bfloat16 (ties to even), as float32."""
    bits = np.asarray(array, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def bfloat16_emulation(float_path, path):
    """Write to ``path`` (with the JSON of ``float_path`` beside it) the float32 network ``float_path`` rounding as
    bfloat16 storage would: convolution weights rounded here, every computed tensor rounded in the graph by
    Veltkamp's split (with ``c = x * (2**16 + 1)``, ``c - (c - x)`` is ``x`` to 8 significant bits, to nearest;
    ONNX Runtime drops a Cast to bfloat16 and back as if it were exact). Returns ``path``."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(float_path)
    graph = model.graph
    unknown = {n.op_type for n in graph.node} - COMPUTING - MOVING
    if unknown:
        raise ValueError(f"{float_path}: operators the bfloat16 emulation does not know: {sorted(unknown)}")
    initializers = {t.name: t for t in graph.initializer}
    split = "bfloat16_emulation/split"
    graph.initializer.append(numpy_helper.from_array(np.array(2 ** 16 + 1, np.float32), split))
    nodes = []
    for node in graph.node:
        if node.op_type == "Conv":
            weight = initializers[node.input[1]]
            weight.CopyFrom(numpy_helper.from_array(round_bfloat16(numpy_helper.to_array(weight)), weight.name))
        nodes.append(node)
        if node.op_type in COMPUTING:
            for k, name in enumerate(node.output):
                raw = node.output[k] = f"{name}/float32"
                nodes += [helper.make_node("Mul", [raw, split], [f"{name}/c"]),
                          helper.make_node("Sub", [f"{name}/c", raw], [f"{name}/d"]),
                          helper.make_node("Sub", [f"{name}/c", f"{name}/d"], [name])]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, path)
    shutil.copy(float_path + ".json", path + ".json")
    return path


def detectors(model, float_path, int8_path, work):
    """``{row name: detector or the reason it was not run}`` (see the module docstring)."""
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.utils.cli import UserError

    rows = {"onnxruntime float32": OnnxRuntimeSSD(model, float_path),
            "onnxruntime int8": OnnxRuntimeSSD(model, int8_path),
            "bfloat16, emulated": OnnxRuntimeSSD(model, bfloat16_emulation(float_path,
                                                                             os.path.join(work, "bf16.onnx")))}
    try:
        from cv.detection.deploy.openvino_backend import OpenVinoSSD, require_openvino, supports_bfloat16

        core = require_openvino().Core()
    except UserError as e:
        return {**rows, "openvino": f"not run: {e}"}
    rows["openvino float32"] = OpenVinoSSD(model, float_path, "float32")
    if supports_bfloat16(core):
        rows["openvino bfloat16"] = OpenVinoSSD(model, float_path, "bfloat16")
    else:
        capabilities = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        rows["openvino bfloat16"] = f"not run: this CPU has no BF16 (OpenVINO lists {capabilities})"
    rows["openvino int8"] = OpenVinoSSD(model, int8_path, "int8")
    return rows


def bench_precision(args):
    from bench_int8 import coco_stats, fitted_networks
    from cv.detection.data.base import load_rgb
    from cv.detection.data.transforms import to_chw_float
    from cv.detection.deploy.quantize import match_rate

    result = {"rows": {}}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as work:
        model, dataset, float_path, int8_path = fitted_networks(args, work, result)
        paths = [record.path for record in dataset.images]
        images = [flow.tensor(to_chw_float(load_rgb(p))) for p in paths]
        reference = None
        for name, detector in detectors(model, float_path, int8_path, work).items():
            if isinstance(detector, str):
                result["rows"][name] = detector
                continue
            with flow.no_grad():
                found = [detector([image])[0] for image in images]
            if reference is None:  # the first row, ONNX Runtime float32
                reference = found
            stats = coco_stats(dataset, found)
            matched, total = match_rate(reference, found)
            result["rows"][name] = {"AP": stats["AP"], "AP50": stats["AP50"], "matched": matched, "total": total}
    return result


def print_precision(r):
    print(f"\naccuracy against ONNX Runtime float32, SSD300-VGG16 fitted to {r['images']} sample images; bar: AP "
          f"within {CRITERION['ap_points']} point, {100 * CRITERION['twins']:.0f}% of float32's detections >= 0.3 "
          "twinned (same label, IoU >= 0.9)")
    print(f"{'runtime, precision':<24}{'AP':>7}{'AP50':>7}{'dAP':>7}{'twins':>10}{'share':>8}  meets the bar")
    reference = r["rows"]["onnxruntime float32"]
    for name, row in r["rows"].items():
        if isinstance(row, str):
            print(f"{name:<24}  {row}")
            continue
        gap, share = 100 * (row["AP"] - reference["AP"]), row["matched"] / max(1, row["total"])
        meets = abs(gap) <= CRITERION["ap_points"] and share >= CRITERION["twins"]
        print(f"{name:<24}{100 * row['AP']:>7.1f}{100 * row['AP50']:>7.1f}{gap:>+7.1f}"
              f"{row['matched']:>6}/{row['total']:<3}{100 * share:>7.1f}%  {'yes' if meets else 'no'}")
