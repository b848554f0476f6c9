"""Speed measurements. Prints a table; with --json, also writes the numbers.

    .venv/bin/python scripts/benchmark.py [--batch-size 4] [--repeats 5] [--json out.json]

train-step: one SGD step (forward, loss, backward, update) of our SSD300-VGG16 against flowvision's
``ssd300_vgg16``, with identical weights, images and targets, in one process, the two alternating so that
machine noise hits both alike. Reported: median seconds per step with the spread (min-max) and the ratio
ours / flowvision (lower is better).
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
    parser.add_argument("--batch-size", type=int, default=4, help="images per training step (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per contender (default 5)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    env = {"oneflow": flow.__version__, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS's own)"),
           "cpus": os.cpu_count(), "batch_size": args.batch_size, "repeats": args.repeats}
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    results = {"environment": env, "train_step": bench_train_step(args)}

    ts = results["train_step"]
    print(f"\n{'train step (s/step)':<24}{'median':>9}{'min':>9}{'max':>9}{'img/s':>9}")
    for name in ("ours", "flowvision"):
        r = ts[name]
        print(f"{name:<24}{r['median']:>9.2f}{r['min']:>9.2f}{r['max']:>9.2f}{args.batch_size / r['median']:>9.2f}")
    print(f"ratio ours/flowvision: {ts['ratio']:.3f} (goal <= 0.8)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
