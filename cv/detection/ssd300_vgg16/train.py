"""Train (or evaluate) SSD300-VGG16 on COCO, Pascal VOC, YOLO or any COCO-format data, on one process or many,
from scratch, from the ImageNet backbone, or fine-tuning other weights (``--pretrained``, ``--weights``).

    bash cv/detection/ssd300_vgg16/train.sh [--data-path /data/coco] [flags]      # see --help
    bash cv/detection/ssd300_vgg16/train.sh --pretrained --data-path /data/mine/data.yaml   # fine-tune to your classes

``train.sh`` starts this module on every GPU of the node through :mod:`cv.detection.engine.launch`. With no
``--data-path`` and no COCO in ``data/coco`` of the repository, it trains on the generated sample dataset with a
short demo schedule. SIGTERM or Ctrl-C stops it after the current iteration with a resumable checkpoint.
"""
import argparse
import os
import random
import sys
import time
from typing import NamedTuple

import numpy as np
import oneflow as flow

from cv.detection.engine import checkpoint as ckpt
from cv.detection.utils import cli
from cv.detection.engine import distributed as dist
from cv.detection.data import layouts as datasets
from cv.detection.utils import fileio
from cv.detection.engine import graph_mode
from cv.detection.utils import hub
from cv.detection.data.base import make_loader
from cv.detection.engine.trainer import (AmpTrainer, DynamicLossScaler, GraphModeTrainer, LrSchedule, MetricsFile,
                                         ProgressLog, Trainer, evaluate, read_metrics)
from cv.detection.utils.plot import plot_metrics
from cv.detection.ssd300_vgg16 import COCO_DIR, OUTPUT_DIR, REPO, SAMPLE_DATA
from cv.detection.ssd300_vgg16.model import freeze_trunk, freeze_vgg_stages, ssd300_vgg16, train_transform
from cv.detection.ssd300_vgg16.weights import load_into, max_weights_bytes, weights_url

# The published recipe (COCO box AP 25.1 with 8 GPUs x 4 images): SGD, lr 0.002 for a global batch of 32 (scaled
# linearly with the actual global batch), 120 epochs with x0.1 at 80 and 110, linear warm-up, full augmentation,
# VGG16 ImageNet backbone.
RECIPE = dict(epochs=120, batch_size=4, lr=0.002, momentum=0.9, weight_decay=5e-4, lr_steps=[80, 110],
              warmup_iters=1000, eval_every=10, pretrained_backbone=True, train_subset=None, val_subset=None,
              print_freq=20)
LR_REFERENCE_BATCH = 32
# The sample dataset's demo: the whole cycle (train, evaluate, save) in minutes on a CPU (docs/performance.md). Far
# too short to learn much from scratch; it shows the machinery, not accuracy.
DEMO = dict(RECIPE, epochs=2, lr_steps=[], warmup_iters=10, eval_every=2, pretrained_backbone=False,
            train_subset=48, val_subset=24, print_freq=3)


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data-path", help=f"COCO-format dataset root (train2017/, val2017/, annotations/), a Pascal "
                                       "VOC layout (VOCdevkit/VOC2007, VOCdevkit/VOC2012, or a folder holding several "
                                       "of them), a YOLO dataset (its data.yaml, or a folder with images/ and "
                                       "labels/), or a dataset YAML naming COCO annotation files (train: {images: "
                                       "DIR, annotations: FILE.json}; see cv/detection/data/layouts.py). Default: "
                                       f"{COCO_DIR} if it exists, else the sample dataset (demo schedule)")
    d.add_argument("--train-split", help="COCO: the split name (default train, i.e. train2017). VOC: "
                                         "[YEAR-]SET[,[YEAR-]SET...] of ImageSets/Main/SET.txt, e.g. "
                                         "2007-trainval,2012-trainval (default: trainval of every year found; train "
                                         "for a year whose val is evaluated). A dataset YAML or YOLO folder: its key "
                                         "or folder (default train)")
    d.add_argument("--val-split", help="COCO: default val (val2017). VOC: as --train-split (default 2007-test if "
                                       "VOC2007 has a test set, else val of every year). A dataset YAML or YOLO "
                                       "folder: default val")
    d.add_argument("--val-fraction", type=cli.fraction, metavar="F",
                   help="no validation split: hold out this fraction of the training split's images for evaluation "
                        "(drawn by --seed, every class in it when possible; never trained on; their ids are "
                        "recorded in args.json as val_image_ids). Replaces --val-split")
    d.add_argument("--keep-difficult", action="store_true",
                   help="VOC: train on objects marked difficult too (evaluation always ignores them)")
    d.add_argument("--voc-metric", choices=["2007", "2010"],
                   help="VOC: the AP that is mAP: 2007 = VOC2007 11-point (the SSD paper's; default), 2010 = "
                        "VOC2010+ area under the curve; both are printed")
    d.add_argument("--labels", choices=["auto", "coco", "contiguous"], default="auto",
                   help="labels: COCO category ids (91-way head) or contiguous 1..K; auto: COCO's if the "
                        "categories are COCO's (default auto)")
    d.add_argument("--workers", type=cli.nonnegative_int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes per training process (default: min(4, CPUs))")
    d.add_argument("--train-subset", type=cli.positive_int, help="use only the first N training images (default: all)")
    d.add_argument("--val-subset", type=cli.positive_int, help="evaluate on only the first N val images (default: all)")
    o = p.add_argument_group("optimisation (defaults: the published recipe; the demo schedule on sample data)")
    o.add_argument("--epochs", type=cli.positive_int, help=f"epochs to train (default {RECIPE['epochs']})")
    o.add_argument("--batch-size", type=cli.positive_int,
                   help=f"images per process per step (default {RECIPE['batch_size']})")
    o.add_argument("--lr", type=cli.positive_float, help=f"learning rate for a global batch of {LR_REFERENCE_BATCH}; "
                                                         f"scaled linearly with the actual global batch "
                                                         f"(default {RECIPE['lr']})")
    o.add_argument("--momentum", type=cli.fraction, help=f"SGD momentum (default {RECIPE['momentum']})")
    o.add_argument("--weight-decay", type=cli.nonnegative_float,
                   help=f"SGD weight decay (default {RECIPE['weight_decay']})")
    o.add_argument("--lr-steps", type=cli.positive_int, nargs="*",
                   help=f"epochs at which the lr is multiplied by 0.1 (default "
                        f"{' '.join(map(str, RECIPE['lr_steps']))})")
    o.add_argument("--warmup-iters", type=cli.nonnegative_int, help="iterations of linear lr warm-up from 0.001x "
                                                                    f"(default {RECIPE['warmup_iters']})")
    o.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast, dynamic loss scaling); "
                                                      "CUDA only")
    o.add_argument("--graph", action="store_true",
                   help="graph mode: each training step (forward, loss, backward, SGD update; with --amp OneFlow's "
                        "graph AMP and GradScaler) compiled as one nn.Graph, data parallel by global tensors (model "
                        "broadcast, batch split over processes) instead of DistributedDataParallel; same recipe, "
                        "losses, checkpoints and eager evaluation")
    o.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction,
                   help="start the VGG16 trunk from the ImageNet weights (default: yes for real data trained from "
                        "scratch; never with --weights, --pretrained or a checkpoint to resume, whose weights "
                        "replace it; no for the demo; $SSD300_VGG16_BACKBONE_URL overrides their address)")
    o.add_argument("--freeze-backbone", action="store_true",
                   help="keep the VGG16 trunk (conv1_1 to fc7) fixed and train only the added layers and the heads: "
                        "for fine-tuning on a small dataset (default: only the first stage is fixed, as in the recipe)")
    r = p.add_argument_group("run")
    r.add_argument("--output-dir", default=OUTPUT_DIR, help=f"checkpoints, metrics, plot (default {OUTPUT_DIR})")
    r.add_argument("--resume", help="continue from a checkpoint directory, or 'auto' for the newest intact one in "
                                    "--output-dir")
    r.add_argument("--weights", help="start from these weights: a checkpoint, an extracted zoo directory, or a zoo "
                                     "tarball (path or http(s)/file URL). Trained on other classes, they are "
                                     "fine-tuned: every tensor that fits is loaded, the classification head is "
                                     "rebuilt, and classes named as one of theirs keep its scores")
    r.add_argument("--pretrained", action="store_true",
                   help="start from the zoo's COCO weights (as --weights, downloaded, cached and verified as by "
                        "infer.sh --pretrained): fine-tuning for your classes")
    r.add_argument("--test-only", action="store_true", help="only evaluate (--weights or --resume) on the val split")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    r.add_argument("--seed", type=cli.nonnegative_int, default=0,
                   help="seed of the weights, data order and augmentation (default 0)")
    r.add_argument("--print-freq", type=cli.positive_int,
                   help=f"iterations between progress lines (default {RECIPE['print_freq']})")
    r.add_argument("--eval-every", type=cli.positive_int, help=f"evaluate every N epochs, and after the last "
                                                               f"(default {RECIPE['eval_every']})")
    r.add_argument("--keep-checkpoints", type=cli.nonnegative_int, default=3,
                   help="newest checkpoints kept besides the best (default 3)")
    return p


def resolve(args):
    """Fill unset flags from the recipe, or from the demo schedule when training on the sample dataset; check
    what parsing alone cannot. Raises ValueError naming the flag."""
    demo = args.data_path is None and not os.path.isfile(
        os.path.join(COCO_DIR, "annotations", "instances_train2017.json"))
    if args.data_path is None:
        args.data_path = SAMPLE_DATA if demo else COCO_DIR
    elif not os.path.exists(args.data_path):
        raise ValueError(f"--data-path {args.data_path}: no such file or directory")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction {args.val_fraction:g}: must be between 0 and 1 (exclusive)")
    if args.val_fraction is not None and args.val_split:
        raise ValueError("give --val-split or --val-fraction (a part of the training split held out), not both")
    from_weights = args.weights or args.pretrained
    for key, value in (DEMO if demo else RECIPE).items():
        if getattr(args, key) is None:
            setattr(args, key, False if key == "pretrained_backbone" and from_weights else value)
    args.demo = demo
    if args.device is None:
        args.device = "cuda" if flow.cuda.is_available() else "cpu"
    if args.amp and not args.device.startswith("cuda"):
        raise ValueError(f"--amp needs a CUDA device (float16 autocast); this run is on {args.device}")
    if args.weights and args.pretrained:
        raise ValueError("give --weights or --pretrained, not both")
    if args.pretrained:
        args.weights = weights_url("coco")
    if args.weights and args.pretrained_backbone:
        raise ValueError(f"--pretrained-backbone with --{'pretrained' if args.pretrained else 'weights'}: those "
                         "weights replace the ImageNet backbone; drop --pretrained-backbone")
    if args.weights or args.test_only:
        args.pretrained_backbone = False
    if args.test_only and not (args.weights or args.resume):
        raise ValueError("--test-only needs --weights or --resume")
    return args


def build_optimizer(model, args, world_size):
    """``(SGD over the trainable parameters, base lr)``: ``--lr`` is for a global batch of
    ``LR_REFERENCE_BATCH`` and scales linearly with the actual one (``--batch-size`` x processes)."""
    base_lr = args.lr * args.batch_size * world_size / LR_REFERENCE_BATCH
    optimizer = flow.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=base_lr,
                               momentum=args.momentum, weight_decay=args.weight_decay)
    return optimizer, base_lr


def on_each_node(prepare):
    """Run ``prepare()`` on each node's first process while the others wait (a download, the sample dataset)."""
    if dist.is_local_main():
        prepare()
    dist.barrier()


def prepare_sample_dataset(path):
    if not os.path.isfile(os.path.join(path, "annotations", "instances_val2017.json")):
        from cv.detection.data.sample import make_sample_dataset

        start = time.perf_counter()
        make_sample_dataset(path)
        print(f"generated the sample dataset in {path} ({time.perf_counter() - start:.0f} s)", flush=True)


def resolve_data(args):
    """Open the data of ``--data-path`` (COCO, Pascal VOC, YOLO or a dataset YAML), its layout said in one line;
    ``--train-split`` and ``--val-split`` filled from its defaults; with ``--val-fraction`` the validation images
    held out of the training split, their ids in ``args.val_image_ids``. Returns ``(layout, training set,
    validation set)``. Whatever is wrong with the data raises here, before anything is written."""
    layout = datasets.detect_layout(args.data_path)
    carve = args.val_fraction is not None
    args.train_split, args.val_split = datasets.default_splits(layout, args.train_split, args.val_split, carve)
    if carve:
        args.val_split = f"{args.val_fraction:g} of {args.train_split} held out"
    dist.print0(f"{layout.description}; " + (f"evaluating on {args.val_split}" if args.test_only else
                                             f"training on {args.train_split}, evaluating on {args.val_split}"))
    options = dict(labels=args.labels, keep_difficult=args.keep_difficult, voc_metric=args.voc_metric)
    train_set = datasets.open_split(layout, args.train_split, True, transform=train_transform(), seed=args.seed,
                                    max_images=None if carve else args.train_subset, **options)
    args.val_image_ids = None
    if carve:
        train_set, val_set, args.val_image_ids = datasets.carve_val_split(train_set, args.val_fraction, args.seed)
        dist.print0(f"held out {len(val_set)} of the {len(train_set) + len(val_set)} usable images of "
                    f"{args.train_split} for evaluation (--val-fraction {args.val_fraction:g}, seed {args.seed}; "
                    "their ids: val_image_ids in args.json)")
        train_set = train_set.subset(max_images=args.train_subset, transform=train_set.transform)
        val_set = val_set.subset(max_images=args.val_subset)
    else:
        val_set = datasets.open_split(layout, args.val_split, False, max_images=args.val_subset, **options)
    check_data(args, train_set, val_set)
    return layout, train_set, val_set


def check_data(args, train_set, val_set):
    """What makes the two splits unusable together (ValueError), or the evaluation optimistic (a warning)."""
    if val_set.label_to_category_id != train_set.label_to_category_id:
        raise ValueError(f"{val_set.annotation_file} and {train_set.annotation_file} have different categories")
    if len(train_set) < args.batch_size * dist.world_size():  # no full batch for every process (drop_last)
        raise ValueError(f"--batch-size {args.batch_size} x {dist.world_size()} process(es) is more than the "
                         f"{len(train_set)} training images of {train_set.annotation_file}")
    both = {r.image_id for r in train_set.images} & {r.image_id for r in val_set.images}
    if both:
        dist.print0(f"warning: {len(both)} of the {len(val_set)} evaluation images are also training images "
                    f"({args.train_split} and {args.val_split} overlap): the evaluation is optimistic")


def build_data(args, data):
    """``(training set, validation set, their loaders)`` from :func:`resolve_data`'s ``data``."""
    _, train_set, val_set = data
    distributed = dist.world_size() > 1
    train_loader = make_loader(train_set, args.batch_size, args.workers, shuffle=True, distributed=distributed,
                               drop_last=True, seed=args.seed)
    val_loader = make_loader(val_set, args.batch_size, args.workers, shuffle=False, distributed=distributed)
    return train_set, val_set, train_loader, val_loader


def build_model(args, train_set, device):
    """The model on ``device``, started from what the flags say, each part's origin said on the first lines.

    A checkpoint to resume, ``--weights`` or ``--pretrained`` replace every tensor of the ImageNet backbone, so no
    backbone is downloaded then. Weights trained on other classes are fine-tuned
    (:func:`cv.detection.ssd300_vgg16.weights.load_into`); ``--test-only`` evaluates weights as they are and
    refuses other classes. What was loaded is kept in ``args.init`` (``args.json`` and the checkpoints). Which
    parameters train depends on the flags alone, so that a resumed run's optimizer matches the checkpoint's.
    """
    resuming = bool(args.resume)
    if args.resume == "auto":  # asked before the run holds the output directory's lock: look, repair nothing
        resuming = os.path.isdir(args.output_dir) and ckpt.latest_checkpoint(
            args.output_dir, say=lambda *_: None, repair=False) is not None
    download = args.pretrained_backbone and not resuming
    if download:
        on_each_node(lambda: hub.resolve_weights(weights_url("vgg16_backbone"), max_bytes=max_weights_bytes()))
    model = ssd300_vgg16(num_classes=train_set.num_classes, pretrained_backbone=download)
    if resuming:
        said = "every tensor from the checkpoint to resume (--resume)"
    elif args.weights:
        report = load_into(model, args.weights, train_set.label_names)
        if args.test_only and report.rebuilt:
            raise ValueError(f"--weights {args.weights} does not fit this model ({train_set.num_classes} classes): "
                             f"it was trained for other classes; --test-only evaluates weights as they are")
        args.init = report.as_dict()
        said = str(report)
    elif download:
        said = (f"VGG16 trunk from the ImageNet backbone ({weights_url('vgg16_backbone')}); extra layers and heads "
                f"initialised (seed {args.seed})")
    else:
        said = f"every layer initialised (seed {args.seed}), no pretrained weights"
    dist.print0(f"model: {said}")
    if args.pretrained_backbone or args.weights:
        freeze_vgg_stages(model.backbone.features, 4)  # a pretrained trunk: the recipe's frozen first stage
    if args.freeze_backbone:
        freeze_trunk(model)
        trainable = sum(p.requires_grad for p in model.parameters())
        dist.print0(f"--freeze-backbone: VGG16 trunk fixed, {trainable} of {len(list(model.parameters()))} "
                    "parameter tensors trained")
    return model.to(device)


def load_resume_point(args, model, optimizer, scaler):
    """``{"iteration", "epoch", "part"}`` to continue from (``--resume``), after loading the model, optimizer,
    loss scaler and RNG states; a fresh start's counters without it. Every rank must resume from the same point."""
    state = {"iteration": 0, "epoch": -1, "part": 0}
    path = args.resume
    if args.resume == "auto":
        path = ckpt.latest_checkpoint(args.output_dir, say=dist.print0)
        if path is None:
            dist.print0(f"--resume auto: no checkpoint in {args.output_dir} yet, starting from scratch")
    if path:
        try:
            payload = ckpt.load(path)
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"--resume {path} is not a training checkpoint of this model ({type(e).__name__}: "
                             f"{e})") from None
        if scaler is not None and payload.get("amp_scaler"):
            scaler.load_state_dict(payload["amp_scaler"])
        ckpt.set_rng_state(payload["rng"])
        if (payload.get("args") or {}).get("init"):
            args.init = payload["args"]["init"]  # where the resumed run's weights came from stays on record
        state = {"iteration": payload["iteration"], "epoch": payload["epoch"], "part": payload.get("part") or 0}
        dist.print0(f"resumed from {path}: " + (f"{state['part']} iterations of epoch {state['epoch'] + 1} done"
                                                 if state["part"] else f"epoch {state['epoch']} done")
                    + f" (global iteration {state['iteration']})")
    if len({tuple(v) for v in dist.all_gather_ints([state["iteration"], state["epoch"]])}) > 1:
        raise ValueError(f"the processes found different checkpoints in {args.output_dir}: with several nodes, "
                         "--resume needs the output directory on storage that all nodes share")
    return state


def build_trainer(args, model, data, device):
    """The :class:`Trainer` of the run's mode (``--graph``, ``--amp`` or eager), with its optimizer and, under
    ``--resume``, everything restored from the checkpoint."""
    optimizer, base_lr = build_optimizer(model, args, dist.world_size())
    scaler = DynamicLossScaler() if args.amp else None
    counters = load_resume_point(args, model, optimizer, scaler)
    schedule = LrSchedule(base_lr, args.warmup_iters, args.lr_steps)
    parts = dict(model=model, optimizer=optimizer, schedule=schedule, device=device,
                 log=ProgressLog(args.print_freq, total_epochs=args.epochs))
    if args.graph and not args.test_only:  # evaluation alone needs no graph
        graph = graph_mode.GraphTrainer(model, optimizer, base_lr, args.warmup_iters, args.lr_steps, counters,
                                        len(data.train_loader), device, scaler,
                                        max_boxes=graph_mode.box_capacity(data.train_set))
        trainer = GraphModeTrainer(graph, **parts)
    else:
        net = flow.nn.parallel.DistributedDataParallel(model) if dist.world_size() > 1 and not args.graph else model
        trainer = AmpTrainer(net=net, scaler=scaler, **parts) if scaler else Trainer(net=net, **parts)
    trainer.iteration, trainer.epoch, trainer.part = counters["iteration"], counters["epoch"], counters["part"]
    return trainer


def seed_everything(seed):
    flow.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def claim_output_dir(args):
    """Rank 0: check ``--output-dir``, lock it for this run, clear what a killed run left, write ``args.json``.
    Returns the lock (None on the other ranks)."""
    if not dist.is_main():
        return None
    cli.writable_dir(args.output_dir, "--output-dir")
    # One run per output directory: a second one would interleave metrics and overwrite checkpoints.
    lock = fileio.DirectoryLock(args.output_dir, "training run").acquire()
    for name in fileio.remove_dead_temporaries(args.output_dir):
        print(f"removed {name}, left by a run that was killed while writing it", flush=True)
    fileio.write_json(os.path.join(args.output_dir, "args.json"), vars(args), indent=1)
    return lock


class Data(NamedTuple):
    """What :func:`build_data` returns."""

    train_set: object
    val_set: object
    train_loader: object
    val_loader: object


def main(args):
    with cli.StopRequest("stopping after the current iteration (a resumable checkpoint will be saved)") as stop:
        return run(args, stop)


def run(args, stop):
    """The training program (or, with ``--test-only``, the evaluation); ``stop``, a :class:`cli.StopRequest`."""
    resolve(args)
    if args.demo:
        dist.print0(f"No COCO found (no --data-path, nothing in {COCO_DIR}): training on the sample dataset in "
                    f"{SAMPLE_DATA} with a short demo schedule ({args.epochs} epochs x {args.train_subset} images, "
                    "which takes minutes on a CPU). Pass --data-path DIR to train on real data.")
        on_each_node(lambda: prepare_sample_dataset(args.data_path))
    opened = resolve_data(args)
    seed_everything(args.seed)
    device = flow.device(args.device)
    if dist.is_main():
        cli.writable_dir(args.output_dir, "--output-dir")
    # Nothing is written into the output directory before the data and the weights are known to be usable.
    data = Data(*build_data(args, opened))
    model = build_model(args, data.train_set, device)
    lock = claim_output_dir(args)
    trainer = build_trainer(args, model, data, device)
    trainer.stop = stop
    session = TrainingRun(args, data, trainer)
    try:
        if args.test_only:
            return session.test()
        stats = session.train()
    finally:
        session.close()
        if lock:
            lock.release()
    if dist.world_size() > 1:
        dist.check_same_weights(model)
    if dist.is_main():
        summarize_run(args)
    return stats


class TrainingRun:
    """The training program's epochs: train, evaluate every ``--eval-every`` epochs, checkpoint after each epoch
    (or after the iteration in progress when a stop is requested); ``data``, a :class:`Data`; ``trainer``, a
    :class:`Trainer` with its counters resumed. Rank 0 writes the metrics file (``metrics.jsonl``)."""

    def __init__(self, args, data, trainer):
        self.args, self.data, self.trainer = args, data, trainer
        self.metrics = MetricsFile(os.path.join(args.output_dir, "metrics.jsonl")) if dist.is_main() else None
        trainer.log.metrics = self.metrics

    def close(self):
        if self.metrics:
            self.metrics.close()

    def test(self):
        """``--test-only``: evaluate the model on the val split; its stats (rank 0)."""
        stats, primary = self.evaluate("detections_test.json")
        if self.metrics:
            self.metrics.write({"type": "eval", "epoch": self.trainer.epoch, "test_only": True, "primary": primary,
                                **stats})
        return stats

    def evaluate(self, json_name):
        """``(stats, primary metric)`` of the val split (COCO's or VOC's evaluation: the dataset knows its own);
        the detections go to ``json_name`` in the output directory."""
        evaluator = self.data.val_set.evaluator()
        path = os.path.join(self.args.output_dir, json_name) if dist.is_main() else None
        stats = evaluate(self.trainer.net, self.data.val_loader, evaluator, self.trainer.device, path)
        return stats, evaluator.primary_metric  # COCO: AP, VOC: mAP; the best checkpoint's criterion

    def train(self):
        """The epochs from the trainer's counters on; the last evaluation's stats. A stop ends the run with
        :class:`cli.Interrupted` after the checkpoint."""
        args, trainer, loader = self.args, self.trainer, self.data.train_loader
        dist.print0(f"training on {len(self.data.train_set)} images ({args.data_path}), "
                    f"{self.data.train_set.num_classes - 1} classes, {dist.world_size()} process(es) x "
                    f"{args.batch_size} images, lr {trainer.schedule.base_lr:g}, device {trainer.device}, "
                    + trainer.description)
        stats = None
        for epoch in range(trainer.epoch + 1, args.epochs):
            start = trainer.part
            done = trainer.train_epoch(loader)
            finished = done == start + len(loader)
            stats = primary = None
            # A stop requested during this evaluation takes effect once it is done.
            if finished and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
                stats, primary = self.evaluate(f"detections_epoch{epoch:04d}.json")
                if self.metrics:
                    self.metrics.write({"type": "eval", "epoch": epoch, "primary": primary, **stats})
            path = self.save(epoch, None if finished else done, stats, primary)
            # Every rank stops after the same iteration (the trainer agrees on it) or the same epoch.
            if not finished or dist.any_rank(trainer.stop.requested):
                raise cli.Interrupted(trainer.stop.signum, f"by {trainer.stop.name} at epoch {epoch}, iteration "
                                                           f"{done} of {start + len(loader)}; saved {path}. Continue "
                                                           "with the same command and --resume auto")
        return stats

    def save(self, epoch, part, stats, primary=None):
        """The checkpoint of ``epoch`` (``part`` iterations of it, or None when it is done): rank 0 writes it (a full
        disk: the error names the latest intact one); all ranks wait. ``stats[primary]`` (the evaluator's primary
        metric) decides whether it is the best so far."""
        args = self.args
        path = os.path.join(args.output_dir, ckpt.checkpoint_name(epoch, part))
        if dist.is_main():
            try:
                path = ckpt.save_checkpoint(args.output_dir, self.payload(part, stats, primary), epoch, part=part,
                                            ap=stats[primary] if stats else None, keep=args.keep_checkpoints)
            except OSError as e:
                latest = ckpt.read_index(args.output_dir).get("latest")
                raise OSError(f"cannot write checkpoint {path} ({e.strerror or e}); nothing of it was kept. The latest "
                              "intact checkpoint is " + (os.path.join(args.output_dir, latest) if latest else "none")
                              ) from None
            print(f"saved {path}", flush=True)
        dist.barrier()
        return path

    def payload(self, part, stats, primary):
        """What a checkpoint holds: the weights, the optimizer and loss-scaler states, the counters, the arguments,
        the RNG states, and what the model was trained on (label names, category ids, evaluation)."""
        args, trainer, train_set = self.args, self.trainer, self.data.train_set
        return {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "epoch": trainer.epoch, "part": part, "iteration": trainer.iteration, "args": vars(args),
                "rng": ckpt.rng_state(), "amp_scaler": trainer.scaler.state_dict() if trainer.scaler else None,
                "meta": {"arch": "ssd300_vgg16", "num_classes": train_set.num_classes,
                         "label_names": train_set.label_names,
                         "label_to_category_id": train_set.label_to_category_id,
                         "dataset": args.data_path, "eval_split": args.val_split, "stats": stats,
                         "primary_metric": primary}}


def summarize_run(args):
    plot = os.path.join(args.output_dir, "training.png")
    records = read_metrics(os.path.join(args.output_dir, "metrics.jsonl"))
    plot_metrics(records, plot)
    index = ckpt.read_index(args.output_dir)
    latest = os.path.join(args.output_dir, index["latest"])
    print(f"\ndone. latest checkpoint: {latest}")
    if index.get("best"):
        metric = next((r["primary"] for r in reversed(records) if r.get("type") == "eval" and r.get("primary")), "AP")
        print(f"best checkpoint: {os.path.join(args.output_dir, index['best'])} ({metric} {index['best_ap']:.4f})")
    print(f"metrics: {os.path.join(args.output_dir, 'metrics.jsonl')}, plot: {plot}")
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"evaluate it again: bash {os.path.join(here, 'train.sh')} --test-only --weights {latest}"
          + ("" if args.demo else f" --data-path {args.data_path}"))
    print(f"run it on images:  bash {os.path.join(here, 'infer.sh')} --weights {latest} --images PATH ...")
    print(f"publish it:        {sys.executable} {os.path.join(REPO, 'scripts', 'publish.py')} {latest} "
          "--output-dir DIR")


if __name__ == "__main__":
    cli.run(main, get_args_parser())
