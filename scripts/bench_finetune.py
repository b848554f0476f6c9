"""What fine-tuning from weights of other classes buys (``benchmark.py --sections finetune``).

A source detector learns the sample scenes under one labelling; a target dataset labels the same scenes another
way: four of the six classes keep their names (in another label order), two are renamed, so they are new to the
source. The target is then trained for the same numbers of steps twice, from the source's weights through
:func:`cv.detection.models.transfer.transfer` and from a fresh head, and its COCO AP is printed after each. The
numbers are accuracy, not speed: the machine's load does not change them.

No pretrained weights exist without a network, so both detectors are made as ``tests/fitting.py`` makes its
detecting SSD300s: the heads fitted to the images' features over a fixed, randomly initialised trunk, the same trunk
for both starts. That isolates what this measures, the classification and box heads the transfer brings along.
"""
import contextlib
import io
import json
import os
import shutil
import tempfile

import oneflow as flow

# Target labelling: the source's names that stay (the transfer finds them by name) and the two that become new.
RENAMED = {"triangle": "wedge", "cross": "plus"}
TARGET_ORDER = ["star", "wedge", "circle", "plus", "square", "ring"]


def relabel(root, out):
    """A copy of the sample dataset at ``root`` (images linked) whose categories are renamed and reordered."""
    os.makedirs(os.path.join(out, "annotations"))
    for split in ("train2017", "val2017"):
        os.symlink(os.path.join(root, split), os.path.join(out, split))
        path = os.path.join(root, "annotations", f"instances_{split}.json")
        with open(path) as f:
            data = json.load(f)
        new_id = {c["id"]: TARGET_ORDER.index(RENAMED.get(c["name"], c["name"])) + 1 for c in data["categories"]}
        data["categories"] = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(TARGET_ORDER)]
        for ann in data["annotations"]:
            ann["category_id"] = new_id[ann["category_id"]]
        with open(os.path.join(out, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(data, f)
    return out


def ap(model, features, sizes, dataset):
    from fitting import detect_from_features

    count = len(dataset)
    detections = detect_from_features(model, [f[:count] for f in features], sizes[:count])
    evaluator = dataset.evaluator()
    evaluator.update([record.image_id for record in dataset.images], detections)
    with contextlib.redirect_stdout(io.StringIO()):
        stats = evaluator.summarize(None)
    return {"AP": stats["AP"], "AP50": stats["AP50"]}


def bench_finetune(args):
    """``{"source", "steps", "transferred": [...], "scratch": [...], "report"}``: AP after each of
    ``args.finetune_steps`` head-training steps of the target, from the transferred weights and from scratch."""
    from fitting import fit_heads, fitted_ssd300, training_views

    from cv.detection.data.sample import make_sample_dataset
    from cv.detection.models.transfer import transfer
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    work = tempfile.mkdtemp(prefix="bench_finetune_")
    try:
        root = os.path.join(work, "sample")
        make_sample_dataset(root, seed=0, num_train=args.finetune_images, num_val=2)
        print(f"finetune: fitting the source detector ({args.finetune_source_steps} steps)", flush=True)
        source, source_set = fitted_ssd300(root, args.finetune_images, steps=args.finetune_source_steps)
        target_root = relabel(root, os.path.join(work, "target"))
        print("finetune: the target's training views through the trunk", flush=True)
        features, targets, sizes, target_set = training_views(source, target_root, args.finetune_images, seed=1)
        result = {"images": args.finetune_images, "steps": [0] + list(args.finetune_steps)}
        for start in ("transferred", "scratch"):
            flow.manual_seed(1)
            model = ssd300_vgg16(num_classes=len(TARGET_ORDER) + 1).eval()
            if start == "transferred":
                report = transfer(model, source.state_dict(), source_set.label_names, target_set.label_names,
                                  source="the source detector")
                result["report"] = str(report)
            else:  # the same trunk (every tensor outside the heads), fresh heads
                model.load_state_dict({**model.state_dict(), **{k: v for k, v in source.state_dict().items()
                                                                if not k.startswith("head.")}})
            print(f"finetune: training the target from {start}", flush=True)
            curve, done = [ap(model, features, sizes, target_set)], 0
            for steps in args.finetune_steps:
                fit_heads(model, features, targets, sizes, steps=steps - done, seed=done)
                done = steps
                curve.append(ap(model, features, sizes, target_set))
            result[start] = curve
        result["source"] = ap(source, features, sizes, source_set)  # the same images, under its own labelling
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_finetune(result):
    print(f"\nfine-tuning to a relabelled sample ({result['images']} images; {', '.join(RENAMED.values())} new): "
          "AP / AP50 on them after N head-training steps")
    print(f"  source on its own labelling: AP {result['source']['AP']:.3f} / AP50 {result['source']['AP50']:.3f}")
    print(f"  {result['report']}")
    print(f"  {'steps':>6}  {'transferred':>15}  {'from scratch':>15}")
    for i, steps in enumerate(result["steps"]):
        t, s = result["transferred"][i], result["scratch"][i]
        print(f"  {steps:>6}  {t['AP']:.3f} / {t['AP50']:.3f}   {s['AP']:.3f} / {s['AP50']:.3f}")
