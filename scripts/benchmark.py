"""Speed measurements. Prints tables; with --json, also writes the numbers.

    .venv/bin/python scripts/benchmark.py [--sections ...] [--batch-size 4] [--repeats 5] [--json out.json]

Sections (default: all; docs/performance.md has their results):

train: one SGD step (forward, loss, backward, update) of our SSD300-VGG16 against flowvision's ``ssd300_vgg16``,
with identical weights, images and targets, in one process, the two alternating so that machine noise hits both
alike. Reported: median seconds per step with the spread (min-max) and the ratio ours / flowvision (lower is
better).

data: images/s of the data pipeline in one process, i.e. per DataLoader worker: ``CocoDetection`` reading a
COCO-format folder of 640x480 JPEG files (written first, textured, quality 90, like COCO photos), decoding, and
applying the SSD training augmentation (or the eval conversion). Reported: median of --repeats passes over the
files, with the spread. "literal chain" is the same augmentation applied step by step at full size, for comparison.

infer: end-to-end inference per image (JPEG decode, conversion, resize and normalisation, network,
post-processing) of SSD300-VGG16 (91 classes) with the OneFlow eager network and with ONNX Runtime (network
exported once, batch 1 and batch 8), alternating the contenders; also the share of eager evaluation time spent
after the network (box decoding, NMS), and the trunk under ``nn.Graph`` against eager. With random weights nearly
every class scores above 0.01, the worst case for post-processing; ``--weights`` measures a trained model.

eval: seconds of COCO bbox evaluation for --eval-images images (COCO val's 5,000 by default) with COCO-like ground
truth and 100 detections each: ours (conversion and faster-coco-eval's COCOeval) against pycocotools' COCOeval on the
same detections, alternated, with the largest difference between their 12 numbers.

coretype: one SSD300 forward (batch 1) in fresh processes under OpenBLAS's own core type ("Prescott" on CPUs it
does not know) and under the one cv/_runtime.py chooses for this CPU.

graph: one SGD step (forward, loss, backward, momentum update) of SSD300-VGG16 in eager mode and as the
``nn.Graph`` of ``train.sh --graph`` (:mod:`cv.detection.engine.graph_mode`), same weights, batch (--graph-batch-size
images at 300x300, as the training transform makes them, 1-4 boxes each) and targets, alternated: the graph with
its targets padded to the batch's most boxes (as train.sh pads them to the dataset's most: same matching work as
eager) and to 100 (what COCO needs); also each graph's one-off compilation (its first step). On CPU this shows the
graph's overhead or gain there; the speed-up on GPUs is OneFlow's documented behaviour, not measured here.

cli: ``infer.sh --images`` as a user runs it, seconds per extra image, with each backend and precision and beside
torchvision (scripts/bench_cli.py says more).

finetune: accuracy, not speed: AP of a detector trained for N steps on a relabelled sample dataset from the weights
of a detector of other classes (cv.detection.models.transfer) against from scratch (scripts/bench_finetune.py).

int8: static int8 quantization (ONNX Runtime) against float32 and torchvision on an SSD300 fitted to sample
images: accuracy (AP, AP50, detections matched), network and end-to-end seconds per image, and where each
millisecond of infer.sh's per-image work goes (scripts/bench_int8.py says more).

calibration: int8 calibration attempts (more images, percentile and entropy ranges, the most sensitive convolutions
left float32) on the int8 section's fitted SSD300: accuracy against float32 and the network's speed
(scripts/bench_calibration.py says more).

precision: accuracy, not speed, of each runtime and precision (ONNX Runtime float32 and int8, OpenVINO float32,
bfloat16 and int8; bfloat16 emulated where the CPU lacks it) against ONNX Runtime float32, on the int8 section's
fitted SSD300: AP, AP50 and float32's detections twinned (scripts/bench_precision.py says more).

onnx: end-to-end inference per image (JPEG decode and conversion included) with the end-to-end ONNX file of
``scripts/export_onnx.py`` (resize, network, decoding, NMS and top 200 all in ONNX Runtime, uint8 images in) against
``infer.sh --backend onnxruntime``'s path (the network-only export; resize and post-processing by the model's code),
batch 1 and batch 8 (8 JPEG files of one size, as one end-to-end run needs), alternated; also the end-to-end
export's one-off time. Random weights (unless --weights) are the worst case for the in-graph NMS.

video: frames per second of ``infer.sh --video`` end to end (decode, detection, drawing, H.264 encoding, the JSON
lines) on a 640x480 camera-like clip of --video-frames frames (a pan across a grainy textured scene, H.264), batch 4,
with each backend (OneFlow eager; ONNX Runtime float32 and int8, OpenVINO bfloat16 and int8, with the network
exported as infer.sh does), alternated; also the video work alone (no detector). Drawing has a cost per labelled
box: an untrained model draws hundreds per frame at infer.sh's threshold 0.3, a trained one a few
(--video-score-threshold 0.999 makes random weights draw a few).
"""
import argparse
import glob
import json
import os
import statistics
import sys
import time


import cv  # noqa: F401  (prepares OneFlow before it is imported)
import oneflow as flow

# The reference implementations we compare against live with the tests, not in the library (tests/reference.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def make_batch(batch_size, seed=0):
    """Images of mixed sizes with 1-4 boxes each (labels 1..90), reproducible from ``seed``."""
    g = flow.Generator()
    g.manual_seed(seed)
    sizes = [(480, 640), (375, 500), (427, 640), (640, 480)]
    images, targets = [], []
    for i in range(batch_size):
        h, w = sizes[i % len(sizes)]
        images.append(flow.rand(3, h, w, generator=g))
        n = 1 + i % 4
        xy = flow.rand(n, 2, generator=g) * flow.tensor([w * 0.6, h * 0.6])
        wh = 20 + flow.rand(n, 2, generator=g) * flow.tensor([w * 0.4 - 20, h * 0.4 - 20])
        targets.append({"boxes": flow.cat([xy, xy + wh], dim=1),
                        "labels": (flow.rand(n, generator=g) * 90).to(flow.int64) + 1})
    return images, targets


def time_train_steps(models, images, targets, repeats):
    """Alternate one SGD step of each model ``repeats`` times (after one warm-up step each); seconds per step."""
    optims = {name: flow.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for name, m in models.items()}
    times = {name: [] for name in models}
    for r in range(repeats + 1):
        for name, model in models.items():
            model.train()
            # flowvision's transform writes resized boxes into the target dicts: give each step its own copy.
            step_targets = [{k: v.clone() for k, v in t.items()} for t in targets]
            start = time.perf_counter()
            losses = model(images, step_targets)
            loss = sum(losses.values())
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            # OneFlow runs ops asynchronously: reading the first layer's weight waits for the whole backward
            # (its gradient comes last) and the update.
            float(next(model.parameters()).view(-1)[0])
            if r > 0:
                times[name].append(time.perf_counter() - start)
    return times


def write_jpeg_dataset(root, count, seed=0, width=640, height=480):
    """A COCO-format ``train`` split of ``count`` textured JPEG files with 1-6 boxes each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "train2017"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    images, annotations = [], []
    for i in range(count):
        fx, fy, phase = rng.uniform(3, 30, size=3)
        waves = (np.sin(x / fx + phase)[..., None] * rng.uniform(20, 80, 3)
                 + np.cos(y / fy)[..., None] * rng.uniform(20, 80, 3))
        pixels = np.clip(128 + waves + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"{i:012d}.jpg"
        Image.fromarray(pixels).save(os.path.join(root, "train2017", name), "JPEG", quality=90)
        images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for _ in range(int(rng.integers(1, 7))):
            x0, y0 = rng.uniform(0, [width - 20, height - 20])
            w, h = min(rng.uniform(8, 300), width - x0), min(rng.uniform(8, 300), height - y0)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 91)),
                                "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    categories = [{"id": i, "name": str(i)} for i in range(1, 91)]
    with open(os.path.join(root, "annotations", "instances_train2017.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def time_dataset_passes(dataset, repeats):
    """Images/s of ``repeats`` passes over ``dataset`` (index order) after one warm-up pass."""
    rates = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        if r > 0:
            rates.append(len(dataset) / (time.perf_counter() - start))
    return rates


def bench_data(args):
    import tempfile

    from cv.detection.data.coco import CocoDetection
    from cv.detection.ssd300_vgg16.model import train_transform
    from cv.detection.data.transforms import ssd_eval_transform, to_chw_float

    from reference import literal_chain

    chain = literal_chain(train_transform())

    def literal_chain(image, boxes, labels, rng):
        image, boxes, labels = chain(image, boxes, labels, rng)
        return to_chw_float(image), boxes, labels

    contenders = {"train augmentation": train_transform(), "eval (conversion only)": ssd_eval_transform(),
                  "literal chain (reference)": literal_chain}
    with tempfile.TemporaryDirectory() as root:
        write_jpeg_dataset(root, args.data_images)
        return {name: summarize(time_dataset_passes(CocoDetection(root, "train", transform=t), args.repeats))
                for name, t in contenders.items()}


def time_alternating(contenders, repeats):
    """``{name: [seconds, ...]}``: each callable run once to warm up, then ``repeats`` rounds, one call each."""
    times = {name: [] for name in contenders}
    for r in range(repeats + 1):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            if r > 0:
                times[name].append(time.perf_counter() - start)
    return times


def bench_infer(args):
    import tempfile

    from cv.detection.utils import hub
    from cv.detection.data.base import load_rgb
    from cv.detection.ssd300_vgg16 import ssd300_vgg16
    from cv.detection.ssd300_vgg16.detector import load_model
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD, cached_export, network_graph
    from cv.detection.data.transforms import to_chw_float

    flow.manual_seed(0)
    model = load_model(args.weights)[0] if args.weights else ssd300_vgg16().eval()
    onnx_dir = os.path.join(hub.cache_dir(), "onnx")
    ort = {b: OnnxRuntimeSSD(model, cached_export(model, onnx_dir, b)) for b in (1, 8)}
    with tempfile.TemporaryDirectory() as root:
        write_jpeg_dataset(root, 8)
        paths = sorted(glob.glob(os.path.join(root, "train2017", "*.jpg")))

        def end_to_end(detector, batch):
            def run():
                for start in range(0, len(paths), batch):
                    with flow.no_grad():
                        out = detector([flow.tensor(to_chw_float(load_rgb(p))) for p in paths[start:start + batch]])
                    out[-1]["scores"].numpy()
            return run

        contenders = {"oneflow eager, batch 1": end_to_end(model, 1), "oneflow eager, batch 8": end_to_end(model, 8),
                      "onnxruntime, batch 1": end_to_end(ort[1], 1), "onnxruntime, batch 8": end_to_end(ort[8], 8)}
        times = time_alternating(contenders, args.repeats)
        result = {name: summarize([t / len(paths) for t in ts]) for name, ts in times.items()}

        # Where eager evaluation time goes: the network, then what follows it.
        x = model.preprocess([flow.tensor(to_chw_float(load_rgb(paths[0])))])
        split = {"network": [], "post-processing": []}
        with flow.no_grad():
            for _ in range(args.repeats):
                start = time.perf_counter()
                features = model.backbone(x)
                head = model.head(features)
                head["cls_logits"].numpy()
                middle = time.perf_counter()
                model.detect(head, [f.shape[-2:] for f in features], [(480, 640)])[0]["scores"].numpy()
                split["network"].append(middle - start)
                split["post-processing"].append(time.perf_counter() - middle)
        post, net = statistics.median(split["post-processing"]), statistics.median(split["network"])
        result["post_processing_share"] = post / (post + net)
        result["post_processing_s"] = summarize(split["post-processing"])

        # The trunk and heads as an nn.Graph (OneFlow's static-graph mode) against eager, batch 1.
        graph = network_graph(model)

        def eager():
            with flow.no_grad():
                model.head(model.backbone(x))["cls_logits"].numpy()

        times = time_alternating({"eager": eager, "nn.Graph": lambda: graph(x)[0].numpy()}, args.repeats)
        result["network_eager_vs_graph"] = {name: summarize(ts) for name, ts in times.items()}
    return result


def bench_onnx(args):
    import tempfile

    import numpy as np
    import onnxruntime

    from cv.detection.data.base import load_rgb
    from cv.detection.data.transforms import to_chw_float
    from cv.detection.deploy.onnx_backend import OnnxRuntimeSSD, cached_export
    from cv.detection.deploy.onnx_end_to_end import export_end_to_end
    from cv.detection.ssd300_vgg16 import ssd300_vgg16
    from cv.detection.ssd300_vgg16.detector import label_names, load_model
    from cv.detection.utils import hub

    flow.manual_seed(0)
    model, names, _ = load_model(args.weights) if args.weights else (ssd300_vgg16().eval(), label_names(91, None), 0)
    onnx_dir = os.path.join(hub.cache_dir(), "onnx")
    network_only = {b: OnnxRuntimeSSD(model, cached_export(model, onnx_dir, b)) for b in (1, 8)}
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(export_end_to_end(model, os.path.join(root, "e2e.onnx"), names),
                                               providers=["CPUExecutionProvider"])
        export_s = time.perf_counter() - start
        write_jpeg_dataset(root, 8)
        paths = sorted(glob.glob(os.path.join(root, "train2017", "*.jpg")))

        def network_only_run(batch):
            def run():
                for i in range(0, len(paths), batch):
                    with flow.no_grad():
                        out = network_only[batch]([flow.tensor(to_chw_float(load_rgb(p))) for p in paths[i:i + batch]])
                    out[-1]["scores"].numpy()
            return run

        def end_to_end_run(batch):
            def run():
                for i in range(0, len(paths), batch):
                    images = np.stack([np.asarray(load_rgb(p)).transpose(2, 0, 1) for p in paths[i:i + batch]])
                    session.run(None, {"images": images})
            return run

        contenders = {f"{name}, batch {b}": fn(b) for b in (1, 8) for name, fn in (
            ("end-to-end ONNX", end_to_end_run), ("--backend onnxruntime", network_only_run))}
        times = time_alternating(contenders, args.repeats)
    result = {name: summarize([t / len(paths) for t in ts]) for name, ts in times.items()}
    result["end_to_end_export_s"] = export_s
    return result


def write_pan_video(path, frames, width=640, height=480, rate=25, seed=0):
    """A camera-like clip: a pan across a grainy textured scene, H.264 (libx264, CRF 20) as cameras write it."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height + 4 * frames, 0:width + 8 * frames].astype(np.float32)
    waves = (np.sin(x / 23 + 1)[..., None] * [60, 30, 10] + np.cos(y / 31)[..., None] * [20, 40, 60]
             + np.sin((x + y) / 57)[..., None] * 30)
    scene = np.clip(128 + waves + rng.normal(0, 6, waves.shape), 0, 255).astype(np.uint8)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "yuv420p", {"crf": "20"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[4 * i:4 * i + height, 8 * i:8 * i + width]),
                                               format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


# The exported contenders of the video section (backend, precision), beside OneFlow eager; int8 is calibrated on the
# sample dataset, as infer.sh does by default.
VIDEO_EXPORTED = [("onnxruntime", "float32"), ("openvino", "bfloat16"), ("onnxruntime", "int8"), ("openvino", "int8")]


def bench_video(args):
    import tempfile

    from cv.detection.deploy import video
    from cv.detection.ssd300_vgg16 import ssd300_vgg16
    from cv.detection.ssd300_vgg16.detector import (Detector, draw_detections, exported_detector, label_names,
                                                    load_model)
    from cv.detection.ssd300_vgg16.infer import frame_functions

    flow.manual_seed(0)
    if args.weights:
        model, names, _ = load_model(args.weights)
    else:
        model = ssd300_vgg16().eval()
        names = label_names(model.num_classes, None)
    detectors = {"oneflow eager": model}
    for backend, precision in VIDEO_EXPORTED:
        detector = exported_detector(model, backend, precision)
        detectors[f"{backend} {detector.precision}"] = detector
    with tempfile.TemporaryDirectory() as root:
        clip = os.path.join(root, "pan.mp4")
        write_pan_video(clip, args.video_frames)

        def end_to_end(detect, to_records):
            def run():
                with video.VideoSource.open(clip) as source:
                    video.process_video(source, detect, to_records, draw_detections, os.path.join(root, "out.mp4"),
                                        os.path.join(root, "out.jsonl"), 4, progress=False)
            return run

        contenders = {name: end_to_end(*frame_functions(Detector(d, names, args.video_score_threshold), 4))
                      for name, d in detectors.items()}
        contenders["video work alone (no detector)"] = end_to_end(lambda frames: [None] * len(frames), lambda _: [])
        times = time_alternating(contenders, args.repeats)
        contenders["onnxruntime float32"]()
        with open(os.path.join(root, "out.jsonl")) as f:  # drawing has a cost per labelled box (module docstring)
            boxes = [len(json.loads(line)["detections"]) for line in f]
    result = {name: summarize([args.video_frames / t for t in ts]) for name, ts in times.items()}
    result["boxes_per_frame"] = sum(boxes) / len(boxes)
    return result


CORETYPE_PROBE = """
import os, time
import cv, oneflow as flow
from cv.detection.ssd300_vgg16 import ssd300_vgg16
flow.manual_seed(0)
m = ssd300_vgg16().eval()
x = flow.rand(1, 3, 300, 300)
ts = []
with flow.no_grad():
    for _ in range({runs}):
        t = time.perf_counter(); m.head(m.backbone(x))["cls_logits"].numpy(); ts.append(time.perf_counter() - t)
print(os.environ.get("OPENBLAS_CORETYPE", "(unset)"), sorted(ts[1:])[len(ts[1:]) // 2])
"""


def bench_coretype(args):
    import subprocess

    from cv import _runtime

    chosen = _runtime.openblas_coretype(_runtime.cpu_flags())
    result = {}
    for label, value in (("OpenBLAS's own (Prescott here)", "Prescott"), (f"chosen: {chosen}", chosen)):
        env = dict(os.environ, OPENBLAS_CORETYPE=value) if value else {
            k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        out = subprocess.run([sys.executable, "-c", CORETYPE_PROBE.format(runs=args.repeats + 1)], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        result[label] = float(out[-1])
    return result


def coco_val_sized_case(num_images, seed=0):
    """Ground truth like COCO val's (about 7 boxes per image over 80 categories, all three area ranges, 1% crowd
    regions, 1% images without objects) and 100 detections per image as a detector gives them (jittered copies of
    the objects, the rest random), as model outputs: ``(gt dict, {image id: detections})``."""
    import numpy as np

    from cv.detection.data.coco import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    ids = np.array(sorted(COCO_CATEGORIES))
    images, anns, dets = [], [], {}
    for image_id in range(1, num_images + 1):
        w, h = int(rng.integers(300, 641)), int(rng.integers(240, 641))
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id:012d}.jpg"})
        n = 0 if rng.random() < 0.01 else min(int(rng.geometric(1 / 7)), 60)
        side = np.exp(rng.uniform(np.log(4), np.log(min(w, h)), n))  # small, medium and large
        wh = np.stack([side, side * np.exp(rng.uniform(-0.5, 0.5, n))], 1).clip(2, [w - 1, h - 1])
        xy = rng.uniform(0, 1, (n, 2)) * ([w, h] - wh)
        cats = rng.choice(ids, n)
        for k in range(n):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cats[k]),
                         "bbox": [*xy[k], *wh[k]], "area": float(wh[k].prod()), "iscrowd": int(rng.random() < 0.01)})
        near = rng.integers(0, max(n, 1), min(3 * n, 100)) if n else np.zeros(0, int)
        boxes = np.concatenate([xy[near], xy[near] + wh[near]], 1) + rng.normal(0, 3, (len(near), 4)) if n else \
            np.zeros((0, 4))
        labels = cats[near] if n else np.zeros(0, int)
        rest = 100 - len(boxes)
        corner = rng.uniform(0, 1, (rest, 2)) * [w, h]
        boxes = np.concatenate([boxes, np.concatenate([corner, corner + rng.uniform(4, 200, (rest, 2))], 1)])
        labels = np.concatenate([labels, rng.choice(ids, rest)])
        dets[image_id] = {"boxes": boxes.astype(np.float32), "scores": rng.uniform(0, 1, 100).astype(np.float32),
                          "labels": labels.astype(np.int64)}
    categories = [{"id": int(i), "name": COCO_CATEGORIES[int(i)]} for i in ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def bench_eval(args):
    """Our COCO evaluation (conversion, results file in memory, faster-coco-eval) against pycocotools' COCOeval
    on the same detections, alternated; and the largest difference between their 12 numbers."""
    import contextlib
    import io

    from cv.detection.evaluation.coco import STAT_NAMES, CocoEvaluator, detections_to_coco_results
    from reference import pycocotools_stats

    gt, dets = coco_val_sized_case(args.eval_images)
    mapping = {c["id"]: c["id"] for c in gt["categories"]}
    times, stats = {"ours (faster-coco-eval)": [], "pycocotools": []}, {}
    for _ in range(max(1, args.repeats // 2)):
        evaluator = CocoEvaluator(gt, mapping)
        start = time.perf_counter()
        evaluator.update(list(dets), list(dets.values()))
        with contextlib.redirect_stdout(io.StringIO()):
            stats["ours"] = evaluator.summarize(None)
        times["ours (faster-coco-eval)"].append(time.perf_counter() - start)
        results = detections_to_coco_results(list(dets), list(dets.values()), mapping)
        start = time.perf_counter()
        stats["pycocotools"] = pycocotools_stats(gt, results, list(dets))
        times["pycocotools"].append(time.perf_counter() - start)
    result = {"images": args.eval_images, "detections": 100 * args.eval_images,
              "ground_truth_boxes": len(gt["annotations"]), **{k: summarize(v) for k, v in times.items()},
              "max_difference_of_the_12": max(abs(stats["ours"][k] - stats["pycocotools"][k]) for k in STAT_NAMES)}
    result["speed-up"] = result["pycocotools"]["median"] / result["ours (faster-coco-eval)"]["median"]
    return result


def print_table(title, rows, fmt, per_second=None, note=""):
    """Print ``{name: summarize(...)}`` as median, min and max columns; with ``per_second`` (items per timed
    call) also the items per second at the median."""
    print(f"\n{title:<31}{'median':>9}{'min':>9}{'max':>9}" + (f"{'/s':>9}" if per_second else "")
          + (f"   {note}" if note else ""))
    for name, r in rows.items():
        print(f"{name:<31}" + "".join(f"{r[k]:>9{fmt}}" for k in ("median", "min", "max"))
              + (f"{per_second / r['median']:>9.2f}" if per_second else ""))


def summarize(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "runs": len(samples)}


def bench_train_step(args):
    from flowvision.models.detection import ssd300_vgg16 as flowvision_ssd300_vgg16

    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    reference = flowvision_ssd300_vgg16(pretrained=False, pretrained_backbone=False)
    ours = ssd300_vgg16()
    ours.load_state_dict(reference.state_dict())
    images, targets = make_batch(args.batch_size)
    times = time_train_steps({"ours": ours, "flowvision": reference}, images, targets, args.repeats)
    result = {name: summarize(t) for name, t in times.items()}
    result["ratio"] = result["ours"]["median"] / result["flowvision"]["median"]
    return result


def bench_graph_step(args):
    from cv.detection.engine.graph_mode import GraphTrainer
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    eager = ssd300_vgg16()
    # As the training transform makes them: every image at the model's 300x300, boxes in its pixels.
    images, targets = make_batch(args.graph_batch_size)
    for i, (image, target) in enumerate(zip(images, targets)):
        h, w = image.shape[-2:]
        images[i] = flow.nn.functional.interpolate(image[None], size=[300, 300], mode="bilinear")[0]
        target["boxes"] = target["boxes"] * flow.tensor([300 / w, 300 / h] * 2)
    options = dict(lr=1e-4, momentum=0.9, weight_decay=5e-4)
    eager_optimizer = flow.optim.SGD(eager.parameters(), **options)

    def eager_step():
        losses = eager(images, targets)
        eager_optimizer.zero_grad()
        sum(losses.values()).backward()
        eager_optimizer.step()
        float(next(eager.parameters()).view(-1)[0])  # waits for the backward and the update (see time_train_steps)

    def graph_step(max_boxes):
        model = ssd300_vgg16()
        model.load_state_dict(eager.state_dict())
        trainer = GraphTrainer(model, flow.optim.SGD(model.parameters(), **options), options["lr"], 0, [],
                               {"iteration": 0, "epoch": -1, "part": 0}, 1, "cpu", max_boxes=max_boxes)
        first, iteration = next(trainer.losses.parameters()), [0]

        def step():
            trainer(images, targets, iteration[0])
            iteration[0] += 1
            float(first.to_local().view(-1)[0])
        return step

    most = max(t["boxes"].shape[0] for t in targets)
    contenders = {"eager": eager_step, f"nn.Graph, {most} boxes": graph_step(most),
                  "nn.Graph, 100 boxes": graph_step(100)}
    first_step_s = {}
    for name, step in list(contenders.items())[1:]:
        start = time.perf_counter()
        step()  # compiles the graph
        first_step_s[name] = time.perf_counter() - start
    times = time_alternating(contenders, args.repeats)
    result = {name: summarize(ts) for name, ts in times.items()}
    result["graph_first_step_s"] = first_step_s
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = ["train", "data", "infer", "eval", "coretype", "video", "graph", "int8", "precision", "calibration",
                "onnx", "finetune", "cli"]
    parser.add_argument("--sections", nargs="+", choices=sections, default=sections,
                        help="what to measure (default: all)")
    parser.add_argument("--batch-size", type=int, default=4, help="train: images per training step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--graph-batch-size", type=int, default=2, help="graph: images per training step (default 2)")
    parser.add_argument("--data-images", type=int, default=64, help="data: JPEG files per pass (default 64)")
    parser.add_argument("--weights", help="infer, video, onnx: a trained model to measure (default: random weights)")
    parser.add_argument("--video-frames", type=int, default=12, help="video: frames of the clip (default 12)")
    parser.add_argument("--video-score-threshold", type=float, default=0.3,
                        help="video: boxes drawn from this score (default 0.3, infer.sh's)")
    parser.add_argument("--eval-images", type=int, default=5000,
                        help="eval: images, 100 detections each (default 5000: COCO val's size)")
    parser.add_argument("--int8-images", type=int, default=16,
                        help="int8, precision: sample images the model is fitted to and evaluated on (default 16)")
    parser.add_argument("--int8-steps", type=int, default=300, help="int8, precision: fitting steps (default 300)")
    parser.add_argument("--fitted", metavar="DIR",
                        help="int8, precision, calibration, cli: keep the fitted model (and its sample data) in DIR "
                             "and reuse it in later runs (default: fit anew in a temporary directory)")
    parser.add_argument("--cli-extra-images", type=int, default=10,
                        help="cli: images added to the 2 of the shorter command (default 10)")
    parser.add_argument("--int8-speed-images", type=int, default=8,
                        help="int8: images per timed end-to-end pass (default 8)")
    parser.add_argument("--torchvision-python",
                        help="int8: a Python with torch and torchvision, to time torchvision's ssd300_vgg16 beside "
                             "ours (default: this one, if it has torchvision)")
    parser.add_argument("--finetune-images", type=int, default=16,
                        help="finetune: sample images both detectors are fitted to and evaluated on (default 16)")
    parser.add_argument("--finetune-source-steps", type=int, default=300,
                        help="finetune: fitting steps of the source detector (default 300)")
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[10, 25, 50, 100],
                        help="finetune: head-training steps of the target after which AP is measured")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    env = {"oneflow": flow.__version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS's own)"),
           "cpus": os.cpu_count(), "batch_size": args.batch_size, "repeats": args.repeats}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results = {"environment": env}

    if "train" in args.sections:
        ts = results["train_step"] = bench_train_step(args)
        print_table("train step (s/step)", {name: ts[name] for name in ("ours", "flowvision")}, ".2f",
                    per_second=args.batch_size)
        print(f"ratio ours/flowvision: {ts['ratio']:.3f} (goal <= 0.8)")
    if "data" in args.sections:
        data = results["data_pipeline"] = bench_data(args)
        print_table("data, 1 process (img/s)", data, ".1f")
    if "infer" in args.sections:
        inf = results["inference"] = bench_infer(args)
        print_table("inference, end to end (s/img)", {name: inf[name] for name in (
            "oneflow eager, batch 1", "oneflow eager, batch 8", "onnxruntime, batch 1", "onnxruntime, batch 8")},
            ".3f", per_second=1)
        speedup = inf["oneflow eager, batch 1"]["median"] / inf["onnxruntime, batch 1"]["median"]
        print(f"onnxruntime vs oneflow eager, batch 1: {speedup:.1f}x faster")
        print(f"post-processing: {inf['post_processing_s']['median']:.3f} s/img, "
              f"{100 * inf['post_processing_share']:.0f}% of eager evaluation time")
        g = inf["network_eager_vs_graph"]
        print(f"network, batch 1: eager {g['eager']['median']:.3f} s, nn.Graph {g['nn.Graph']['median']:.3f} s")
    if "eval" in args.sections:
        ev = results["coco_eval"] = bench_eval(args)
        print_table("COCO evaluation (s)", {name: ev[name] for name in ("ours (faster-coco-eval)", "pycocotools")},
                    ".2f", note=f"{ev['images']} images, {ev['ground_truth_boxes']} objects, "
                                f"{ev['detections']} detections")
        print(f"ours {ev['speed-up']:.1f}x faster; largest difference of the 12 numbers: "
              f"{ev['max_difference_of_the_12']:.2e}")
    if "coretype" in args.sections:
        ct = results["openblas_coretype"] = bench_coretype(args)
        print("\nSSD300 forward, batch 1, by OpenBLAS core type (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ct.items()))
    if "video" in args.sections:
        vid = results["video"] = bench_video(args)
        print_table("video end to end (frames/s)", {k: v for k, v in vid.items() if k != "boxes_per_frame"},
                    ".2f", note=f"640x480, {args.video_frames} frames, batch 4")
        print(f"boxes drawn per frame (score >= {args.video_score_threshold}): {vid['boxes_per_frame']:.0f}")
    if "graph" in args.sections:
        gr = results["graph_train_step"] = bench_graph_step(args)
        print_table("train step, eager vs graph (s)", {k: v for k, v in gr.items() if k != "graph_first_step_s"},
                    ".2f", per_second=args.graph_batch_size, note=f"batch {args.graph_batch_size}, 300x300")
        print("graph / eager: " + ", ".join(f"{name} {gr[name]['median'] / gr['eager']['median']:.3f}"
                                            for name in gr["graph_first_step_s"]))
        print("first step (compilation included): " + ", ".join(f"{name} {s:.1f} s"
                                                                 for name, s in gr["graph_first_step_s"].items()))
    if "int8" in args.sections:
        from bench_int8 import bench_int8, print_int8  # scripts/bench_int8.py

        results["int8"] = bench_int8(args)
        print_int8(results["int8"])
    if "precision" in args.sections:
        from bench_precision import bench_precision, print_precision  # scripts/bench_precision.py

        results["precision"] = bench_precision(args)
        print_precision(results["precision"])
    if "calibration" in args.sections:
        from bench_calibration import bench_calibration, print_calibration  # scripts/bench_calibration.py

        results["calibration"] = bench_calibration(args)
        print_calibration(results["calibration"])
    if "onnx" in args.sections:
        ox = results["onnx_end_to_end"] = bench_onnx(args)
        print_table("ONNX end to end (s/img)", {k: v for k, v in ox.items() if k != "end_to_end_export_s"}, ".3f",
                    per_second=1, note="640x480 JPEG files")
        print(f"end-to-end export (once per weights): {ox['end_to_end_export_s']:.0f} s")
    if "cli" in args.sections:
        from bench_cli import bench_cli, print_cli  # scripts/bench_cli.py

        results["cli"] = bench_cli(args)
        print_cli(results["cli"])
    if "finetune" in args.sections:
        from bench_finetune import bench_finetune, print_finetune  # scripts/bench_finetune.py

        results["finetune"] = bench_finetune(args)
        print_finetune(results["finetune"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
