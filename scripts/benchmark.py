"""Speed measurements. Prints tables; with --json, also writes the numbers.

    .venv/bin/python scripts/benchmark.py [--sections ...] [--batch-size 4] [--repeats 5] [--json out.json]

Sections (default: all, about 10 minutes on 2 cores):

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

eval: seconds of COCO bbox evaluation (conversion, results file, one COCOeval) for --eval-images images with 100
detections each.

coretype: one SSD300 forward (batch 1) in fresh processes under OpenBLAS's own core type ("Prescott" on CPUs it
does not know) and under the one cv/_runtime.py chooses for this CPU.
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

    from cv.detection.coco import CocoDetection
    from cv.detection.transforms import ssd_eval_transform, ssd_train_transform, to_chw_float

    chain = ssd_train_transform().reference()

    def literal_chain(image, boxes, labels, rng):
        image, boxes, labels = chain(image, boxes, labels, rng)
        return to_chw_float(image), boxes, labels

    contenders = {"train augmentation": ssd_train_transform(), "eval (conversion only)": ssd_eval_transform(),
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

    from cv.detection import hub
    from cv.detection.coco import load_rgb
    from cv.detection.ssd300_vgg16 import ssd300_vgg16
    from cv.detection.ssd300_vgg16.infer import load_model
    from cv.detection.onnx_backend import OnnxRuntimeSSD, cached_export, network_graph
    from cv.detection.transforms import to_chw_float

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


def bench_eval(args):
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO

    from cv.detection.coco_eval import CocoEvaluator

    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 640, "height": 480} for i in range(1, args.eval_images + 1)]
    anns, dets = [], {}
    for img in images:
        xy = rng.uniform(0, 400, (7, 2))
        wh = rng.uniform(10, 200, (7, 2))
        for k in range(7):
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.integers(1, 11)),
                         "bbox": [*xy[k], *wh[k]], "area": float(wh[k].prod()), "iscrowd": 0})
        boxes = np.concatenate([rng.uniform(0, 400, (100, 2)), np.zeros((100, 2))], 1)
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(10, 200, (100, 2))
        dets[img["id"]] = {"boxes": boxes.astype(np.float32), "scores": rng.uniform(0, 1, 100).astype(np.float32),
                           "labels": rng.integers(1, 11, 100)}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": i, "name": str(i)} for i in range(1, 11)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    samples = []
    for _ in range(max(1, args.repeats // 2)):
        evaluator = CocoEvaluator(gt, {i: i for i in range(1, 11)})
        start = time.perf_counter()
        evaluator.update(list(dets), list(dets.values()))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.summarize(None)
        samples.append(time.perf_counter() - start)
    return {"images": args.eval_images, "detections": 100 * args.eval_images, "seconds": summarize(samples)}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = ["train", "data", "infer", "eval", "coretype"]
    parser.add_argument("--sections", nargs="+", choices=sections, default=sections,
                        help="what to measure (default: all)")
    parser.add_argument("--batch-size", type=int, default=4, help="train: images per training step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--data-images", type=int, default=64, help="data: JPEG files per pass (default 64)")
    parser.add_argument("--weights", help="infer: a trained model to measure (default: random weights)")
    parser.add_argument("--eval-images", type=int, default=500, help="eval: images, 100 detections each (default 500)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    env = {"oneflow": flow.__version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS's own)"),
           "cpus": os.cpu_count(), "batch_size": args.batch_size, "repeats": args.repeats}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results = {"environment": env}

    if "train" in args.sections:
        ts = results["train_step"] = bench_train_step(args)
        print(f"\n{'train step (s/step)':<28}{'median':>9}{'min':>9}{'max':>9}{'img/s':>9}")
        for name in ("ours", "flowvision"):
            r = ts[name]
            print(f"{name:<28}{r['median']:>9.2f}{r['min']:>9.2f}{r['max']:>9.2f}{args.batch_size / r['median']:>9.2f}")
        print(f"ratio ours/flowvision: {ts['ratio']:.3f} (goal <= 0.8)")
    if "data" in args.sections:
        data = results["data_pipeline"] = bench_data(args)
        print(f"\n{'data, 1 process (img/s)':<28}{'median':>9}{'min':>9}{'max':>9}")
        for name, r in data.items():
            print(f"{name:<28}{r['median']:>9.1f}{r['min']:>9.1f}{r['max']:>9.1f}")
    if "infer" in args.sections:
        inf = results["inference"] = bench_infer(args)
        print(f"\n{'inference, end to end (s/img)':<28}{'median':>9}{'min':>9}{'max':>9}{'img/s':>9}")
        for name in ("oneflow eager, batch 1", "oneflow eager, batch 8", "onnxruntime, batch 1", "onnxruntime, batch 8"):
            r = inf[name]
            print(f"{name:<28}{r['median']:>9.3f}{r['min']:>9.3f}{r['max']:>9.3f}{1 / r['median']:>9.2f}")
        speedup = inf["oneflow eager, batch 1"]["median"] / inf["onnxruntime, batch 1"]["median"]
        print(f"onnxruntime vs oneflow eager, batch 1: {speedup:.1f}x faster")
        print(f"post-processing: {inf['post_processing_s']['median']:.3f} s/img, "
              f"{100 * inf['post_processing_share']:.0f}% of eager evaluation time")
        g = inf["network_eager_vs_graph"]
        print(f"network, batch 1: eager {g['eager']['median']:.3f} s, nn.Graph {g['nn.Graph']['median']:.3f} s")
    if "eval" in args.sections:
        ev = results["coco_eval"] = bench_eval(args)
        print(f"\nCOCO evaluation of {ev['detections']} detections on {ev['images']} images: "
              f"{ev['seconds']['median']:.2f} s (min {ev['seconds']['min']:.2f}, max {ev['seconds']['max']:.2f})")
    if "coretype" in args.sections:
        ct = results["openblas_coretype"] = bench_coretype(args)
        print("\nSSD300 forward, batch 1, by OpenBLAS core type (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ct.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
