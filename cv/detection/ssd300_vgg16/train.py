"""Train (or evaluate) SSD300-VGG16 on COCO or any COCO-format dataset, on one process or many.

    cd cv/detection && bash ssd300_vgg16/train.sh [--data-path /data/coco] [flags]      # see --help

``train.sh`` starts this module under ``python -m oneflow.distributed.launch``. With no ``--data-path`` and no
COCO in ``data/coco`` of the repository, it trains on the generated sample dataset with a short demo schedule.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import oneflow as flow

from cv.detection import checkpoint as ckpt
from cv.detection import distributed as dist
from cv.detection import hub
from cv.detection.coco import CocoDetection, make_loader
from cv.detection.coco_eval import CocoEvaluator
from cv.detection.engine import (DynamicLossScaler, MetricsFile, NonFiniteLossError, evaluate, learning_rate,
                                 read_metrics, train_one_epoch)
from cv.detection.plot import plot_metrics
from cv.detection.ssd300_vgg16.model import ssd300_vgg16, weights_url
from cv.detection.transforms import ssd_train_transform

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_COCO = os.path.join(REPO, "data", "coco")
SAMPLE_DATA = os.path.join(REPO, "data", "sample_coco")
DEFAULT_OUTPUT = os.path.join(REPO, "output", "ssd300_vgg16")

# The published recipe (COCO box AP 25.1 with 8 GPUs x 4 images): SGD, lr 0.002 for a global batch of 32 (scaled
# linearly with the actual global batch), 120 epochs with x0.1 at 80 and 110, linear warm-up, full augmentation,
# VGG16 ImageNet backbone.
RECIPE = dict(epochs=120, batch_size=4, lr=0.002, momentum=0.9, weight_decay=5e-4, lr_steps=[80, 110],
              warmup_iters=1000, eval_every=10, pretrained_backbone=True, train_subset=None, val_subset=None,
              print_freq=20)
LR_REFERENCE_BATCH = 32
# The sample dataset's demo: the whole cycle (train, evaluate, save) in about ten minutes on 2 CPU cores. Far
# too short to learn much from scratch; it shows the machinery, not accuracy.
DEMO = dict(RECIPE, epochs=2, lr_steps=[], warmup_iters=10, eval_every=2, pretrained_backbone=False,
            train_subset=48, val_subset=24, print_freq=3)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data-path", help=f"COCO-format dataset root (train2017/, val2017/, annotations/). Default: "
                                       f"{DEFAULT_COCO} if it exists, else the sample dataset (demo schedule)")
    d.add_argument("--labels", choices=["auto", "coco", "contiguous"], default="auto",
                   help="labels: COCO category ids (91-way head) or contiguous 1..K; auto: COCO's if the "
                        "categories are COCO's (default auto)")
    d.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes per training process (default: min(4, CPUs))")
    d.add_argument("--train-subset", type=int, help="use only the first N training images (default: all)")
    d.add_argument("--val-subset", type=int, help="evaluate on only the first N val images (default: all)")
    o = p.add_argument_group("optimisation (defaults: the published recipe; the demo schedule on sample data)")
    o.add_argument("--epochs", type=int, help=f"epochs to train (default {RECIPE['epochs']})")
    o.add_argument("--batch-size", type=int, help=f"images per process per step (default {RECIPE['batch_size']})")
    o.add_argument("--lr", type=float, help=f"learning rate for a global batch of {LR_REFERENCE_BATCH}; scaled "
                                            f"linearly with the actual global batch (default {RECIPE['lr']})")
    o.add_argument("--momentum", type=float, help=f"SGD momentum (default {RECIPE['momentum']})")
    o.add_argument("--weight-decay", type=float, help=f"SGD weight decay (default {RECIPE['weight_decay']})")
    o.add_argument("--lr-steps", type=int, nargs="*", help="epochs at which the lr is multiplied by 0.1 "
                                                           f"(default {' '.join(map(str, RECIPE['lr_steps']))})")
    o.add_argument("--warmup-iters", type=int, help="iterations of linear lr warm-up from 0.001x "
                                                    f"(default {RECIPE['warmup_iters']})")
    o.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast, dynamic loss scaling); "
                                                      "CUDA only")
    o.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction,
                   help="start from the ImageNet VGG16 weights (default: yes for real data, no for the demo)")
    r = p.add_argument_group("run")
    r.add_argument("--output-dir", default=DEFAULT_OUTPUT, help=f"checkpoints, metrics, plot (default {DEFAULT_OUTPUT})")
    r.add_argument("--resume", help="continue from a checkpoint directory, or 'auto' for the latest in --output-dir")
    r.add_argument("--weights", help="initialise the model from a checkpoint or a flow.save'd state dict")
    r.add_argument("--test-only", action="store_true", help="only evaluate (--weights or --resume) on the val split")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    r.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and augmentation (default 0)")
    r.add_argument("--print-freq", type=int, help=f"iterations between progress lines (default {RECIPE['print_freq']})")
    r.add_argument("--eval-every", type=int, help=f"evaluate every N epochs, and after the last "
                                                  f"(default {RECIPE['eval_every']})")
    r.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept besides the best "
                                                                   "(default 3)")
    return p


def resolve(args, parser):
    """Fill unset flags from the recipe, or from the demo schedule when training on the sample dataset."""
    demo = args.data_path is None and not os.path.isfile(
        os.path.join(DEFAULT_COCO, "annotations", "instances_train2017.json"))
    if args.data_path is None:
        args.data_path = SAMPLE_DATA if demo else DEFAULT_COCO
    for key, value in (DEMO if demo else RECIPE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.demo = demo
    if args.device is None:
        args.device = "cuda" if flow.cuda.is_available() else "cpu"
    if args.amp and not args.device.startswith("cuda"):
        parser.error(f"--amp needs a CUDA device (float16 autocast); this run is on {args.device}")
    if args.test_only and not (args.weights or args.resume):
        parser.error("--test-only needs --weights or --resume")
    for flag in ("epochs", "batch_size", "print_freq", "eval_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def build_optimizer(model, args, world_size):
    """``(SGD over the trainable parameters, base lr)``: ``--lr`` is for a global batch of
    ``LR_REFERENCE_BATCH`` and scales linearly with the actual one (``--batch-size`` x processes)."""
    base_lr = args.lr * args.batch_size * world_size / LR_REFERENCE_BATCH
    optimizer = flow.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=base_lr,
                               momentum=args.momentum, weight_decay=args.weight_decay)
    return optimizer, base_lr


def prepare_sample_dataset(path):
    """Generate the sample dataset at ``path`` once (rank 0; the others wait)."""
    if dist.is_main() and not os.path.isfile(os.path.join(path, "annotations", "instances_val2017.json")):
        from cv.detection.sample_dataset import make_sample_dataset

        start = time.perf_counter()
        make_sample_dataset(path)
        print(f"generated the sample dataset in {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    dist.barrier()


def build_data(args):
    train_set = CocoDetection(args.data_path, "train", transform=ssd_train_transform(), labels=args.labels,
                              seed=args.seed, max_images=args.train_subset)
    val_set = CocoDetection(args.data_path, "val", train=False, labels=args.labels, max_images=args.val_subset)
    if val_set.label_to_category_id != train_set.label_to_category_id:
        raise SystemExit(f"{val_set.annotation_file} and {train_set.annotation_file} have different categories")
    distributed = dist.world_size() > 1
    train_loader = make_loader(train_set, args.batch_size, args.workers, shuffle=True, distributed=distributed,
                               drop_last=True, seed=args.seed)
    val_loader = make_loader(val_set, args.batch_size, args.workers, shuffle=False, distributed=distributed)
    return train_set, val_set, train_loader, val_loader


def main(args):
    if args.demo:
        dist.print0(f"No COCO found (no --data-path, nothing in {DEFAULT_COCO}): training on the sample dataset in "
                    f"{SAMPLE_DATA} with a short demo schedule ({args.epochs} epochs x {args.train_subset} images, "
                    "about ten minutes on 2 CPU cores). Pass --data-path DIR to train on real data.")
        prepare_sample_dataset(args.data_path)
    flow.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    device = flow.device(args.device)
    if dist.is_main():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    train_set, val_set, train_loader, val_loader = build_data(args)
    if args.pretrained_backbone:
        # Rank 0 downloads and extracts the ImageNet weights; the others then find them in the cache, instead of
        # every rank writing the same files at once.
        if dist.is_main():
            hub.resolve_weights(weights_url("vgg16_backbone"))
        dist.barrier()
    model = ssd300_vgg16(num_classes=train_set.num_classes, pretrained_backbone=args.pretrained_backbone)
    if args.weights:
        state = ckpt.model_state(ckpt.load_checkpoint(args.weights))
        try:
            model.load_state_dict(state)
        except Exception as e:  # shape mismatches (another num_classes) or foreign keys
            raise SystemExit(f"--weights {args.weights} does not fit this model ({train_set.num_classes} "
                             f"classes): {e}")
    model.to(device)
    net = flow.nn.parallel.DistributedDataParallel(model) if dist.world_size() > 1 else model
    optimizer, base_lr = build_optimizer(model, args, dist.world_size())
    scaler = DynamicLossScaler() if args.amp else None
    state = {"iteration": 0, "epoch": -1}

    resume = ckpt.latest_checkpoint(args.output_dir) if args.resume == "auto" else args.resume
    if args.resume == "auto" and resume is None:
        dist.print0(f"--resume auto: no checkpoint in {args.output_dir} yet, starting from scratch")
    if resume:
        payload = ckpt.load_checkpoint(resume)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("amp_scaler"):
            scaler.load_state_dict(payload["amp_scaler"])
        ckpt.set_rng_state(payload["rng"])
        state = {"iteration": payload["iteration"], "epoch": payload["epoch"]}
        dist.print0(f"resumed from {resume}: epoch {payload['epoch']} done, iteration {payload['iteration']}")

    evaluator_for = lambda: CocoEvaluator(val_set.coco(), val_set.label_to_category_id)  # noqa: E731
    metrics = MetricsFile(os.path.join(args.output_dir, "metrics.jsonl")) if dist.is_main() else None
    if args.test_only:
        stats = evaluate(net, val_loader, evaluator_for(), device,
                         os.path.join(args.output_dir, "detections_test.json") if dist.is_main() else None)
        if metrics:
            metrics.write({"type": "eval", "epoch": state["epoch"], "test_only": True, **stats})
            metrics.close()
        return stats

    dist.print0(f"training on {len(train_set)} images ({args.data_path}), {train_set.num_classes - 1} classes, "
                f"{dist.world_size()} process(es) x {args.batch_size} images, lr {base_lr:g}, device {device}")
    schedule = lambda it, ep: learning_rate(base_lr, it, ep, args.warmup_iters, args.lr_steps)  # noqa: E731
    stats = None
    try:
        for epoch in range(state["epoch"] + 1, args.epochs):
            train_one_epoch(net, optimizer, train_loader, device, epoch, state, schedule, args.print_freq, metrics,
                            scaler, args.epochs)
            stats = None
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                json_path = os.path.join(args.output_dir, f"detections_epoch{epoch:04d}.json")
                stats = evaluate(net, val_loader, evaluator_for(), device, json_path if dist.is_main() else None)
                if metrics:
                    metrics.write({"type": "eval", "epoch": epoch, **stats})
            state["epoch"] = epoch
            if dist.is_main():
                payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                           "iteration": state["iteration"], "args": vars(args), "rng": ckpt.rng_state(),
                           "amp_scaler": scaler.state_dict() if scaler else None,
                           "meta": {"arch": "ssd300_vgg16", "num_classes": train_set.num_classes,
                                    "label_names": train_set.label_names,
                                    "label_to_category_id": train_set.label_to_category_id,
                                    "dataset": args.data_path, "stats": stats}}
                path = ckpt.save_checkpoint(args.output_dir, epoch, payload, ap=stats["AP"] if stats else None,
                                            keep=args.keep_checkpoints)
                print(f"saved {path}", flush=True)
            dist.barrier()
    except NonFiniteLossError as e:
        dist.print0(f"error: {e}")
        raise SystemExit(1)
    finally:
        if metrics:
            metrics.close()

    if dist.world_size() > 1:
        dist.check_same_weights(model)
    if dist.is_main():
        plot = os.path.join(args.output_dir, "training.png")
        plot_metrics(read_metrics(os.path.join(args.output_dir, "metrics.jsonl")), plot)
        index = ckpt.read_index(args.output_dir)
        latest = os.path.join(args.output_dir, index["latest"])
        print(f"\ndone. latest checkpoint: {latest}")
        if index.get("best"):
            print(f"best checkpoint: {os.path.join(args.output_dir, index['best'])} (AP {index['best_ap']:.4f})")
        print(f"metrics: {os.path.join(args.output_dir, 'metrics.jsonl')}, plot: {plot}")
        here = os.path.dirname(os.path.abspath(__file__))
        print(f"evaluate it again: bash {os.path.join(here, 'train.sh')} --test-only --weights {latest}"
              + ("" if args.demo else f" --data-path {args.data_path}"))
        print(f"run it on images:  bash {os.path.join(here, 'infer.sh')} --weights {latest} --images PATH ...")
        print(f"publish it:        {sys.executable} {os.path.join(REPO, 'scripts', 'publish.py')} {latest} "
              "--output-dir DIR")
    return stats


if __name__ == "__main__":
    parser = get_args_parser()
    main(resolve(parser.parse_args(), parser))
    sys.exit(0)
