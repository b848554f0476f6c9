"""``benchmark.py --sections int8``: int8 against float32 ONNX Runtime (and torchvision, where installed) on an
SSD300-VGG16 that really detects objects, for speed and accuracy, and where each millisecond of inference goes.

The model: SSD300-VGG16 with a random trunk and its heads fitted to --int8-images sample-dataset images
(:mod:`fitting`; no pretrained weights here). Its float32 network is exported, then quantized
(:mod:`cv.detection.deploy.quantize`) calibrated on 16 *other* images of the same training split, as a user would
calibrate on training data and run on new images. Reported:

- accuracy on the fitted images, float32 vs int8 (our COCO evaluation): AP, AP50, AP75, and the share of float32's
  detections scoring >= 0.3 that int8 also finds (same label, IoU >= 0.9);
- the first run's one-off costs: export and quantization;
- seconds per image of the network alone, and end to end (decode -> detections, batch 1), each contender
  alternated with the others, median of --repeats passes over --int8-speed-images images; torchvision's
  ``ssd300_vgg16`` on PyTorch with the same weights when a Python with torchvision is given
  (--torchvision-python, or ``import torchvision`` works here), in a worker process that decodes and detects the
  same files (its detections are checked against ours);
- the end-to-end and profile contenders include float32 as it was before this work ("before": the post-processing
  by OneFlow operations rather than :mod:`cv.detection.models.postprocess_cpu`);
- the profile of infer.sh's per-image work, float32 and int8: decode, conversion to a tensor, resize and
  normalisation, network, post-processing (box decoding and top-k; NMS), the JSON record, drawing, writing.
"""
import contextlib
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import oneflow as flow

# The fitted SSD300 comes from a test helper (tests/fitting.py), which is not part of the library.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

TORCHVISION_WORKER = r"""
import json, sys, time
import numpy as np, torch
from PIL import Image
from torchvision.models.detection import ssd300_vgg16
from torchvision.transforms.functional import to_tensor

weights, paths = np.load(sys.argv[1]), json.load(open(sys.argv[2]))
torch.set_num_threads(int(sys.argv[3]))
model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=int(weights["__num_classes__"]))
model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files if not k.startswith("__")})
model.eval()

def run():
    out = []
    with torch.inference_mode():
        for p in paths:
            with Image.open(p) as im:
                image = to_tensor(im.convert("RGB"))
            d = model([image])[0]
            out.append({k: v.numpy().tolist() for k, v in d.items()})
    return out

print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "detections": run()}), flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    start = time.perf_counter()
    run()
    print(time.perf_counter() - start, flush=True)
"""


class TorchvisionWorker:
    """torchvision's ssd300_vgg16 with ``model``'s weights in a separate Python (``python``), detecting ``paths``
    end to end (decode, to_tensor, the model with its own resize, normalisation and post-processing) per call."""

    def __init__(self, python, model, paths, work):
        weights = {k: v.numpy() for k, v in model.state_dict().items()}
        weights["__num_classes__"] = np.array(model.num_classes)
        np.savez(os.path.join(work, "tv_weights.npz"), **weights)
        with open(os.path.join(work, "tv_paths.json"), "w") as f:
            json.dump(paths, f)
        with open(os.path.join(work, "tv_worker.py"), "w") as f:
            f.write(TORCHVISION_WORKER)
        self.process = subprocess.Popen(
            [python, os.path.join(work, "tv_worker.py"), os.path.join(work, "tv_weights.npz"),
             os.path.join(work, "tv_paths.json"), str(os.cpu_count())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(self.process.stdout.readline())
        self.version, self.detections = first["torch"], first["detections"]

    def __call__(self):
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def torchvision_python(args):
    if args.torchvision_python:
        return args.torchvision_python
    try:
        import torchvision  # noqa: F401

        return sys.executable
    except ImportError:
        return None


def coco_stats(dataset, detections):
    evaluator = dataset.evaluator()
    evaluator.update([record.image_id for record in dataset.images], detections)
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.summarize(None)


@contextlib.contextmanager
def oneflow_postprocessing(enabled=True):
    """Post-processing by the OneFlow code instead of its NumPy twin (what ran before it existed)."""
    from cv.detection.models import ssd

    saved = ssd.CPU_POSTPROCESS_IN_NUMPY
    ssd.CPU_POSTPROCESS_IN_NUMPY = not enabled
    try:
        yield
    finally:
        ssd.CPU_POSTPROCESS_IN_NUMPY = saved


def records_before(output, names, score_threshold):
    """``infer.as_records`` as it was: masks on OneFlow tensors, then conversion."""
    keep = output["scores"] >= score_threshold
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "label": int(label),
             "name": names[int(label)]}
            for box, s, label in zip(output["boxes"][keep].numpy(), output["scores"][keep].numpy(),
                                     output["labels"][keep].numpy())]


def profile_stages(model, detector, names, paths, out_dir, repeats, before=False):
    """Median milliseconds per image of each step of ``infer.sh``'s work on one image (batch 1); ``before``: the
    OneFlow post-processing and the tensor-masking JSON record, as they were."""
    from cv.detection.models import box_ops
    from cv.detection.utils import fileio
    from cv.detection.ssd300_vgg16.detector import as_records, draw_detections, read_as_seen
    from cv.detection.data.transforms import to_chw_float

    stages = ("decode", "to tensor", "resize+normalise", "network", "boxes+top-k", "NMS", "JSON record", "drawing",
              "write JSON", "write JPEG")
    times = {s: [] for s in stages}
    nms_time = []
    original_nms = box_ops.batched_nms_numpy  # what both post-processings run on CPU

    def timed_nms(*a, **k):
        start = time.perf_counter()
        kept = original_nms(*a, **k)
        nms_time.append(time.perf_counter() - start)
        return kept

    box_ops.batched_nms_numpy = timed_nms
    try:
        for _ in range(repeats + 1):
            for path in paths:
                mark = [time.perf_counter()]

                def tick(stage):
                    now = time.perf_counter()
                    times[stage].append(now - mark[0])
                    mark[0] = now

                with flow.no_grad():
                    image, _ = read_as_seen(path)
                    tick("decode")
                    x = [flow.tensor(to_chw_float(image))]
                    tick("to tensor")
                    batch = model.preprocess(x).numpy()
                    tick("resize+normalise")
                    head = detector.network(batch)
                    tick("network")
                    del nms_time[:]
                    out = model.detect(head, detector.grid_sizes, [tuple(x[0].shape[-2:])])[0]
                    out["scores"].numpy()
                    now = time.perf_counter()
                    times["NMS"].append(sum(nms_time))
                    times["boxes+top-k"].append(now - mark[0] - sum(nms_time))
                    mark[0] = now
                    records = (records_before if before else as_records)(out, names, 0.3)
                    tick("JSON record")
                    drawn = draw_detections(image, records)
                    tick("drawing")
                    fileio.write_json(os.path.join(out_dir, "a.json"), {"detections": records}, indent=1)
                    tick("write JSON")
                    with fileio.atomic_path(os.path.join(out_dir, "a.jpg")) as tmp:
                        drawn.save(tmp, format="JPEG", quality=92)
                    tick("write JPEG")
    finally:
        box_ops.batched_nms_numpy = original_nms
    skip = len(paths)  # the first pass warms up
    return {s: 1000 * statistics.median(v[skip:]) for s, v in times.items()}


def fitted_model(args, work, result):
    """``(model, dataset, calibration paths)``, made in ``work``: the model fitted to --int8-images sample images
    (``dataset``), and 16 other images of the same training split to calibrate int8 on. With --fitted, the fitted
    model and its data are kept there and read back (through the weights loader: nothing in them runs) by later
    runs. Records the seconds of fitting (or reading) and the image counts in ``result``."""
    from fitting import fitted_ssd300
    from cv.detection.data.coco import CocoDetection
    from cv.detection.deploy.quantize import DEFAULT_CALIBRATION_IMAGES
    from cv.detection.data.sample import make_sample_dataset
    from cv.detection.ssd300_vgg16.detector import load_model

    n, calibration = args.int8_images, DEFAULT_CALIBRATION_IMAGES
    kept = args.fitted and os.path.join(args.fitted, f"ssd300-{n}-images-{args.int8_steps}-steps")
    root = os.path.join(kept or work, "data")
    start = time.perf_counter()
    if kept and os.path.exists(os.path.join(kept, "weights")):
        dataset = CocoDetection(root, "train", max_images=n)
        model = load_model(os.path.join(kept, "weights"))[0]
        print(f"  fitted model read from {kept}", flush=True)
    else:
        make_sample_dataset(root, seed=0, num_train=n + calibration, num_val=1)

        def log(step, losses, seconds):
            print(f"  fitting: step {step}, {seconds:.0f} s, " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()),
                  flush=True)

        model, dataset = fitted_ssd300(root, n, steps=args.int8_steps, log=log)
        if kept:  # saved aside and renamed, so that an interrupted run leaves no half-written weights to read
            flow.save(model.state_dict(), os.path.join(kept, "weights.partial"))
            os.replace(os.path.join(kept, "weights.partial"), os.path.join(kept, "weights"))
    result["fit_s"] = time.perf_counter() - start
    paths = [record.path for record in dataset.images]
    all_train = sorted(glob.glob(os.path.join(root, "train2017", "*.jpg")))
    calibration_paths = [p for p in all_train if p not in paths][:calibration]
    result["images"], result["calibration_images"] = n, len(calibration_paths)
    return model, dataset, calibration_paths


def fitted_networks(args, work, result):
    """The section's subject, made in ``work``: ``(model, dataset, float32 ONNX path, int8 ONNX path)``: the model
    and dataset of :func:`fitted_model`, its network exported and quantized (calibrated on the 16 other images).
    Records the one-off seconds (fit or read, export, quantization) and the image counts in ``result``."""
    from cv.detection.deploy.onnx_backend import cached_export
    from cv.detection.deploy.quantize import cached_quantized_export

    model, dataset, calibration_paths = fitted_model(args, work, result)
    cache = os.path.join(work, "onnx")
    start = time.perf_counter()
    float_path = cached_export(model, cache)
    result["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    int8_path = cached_quantized_export(model, cache, calibration_paths, log=lambda m: None)
    result["quantize_s"] = time.perf_counter() - start
    return model, dataset, float_path, int8_path


def bench_int8(args):
    from benchmark import summarize, time_alternating  # scripts/benchmark.py, which runs this section
    from cv.detection.data.base import load_rgb
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD
    from cv.detection.deploy.quantize import match_rate
    from cv.detection.ssd300_vgg16.detector import label_names
    from cv.detection.data.transforms import to_chw_float

    result = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as work:
        model, dataset, float_path, int8_path = fitted_networks(args, work, result)
        paths = [record.path for record in dataset.images]
        detectors = {"float32": OnnxRuntimeSSD(model, float_path), "int8": OnnxRuntimeSSD(model, int8_path)}

        # Accuracy on the fitted images.
        detections = {}
        with flow.no_grad():
            for name, detector in detectors.items():
                detections[name] = [detector([flow.tensor(to_chw_float(load_rgb(p)))])[0] for p in paths]
                stats = coco_stats(dataset, detections[name])
                result[f"accuracy_{name}"] = {k: stats[k] for k in ("AP", "AP50", "AP75")}
        matched, total = match_rate(detections["float32"], detections["int8"])
        result["matched"], result["float32_detections_above_0.3"] = matched, total

        # Speed: the network alone, and end to end, alternated.
        speed_paths = paths[:args.int8_speed_images]
        x = model.preprocess([flow.tensor(to_chw_float(load_rgb(speed_paths[0])))]).numpy()

        def network(detector):
            return lambda: detector.session.run(None, {detector.input_name: x})

        times = time_alternating({name: network(d) for name, d in detectors.items()}, args.repeats * 3)
        result["network_s"] = {name: summarize(ts) for name, ts in times.items()}

        def end_to_end(detector, before=False):
            def run():
                with oneflow_postprocessing(before):
                    for p in speed_paths:
                        with flow.no_grad():
                            out = detector([flow.tensor(to_chw_float(load_rgb(p)))])
                        out[-1]["scores"].numpy()
            return run

        contenders = {"onnxruntime float32, before": end_to_end(detectors["float32"], before=True)}
        contenders.update({f"onnxruntime {name}": end_to_end(d) for name, d in detectors.items()})
        python = torchvision_python(args)
        worker = None
        if python:
            worker = TorchvisionWorker(python, model, speed_paths, work)
            result["torchvision_torch_version"] = worker.version
            tv = [{k: np.asarray(v, np.float32 if k != "labels" else np.int64) for k, v in d.items()}
                  for d in worker.detections]
            m, t = match_rate(detections["float32"][:len(speed_paths)], tv)
            result["torchvision_matches_float32"] = [m, t]
            contenders["torchvision (PyTorch)"] = None
        times = {name: [] for name in contenders}
        for r in range(args.repeats + 1):
            for name, fn in contenders.items():
                start = time.perf_counter()
                elapsed = worker() if fn is None else (fn(), time.perf_counter() - start)[1]
                if r:
                    times[name].append(elapsed / len(speed_paths))
        if worker:
            worker.close()
        result["end_to_end_s"] = {name: summarize(ts) for name, ts in times.items()}

        # Where the milliseconds go.
        names = label_names(model.num_classes, None)
        repeats = max(2, args.repeats // 2)
        with oneflow_postprocessing():
            result["profile_ms"] = {"float32, before": profile_stages(model, detectors["float32"], names,
                                                                      speed_paths, work, repeats, before=True)}
        result["profile_ms"].update({name: profile_stages(model, d, names, speed_paths, work, repeats)
                                     for name, d in detectors.items()})
    return result


def print_int8(r):
    f, q = r["accuracy_float32"], r["accuracy_int8"]
    print(f"\nint8 vs float32 (ONNX Runtime), SSD300-VGG16 fitted to {r['images']} sample images "
          f"({r['fit_s']:.0f} s); int8 calibrated on {r['calibration_images']} other training images")
    print(f"one-off: export {r['export_s']:.0f} s, quantization {r['quantize_s']:.0f} s")
    print(f"{'accuracy':<28}{'AP':>9}{'AP50':>9}{'AP75':>9}")
    for name, a in (("float32", f), ("int8", q)):
        print(f"{name:<28}{100 * a['AP']:>9.1f}{100 * a['AP50']:>9.1f}{100 * a['AP75']:>9.1f}")
    print(f"int8 - float32 (points): AP {100 * (q['AP'] - f['AP']):+.1f}, AP50 {100 * (q['AP50'] - f['AP50']):+.1f} "
          f"(goal: within 1); float32 detections >= 0.3 that int8 matches (same label, IoU >= 0.9): "
          f"{r['matched']}/{r['float32_detections_above_0.3']} = "
          f"{100 * r['matched'] / max(1, r['float32_detections_above_0.3']):.1f}% (goal >= 95%)")
    print(f"\n{'network (s/img, batch 1)':<28}{'median':>9}{'min':>9}{'max':>9}")
    for name, s in r["network_s"].items():
        print(f"{name:<28}{s['median']:>9.3f}{s['min']:>9.3f}{s['max']:>9.3f}")
    print(f"\n{'end to end (s/img, batch 1)':<28}{'median':>9}{'min':>9}{'max':>9}{'img/s':>9}")
    for name, s in r["end_to_end_s"].items():
        print(f"{name:<28}{s['median']:>9.3f}{s['min']:>9.3f}{s['max']:>9.3f}{1 / s['median']:>9.1f}")
    e = r["end_to_end_s"]
    q8 = e["onnxruntime int8"]["median"]
    line = (f"int8: {q8:.3f} s/img (goal <= 0.10), {e['onnxruntime float32, before']['median'] / q8:.1f}x float32 as "
            f"it was (goal >= 3), {e['onnxruntime float32']['median'] / q8:.1f}x float32 with the NumPy "
            "post-processing")
    if "torchvision (PyTorch)" in e:
        m, t = r["torchvision_matches_float32"]
        line += (f", {e['torchvision (PyTorch)']['median'] / q8:.1f}x torchvision (goal >= 5; torch "
                 f"{r['torchvision_torch_version']}, its detections match our float32's: {m}/{t})")
    print(line)
    stages = list(next(iter(r["profile_ms"].values())))
    print("\n'before': float32 with the OneFlow post-processing, as it was")
    print(f"{'per image (ms), infer.sh':<28}" + "".join(f"{name:>17}" for name in r["profile_ms"]))
    for s in stages:
        print(f"{s:<28}" + "".join(f"{p[s]:>17.1f}" for p in r["profile_ms"].values()))
    print(f"{'total':<28}" + "".join(f"{sum(p.values()):>17.1f}" for p in r["profile_ms"].values()))
