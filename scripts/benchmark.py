"""Speed measurements. Prints tables; with --json, also writes the numbers.

    .venv/bin/python scripts/benchmark.py [--sections train data] [--batch-size 4] [--repeats 5] [--json out.json]

train: one SGD step (forward, loss, backward, update) of our SSD300-VGG16 against flowvision's ``ssd300_vgg16``,
with identical weights, images and targets, in one process, the two alternating so that machine noise hits both
alike. Reported: median seconds per step with the spread (min-max) and the ratio ours / flowvision (lower is
better).

data: images/s of the data pipeline in one process, i.e. per DataLoader worker: ``CocoDetection`` reading a
COCO-format folder of 640x480 JPEG files (written first, textured, quality 90, like COCO photos), decoding, and
applying the SSD training augmentation (or the eval conversion). Reported: median of --repeats passes over the
files, with the spread. "literal chain" is the same augmentation applied step by step at full size, for comparison.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv  # noqa: F401,E402  (prepares OneFlow before it is imported)
import oneflow as flow  # noqa: E402


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
    parser.add_argument("--sections", nargs="+", choices=["train", "data"], default=["train", "data"],
                        help="what to measure (default: all)")
    parser.add_argument("--batch-size", type=int, default=4, help="train: images per training step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--data-images", type=int, default=64, help="data: JPEG files per pass (default 64)")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
