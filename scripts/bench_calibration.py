"""``benchmark.py --sections calibration``: int8 calibration attempts, each against ONNX Runtime float32, on the int8
section's fitted SSD300-VGG16 (``bench_int8.fitted_model``), for accuracy and speed.

Rows (all QDQ, weights int8 per channel, activations uint8, the L2 normalisation and heads float32 as
:mod:`cv.detection.deploy.quantize` does; what varies is how activation ranges are chosen and what else stays float):

- MinMax on 16 training images (today's recipe) and on 64;
- Percentile (ONNX Runtime's histogram: the range that holds 99.999% of the values) and Entropy (KL divergence), on
  16 images;
- MinMax with the k most sensitive trunk convolutions left float32 (k = 1, 2, 4). Sensitivity is measured on the
  16 calibration images, one convolution at a time: how many dB the signal-to-quantization-noise ratio of the
  network's outputs (int8 against float32) gains when that convolution alone stays float32.

Per row: AP and AP50 on the fitted images; float32's detections scoring >= 0.3 that have a twin (same label, IoU
>= 0.9: :func:`cv.detection.deploy.quantize.match_rate`) on the fitted images and on 12 held-out val images; and the
network's seconds per image (batch 1), all rows alternated, median of --repeats x 3. The int8 bar (issue 19) is 95%
of float32's detections twinned.
"""
import glob
import importlib.util
import os
import tempfile
import time

import numpy as np
import oneflow as flow

CALIBRATION_ROWS = [  # (row name, method, calibration images, most sensitive convolutions left float32)
    ("MinMax, 16 images (today)", "MinMax", 16, 0),
    ("MinMax, 64 images", "MinMax", 64, 0),
    ("Percentile 99.999, 16 images", "Percentile", 16, 0),
    ("Entropy, 16 images", "Entropy", 16, 0),
    ("MinMax, 16, 1 conv float32", "MinMax", 16, 1),
    ("MinMax, 16, 2 convs float32", "MinMax", 16, 2),
    ("MinMax, 16, 4 convs float32", "MinMax", 16, 4),
]
HELD_OUT_IMAGES = 12


def _sqnr(reference, other):
    """Signal-to-quantization-noise ratio in dB of ``other`` against ``reference`` (lists of arrays)."""
    reference, other = (np.concatenate([a.ravel() for a in x]) for x in (reference, other))
    return 20 * np.log10(np.linalg.norm(reference) / max(np.linalg.norm(reference - other), 1e-30))


def _outputs(path, batches):
    """The network ``path``'s outputs (class logits, box regression) over ``batches``, flattened into one list."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [y for x in batches for y in session.run(None, {session.get_inputs()[0].name: x})]


def conv_sensitivity(model, float_path, calibration_paths, work):
    """``[(conv node name, dB gained)]``, most sensitive first, for each trunk convolution that the int8 recipe
    quantizes: how much closer (SQNR of the network's outputs, in dB, on ``calibration_paths``) the int8 network
    comes to float32's when that one convolution is left float32."""
    import onnx

    from cv.detection.deploy.quantize import float32_nodes, quantize

    network = onnx.load(float_path)
    kept = set(float32_nodes(network))
    convs = [n.name for n in network.graph.node if n.op_type == "Conv" and n.name not in kept]
    batches = _preprocessed(model, calibration_paths)
    reference = _outputs(float_path, batches)

    def sqnr(also_float):
        path = os.path.join(work, "sensitivity.onnx")
        quantize(model, float_path, path, calibration_paths, also_float=also_float)
        return _sqnr(reference, _outputs(path, batches))

    everything = sqnr([])
    return sorted(((name, sqnr([name]) - everything) for name in convs), key=lambda x: -x[1])


def _preprocessed(model, paths):
    from cv.detection.data.base import load_rgb
    from cv.detection.data.transforms import to_chw_float

    with flow.no_grad():
        return [model.preprocess([flow.tensor(to_chw_float(load_rgb(p)))]).numpy() for p in paths]


def bench_calibration(args):
    from bench_int8 import coco_stats, fitted_model
    from benchmark import summarize, time_alternating
    from cv.detection.data.base import load_rgb
    from cv.detection.data.coco import CocoDetection
    from cv.detection.data.sample import make_sample_dataset
    from cv.detection.data.transforms import to_chw_float
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD, cached_export
    from cv.detection.deploy.quantize import match_rate, quantize

    result = {"rows": {}}
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as work:
        model, dataset, _ = fitted_model(args, work, result)
        float_path = cached_export(model, os.path.join(work, "onnx"))
        fitted_paths = [record.path for record in dataset.images]
        # More images of the same sample dataset (image i depends on the seed and i only): calibration beyond the
        # fitted ones, and a held-out val split.
        more = os.path.join(work, "more")
        make_sample_dataset(more, seed=0, num_train=len(fitted_paths) + 64, num_val=HELD_OUT_IMAGES)
        fitted_names = {os.path.basename(p) for p in fitted_paths}
        pool = [p for p in sorted(glob.glob(os.path.join(more, "train2017", "*.jpg")))
                if os.path.basename(p) not in fitted_names]
        held_out = CocoDetection(more, "val")
        images = {"fitted": fitted_paths, "held-out": [record.path for record in held_out.images]}
        tensors = {k: [flow.tensor(to_chw_float(load_rgb(p))) for p in v] for k, v in images.items()}

        start = time.perf_counter()
        ranking = conv_sensitivity(model, float_path, pool[:16], work)
        result["sensitivity"] = {"seconds": time.perf_counter() - start, "db_lost": ranking}

        networks = {"float32": float_path}
        for name, method, count, k in CALIBRATION_ROWS:
            if method == "Entropy" and importlib.util.find_spec("scipy") is None:
                result["rows"][name] = "not run: ONNX Runtime's entropy calibration needs scipy"
                continue
            path = os.path.join(work, f"row{len(networks)}.onnx")
            start = time.perf_counter()
            quantize(model, float_path, path, pool[:count], method=method, also_float=[n for n, _ in ranking[:k]])
            result["rows"][name] = {"quantize_s": time.perf_counter() - start}
            networks[name] = path

        detectors = {name: OnnxRuntimeSSD(model, path) for name, path in networks.items()}
        found = {}
        with flow.no_grad():
            for name, detector in detectors.items():
                found[name] = {k: [detector([t])[0] for t in v] for k, v in tensors.items()}
        for name in networks:
            if name == "float32":
                continue
            row = result["rows"][name]
            stats = coco_stats(dataset, found[name]["fitted"])
            row.update(AP=stats["AP"], AP50=stats["AP50"])
            for split in images:
                row[f"twins_{split}"] = match_rate(found["float32"][split], found[name][split])
        stats = coco_stats(dataset, found["float32"]["fitted"])
        result["float32"] = {"AP": stats["AP"], "AP50": stats["AP50"]}

        x = _preprocessed(model, fitted_paths[:1])[0]

        def network(detector):
            return lambda: detector.session.run(None, {detector.input_name: x})

        times = time_alternating({name: network(d) for name, d in detectors.items()}, args.repeats * 3)
        for name, ts in times.items():
            (result["rows"].get(name) or result["float32"])["network_s"] = summarize(ts)
    return result


def print_calibration(r):
    f = r["float32"]
    print(f"\nint8 calibration attempts against ONNX Runtime float32 (AP {100 * f['AP']:.1f}, AP50 "
          f"{100 * f['AP50']:.1f}, network {1000 * f['network_s']['median']:.0f} ms), SSD300-VGG16 fitted to "
          f"{r['images']} sample images; bar: 95% of float32's detections >= 0.3 twinned")
    print("most sensitive trunk convolutions (dB of output SQNR gained when left float32): "
          + ", ".join(f"{n} {db:.1f}" for n, db in r["sensitivity"]["db_lost"][:6]))
    print(f"{'attempt':<32}{'AP':>6}{'AP50':>6}{'dAP':>6}{'twins fitted':>15}{'held-out':>13}{'ms':>6}")
    for name, row in r["rows"].items():
        if isinstance(row, str):
            print(f"{name:<32}  {row}")
            continue
        twins = [f"{m}/{t} {100 * m / max(1, t):.0f}%" for m, t in (row["twins_fitted"], row["twins_held-out"])]
        print(f"{name:<32}{100 * row['AP']:>6.1f}{100 * row['AP50']:>6.1f}{100 * (row['AP'] - f['AP']):>+6.1f}"
              f"{twins[0]:>15}{twins[1]:>13}{1000 * row['network_s']['median']:>6.0f}")
