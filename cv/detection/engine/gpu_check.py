"""A self-check of the CUDA paths, for users to run on their GPU machine: ``bash scripts/gpu_check.sh``.

Our test machines have no GPU, so what only runs on CUDA is proven there by reasoning alone: NMS through
``flow.nms`` with the documented order (:func:`cv.detection.models.box_ops.batched_nms`), training under
``flow.autocast`` with :class:`~cv.detection.engine.trainer.DynamicLossScaler`, graph mode with global tensors
(:class:`~cv.detection.engine.graph_mode.GraphTrainer`) and NCCL between processes. This program runs each on
the GPU against the CPU or eager float32 path, from the same weights and data, and prints a one-screen report to
paste into an issue. Exit status 0 when every check passes (or when no CUDA device is visible: nothing to check),
1 otherwise.

Each check is a function of ``device`` (and ``reference``, the device it is compared with), returning a
:class:`Result`; the tests run them with ``"cpu"`` against ``"cpu"`` on a tiny model. The comparisons run in
float32: TF32, which OneFlow enables by default on Ampere and newer GPUs, is switched off for this program (it
rounds convolutions to 10 mantissa bits, a thousand times coarser than the rounding the tolerances below allow for).
"""
import argparse
import copy
import dataclasses
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import oneflow as flow
from oneflow import sysconfig
from PIL import Image

from cv.detection.data.base import DetectionDataset, ImageRecord, make_loader
from cv.detection.engine.graph_mode import GraphTrainer
from cv.detection.engine.launch import visible_gpus
from cv.detection.engine.trainer import (AmpTrainer, DynamicLossScaler, GraphModeTrainer, ProgressLog,
                                         Trainer)
from cv.detection.models import box_ops

# --- tolerances ------------------------------------------------------------------------------------------------
# Detections of the same float32 network on two devices: the devices sum the convolutions in different orders,
# which moves SSD300's head outputs by about 1e-6 of their size (1e-5 with Winograd convolutions). A score (a
# softmax of such outputs, at least 0.01 here) then moves by well under 1e-6 and a box (decoded offsets times default
# boxes up to 300 px, scaled to the image) by under 0.01 px: the tolerances leave ten times that and more, while a
# wrong box, label or suppression is off by whole pixels, labels or detections.
BOX_ATOL = 0.1  # pixels of the input image
SCORE_ATOL = 1e-5
# The constructed tie case goes through the same arithmetic on identical inputs: everything but the last bits of
# softmax and exp is exact, and the order must be identical.
TIE_BOX_ATOL = 1e-3
TIE_SCORE_ATOL = 1e-7
# float16 autocast rounds every activation to 11 significant bits (relative 5e-4); through SSD300's 23 layers that
# moves the losses by about 1e-3 relative, and a few SGD steps add little. 2% is ten times that; a loss scale not
# divided out of the gradients (a step 65536 times too large) or a step taken on inf gradients changes the next
# loss by far more, or makes it non-finite.
AMP_LOSS_RTOL = 0.02
# Graph mode computes the same float32 losses with fused kernels in another order: float32 rounding alone, which a
# few steps grow to about 1e-6 relative. 1e-3 is a thousand times that and still far below what a wrong learning
# rate or normalisation does to the next step's loss at the check's learning rate (tests/test_graph_mode.py).
GRAPH_LOSS_RTOL = 1e-3

NUM_CLASSES = 91  # COCO's head: the most candidates after the network, the hardest case for post-processing
# SSD300 from random weights sees its input scaled to 0-255 and diverges within a few steps at ten times this; at
# this rate every step still lowers the loss clearly, so a wrong step shows in the next loss.
TRAIN_LR = 1e-4
TRAIN_STEPS = 4
TRAIN_BATCH = 4


@dataclasses.dataclass
class Result:
    """One check's outcome: ``passed`` is None when skipped; ``detail`` says what was compared, in one line."""

    name: str
    passed: object
    detail: str
    seconds: float = 0.0
    speeds: dict = dataclasses.field(default_factory=dict)  # label -> images per second on the checked device


def within(name, got, expected, atol=0.0, rtol=0.0):
    """``(ok, text)``: whether ``|got - expected| <= atol + rtol * |expected|`` everywhere (same shapes), and a
    short text naming ``name``, the largest difference and the tolerance."""
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    tol = f"tol {atol:g}" if not rtol else f"tol {rtol:g} rel" if not atol else f"tol {atol:g} + {rtol:g} rel"
    if got.shape != expected.shape:
        return False, f"{name}: shapes {got.shape} and {expected.shape} differ"
    if got.size == 0:
        return True, f"{name}: nothing to compare"
    diff = np.abs(got - expected)
    bound = atol + rtol * np.abs(expected)
    ok = bool(np.all(diff <= bound))  # False for NaN
    worst = float(np.max(diff / np.maximum(np.abs(expected), 1e-30))) if rtol and not atol else float(
        np.max(diff))
    return ok, f"{name} max diff {worst:.2g}{' rel' if rtol and not atol else ''} ({tol})"


# --- detections ------------------------------------------------------------------------------------------------


def compare_detections(got, expected, box_atol, score_atol, exact_order=False):
    """Problems (one line each) between two lists of detections of the same images (dicts of ``boxes``, ``scores``,
    ``labels``, as the model returns them), and the largest box and score differences of matched detections.

    Detections pair up in order: the same label, box within ``box_atol`` and score within ``score_atol``. Without
    ``exact_order``, a detection may sit elsewhere among detections whose scores are within ``score_atol`` of its
    own (near-ties, which rounding may order either way), and the last detections of a list may have no partner
    when their scores are within ``score_atol`` of the other list's last (the cut at ``detections_per_img``).
    """
    problems, box_diff, score_diff = [], 0.0, 0.0
    for image, (g, e) in enumerate(zip(got, expected)):
        g, e = ({k: d[k].numpy() for k in ("boxes", "scores", "labels")} for d in (g, e))
        pairs, unmatched = _pair_up(g, e, box_atol, score_atol)
        extra = sorted(set(range(len(g["scores"]))) - {j for _, j in pairs})
        for i, j in pairs:
            box_diff = max(box_diff, float(np.abs(g["boxes"][j] - e["boxes"][i]).max()))
            score_diff = max(score_diff, float(abs(g["scores"][j] - e["scores"][i])))
        cut = lambda s, other: len(other) and abs(s - other.min()) <= score_atol  # noqa: E731
        lost = [i for i in unmatched if exact_order or not cut(e["scores"][i], g["scores"])]
        added = [j for j in extra if exact_order or not cut(g["scores"][j], e["scores"])]
        if lost:
            problems.append(f"image {image}: expected detection {lost[0]} {_describe(e, lost[0])} has no match "
                            f"({len(lost)} unmatched)")
        if added:
            problems.append(f"image {image}: detection {added[0]} {_describe(g, added[0])} was not expected "
                            f"({len(added)} unexpected)")
        moved = [(i, j) for i, j in pairs if i != j]
        if exact_order and moved:
            problems.append(f"image {image}: detection {moved[0][0]} comes at position {moved[0][1]} "
                            f"({len(moved)} out of order)")
    if len(got) != len(expected):
        problems.append(f"{len(got)} images' detections for {len(expected)} images")
    return problems, box_diff, score_diff


def _pair_up(g, e, box_atol, score_atol):
    """``(pairs [(expected index, got index)], unmatched expected indices)``: each expected detection takes the
    first unused detection of ``g`` that matches it."""
    used = np.zeros(len(g["scores"]), dtype=bool)
    pairs, unmatched = [], []
    for i in range(len(e["scores"])):
        near = np.abs(g["boxes"] - e["boxes"][i]).max(axis=1) <= box_atol if len(used) else used
        fits = np.flatnonzero(~used & near & (g["labels"] == e["labels"][i])
                              & (np.abs(g["scores"] - e["scores"][i]) <= score_atol))
        if len(fits):
            used[fits[0]] = True
            pairs.append((i, int(fits[0])))
        else:
            unmatched.append(i)
    return pairs, unmatched


def _describe(d, i):
    box = np.round(d["boxes"][i], 2).tolist()
    return f"(label {int(d['labels'][i])}, score {float(d['scores'][i]):.6g}, box {box})"


def check_images(seed=0):
    """Four images of different sizes (the model resizes them; boxes come back in each image's pixels), noise
    with a few flat rectangles: random weights give many detections on anything."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in ((300, 300), (480, 640), (375, 500), (427, 320)):
        img = rng.random((3, h, w), dtype=np.float32) * 0.3
        for _ in range(3):
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[:, y:y + h // 3, x:x + w // 3] = rng.random((3, 1, 1))
        images.append(img)
    return images


@flow.no_grad()
def detect(model, images, device, repeats=1):
    """``(detections moved to the CPU, images per second of the last of ``repeats`` runs)`` of ``model`` (a copy
    of it on ``device``) on NumPy ``images``."""
    model = copy.deepcopy(model).to(device).eval()
    batch = [flow.tensor(img, device=device) for img in images]
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(batch)
        out = [{k: v.cpu() for k, v in d.items()} for d in out]  # waits for the device
        seconds = time.perf_counter() - start
    return out, len(images) / seconds


def check_detections(device, reference="cpu", model=None):
    """SSD300's detections on ``device`` against ``reference``: same weights, same images, boxes within
    :data:`BOX_ATOL`, scores within :data:`SCORE_ATOL`, same labels, same order up to near-ties."""
    model = model or random_ssd300()
    images = check_images()
    start = time.perf_counter()
    got, speed = detect(model, images, device, repeats=2)
    expected, _ = detect(model, images, reference)
    problems, box_diff, score_diff = compare_detections(got, expected, BOX_ATOL, SCORE_ATOL)
    count = sum(len(d["scores"]) for d in expected)
    if count < 10 * len(images):
        problems.append(f"only {count} detections on {len(images)} images: too few to compare")
    detail = (f"{len(images)} images, {count} detections; boxes max diff {box_diff:.2g} px (tol {BOX_ATOL:g}), "
              f"scores {score_diff:.2g} (tol {SCORE_ATOL:g}), labels and order")
    return Result("detections", not problems, "; ".join([detail] + problems[:2]), time.perf_counter() - start,
                  {"inference": speed})


# --- tie order -------------------------------------------------------------------------------------------------

# Boxes, scores and categories where only the tie rule (equal scores: lower index first) decides what is kept:
# 1 overlaps 0 and 4 overlaps 3 (IoU 0.82) with equal scores, 2 is 0's box in another category, 5 overlaps nothing.
TIE_BOXES = [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [21, 20, 31, 30], [50, 50, 60, 60]]
TIE_SCORES = [0.5, 0.5, 0.5, 0.9, 0.9, 0.5]
TIE_CATEGORIES = [1, 1, 2, 1, 1, 1]
TIE_KEPT = [3, 0, 2, 5]  # by decreasing score, equal scores by lower index; 1 and 4 suppressed


def tied_head_outputs(model, seed=0):
    """``(head outputs, grid sizes)`` for one image where scores tie exactly. Classes 1 and 2 score the same at
    every default box, the others next to nothing; the default boxes share one of three background logits (three
    score levels, the highest rare so that all three reach the detections); box offsets take a few values, so
    many boxes overlap alike. Within a device every tied score is computed by the same operations on the same
    numbers (bit-identical); between devices only the last bit of softmax's exp may differ."""
    with flow.no_grad():
        features = model.backbone(model.preprocess([flow.zeros(3, *model.size)]))
        if isinstance(features, dict):
            features = list(features.values())
        shapes = {k: v.shape for k, v in model.head(features).items()}
    rng = np.random.default_rng(seed)
    logits = np.full(shapes["cls_logits"], -30.0, dtype=np.float32)  # exp(-30): far below any threshold, not 0
    logits[..., 1:3] = 0.0
    levels = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
    logits[..., 0] = rng.choice(levels, shapes["cls_logits"][:2], p=[0.01, 0.04, 0.95])
    codes = rng.choice(np.array([0.0, 0.5, -0.5], dtype=np.float32), shapes["bbox_regression"])
    return ({"cls_logits": flow.tensor(logits), "bbox_regression": flow.tensor(codes)},
            [f.shape[-2:] for f in features])


def check_tie_order(device, reference="cpu", model=None):
    """Exactly tied scores: :func:`box_ops.batched_nms` on ``device`` keeps :data:`TIE_KEPT`, and the model's
    post-processing of tied head outputs gives the same detections in the same order on ``device`` and
    ``reference``."""
    model = copy.deepcopy(model or random_ssd300()).eval()
    start = time.perf_counter()
    problems = []
    args = [flow.tensor(TIE_BOXES, dtype=flow.float32, device=device), flow.tensor(TIE_SCORES, device=device),
            flow.tensor(TIE_CATEGORIES, dtype=flow.int64, device=device)]
    kept = box_ops.batched_nms(*args, model.nms_thresh).cpu().numpy().tolist()
    if kept != TIE_KEPT:
        problems.append(f"batched_nms kept {kept}, expected {TIE_KEPT}")
    heads, grids = tied_head_outputs(model)
    size = [tuple(model.size)]
    outputs = {}
    with flow.no_grad():
        for dev in (device, reference):
            detections = model.to(dev).detect({k: v.to(dev) for k, v in heads.items()}, grids, size)
            outputs[dev] = [{k: v.cpu() for k, v in d.items()} for d in detections]
    found, box_diff, score_diff = compare_detections(outputs[device], outputs[reference], TIE_BOX_ATOL,
                                                     TIE_SCORE_ATOL, exact_order=True)
    problems += found
    scores = outputs[reference][0]["scores"].numpy()
    ties, levels = int(np.sum(scores[1:] == scores[:-1])), len(np.unique(scores))
    if ties < len(scores) // 2 or levels < 2:
        problems.append(f"{ties} of {len(scores)} detections tie, {levels} score levels: the case tests too little")
    detail = (f"batched_nms keeps {kept} (expected {TIE_KEPT}); {len(scores)} detections of tied outputs "
              f"({levels} levels, {ties} ties): same order, boxes {box_diff:.2g} px, scores {score_diff:.2g}")
    return Result("tie order", not problems, "; ".join([detail] + problems[:2]), time.perf_counter() - start)


# --- training --------------------------------------------------------------------------------------------------


def training_loader(model, directory, num_images=TRAIN_STEPS * TRAIN_BATCH, seed=0):
    """A loader over ``num_images`` PNG images written to ``directory`` at the model's input size (graph mode
    needs it), 1-4 random boxes each, in a fixed order, no augmentation: every run sees the same batches."""
    rng = np.random.default_rng(seed)
    h, w = model.size
    records = []
    for i in range(num_images):
        path = os.path.join(directory, f"{i}.png")
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 0.6, (k, 2)) * [w, h]
        wh = rng.uniform(0.15, 0.4, (k, 2)) * [w, h]
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
        records.append(ImageRecord(i, path, h, w, boxes, rng.integers(1, model.num_classes, k).astype(np.int64)))
    names = ["__background__"] + [f"class {c}" for c in range(1, model.num_classes)]
    dataset = DetectionDataset(records, names, {c: c for c in range(1, model.num_classes)}, directory, directory,
                               train=True)
    return make_loader(dataset, TRAIN_BATCH, workers=0, shuffle=False)


class _Records(list):
    """Collects the trainer's logged records (one per step with ``print_freq=1``)."""

    def write(self, record):
        self.append(record)


class _RecordingScaler(DynamicLossScaler):
    """A :class:`DynamicLossScaler` that remembers, step by step, whether the step was taken (finite gradients)."""

    def __init__(self):
        super().__init__()
        self.taken = []

    def update(self, finite):
        self.taken.append(finite)
        super().update(finite)


def train_steps(model, loader, device, lr, momentum=0.0, scaler=None, graph=False, skipped=()):
    """``(losses by step, images per second after the first step)`` of the trainer ``train.sh`` runs
    (:class:`~cv.detection.engine.trainer.Trainer`, its AMP or graph mode) over one pass of ``loader``, from a copy of
    ``model`` on ``device``: SGD at ``lr`` (0 at the iterations in ``skipped``, which with no momentum is a step not
    taken), under AMP with ``scaler`` or in graph mode with ``graph``."""
    model = copy.deepcopy(model).to(device).train()
    optimizer = flow.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
    records = _Records()
    parts = dict(model=model, optimizer=optimizer, schedule=lambda it, ep: 0.0 if it in skipped else lr,
                 device=device, log=ProgressLog(print_freq=1, metrics=records))
    if graph:
        state = {"iteration": 0, "epoch": -1, "part": 0}
        trainer = GraphModeTrainer(GraphTrainer(model, optimizer, lr, 0, [], state, len(loader), device,
                                                max_boxes=loader.dataset.max_boxes()), **parts)
    elif scaler is not None:
        trainer = AmpTrainer(scaler=scaler, **parts)
    else:
        trainer = Trainer(**parts)
    with redirect_stdout(StringIO()):  # its progress lines: the report is the output
        trainer.train_epoch(loader)
    speeds = [r["images_per_s"] for r in records[1:]]  # the first step allocates, tunes and compiles
    return [r["loss"] for r in records], float(np.median(speeds)) if speeds else 0.0


def _steps_sensitive(losses):
    """The steps change the loss clearly (so a wrong step would show)."""
    return abs(losses[-1] - losses[0]) > 10 * GRAPH_LOSS_RTOL * abs(losses[0])


def check_amp(device, reference=None, model=None, lr=TRAIN_LR):
    """:data:`TRAIN_STEPS` steps under float16 autocast with the dynamic loss scaler on ``device`` against eager
    float32 on ``reference`` (default: the same device) from the same weights and batches: losses within
    :data:`AMP_LOSS_RTOL`. Steps the scaler skips (overflow at its initial scale: normal at the start) are
    skipped in the float32 run too; at least one step must be taken."""
    model = model or random_ssd300()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loader = training_loader(model, tmp)
        scaler = _RecordingScaler()
        amp, amp_speed = train_steps(model, loader, device, lr, scaler=scaler)
        skipped = {i for i, taken in enumerate(scaler.taken) if not taken}
        plain, plain_speed = train_steps(model, loader, reference or device, lr, skipped=skipped)
    ok, text = within("losses", amp, plain, rtol=AMP_LOSS_RTOL)
    problems = [] if len(skipped) < len(amp) else ["the loss scaler skipped every step"]
    if not _steps_sensitive(plain):
        problems.append(f"the losses barely change ({plain[0]:.4g} -> {plain[-1]:.4g}): the check sees nothing")
    detail = (f"{len(amp)} steps, {len(skipped)} skipped by the loss scaler (now {scaler.scale:g}); {text}; "
              f"float32 {plain[0]:.4g} -> {plain[-1]:.4g}")
    return Result("amp", ok and not problems, "; ".join([detail] + problems), time.perf_counter() - start,
                  {"training float32": plain_speed, "training amp": amp_speed})


def check_graph(device, reference=None, model=None, lr=TRAIN_LR):
    """:data:`TRAIN_STEPS` steps in graph mode (:class:`GraphTrainer`, global tensors) on ``device`` against eager
    float32 on ``reference`` (default: the same device), same weights and batches, SGD with momentum 0.9: losses
    within :data:`GRAPH_LOSS_RTOL`."""
    model = model or random_ssd300()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loader = training_loader(model, tmp)
        graph, graph_speed = train_steps(model, loader, device, lr, momentum=0.9, graph=True)
        eager, _ = train_steps(model, loader, reference or device, lr, momentum=0.9)
    ok, text = within("losses", graph, eager, rtol=GRAPH_LOSS_RTOL)
    problems = [] if _steps_sensitive(eager) else ["the losses barely change: the check sees nothing"]
    detail = f"{len(graph)} steps against eager; {text}; eager {eager[0]:.4g} -> {eager[-1]:.4g}"
    return Result("graph mode", ok and not problems, "; ".join([detail] + problems), time.perf_counter() - start,
                  {"training graph": graph_speed})


# --- two processes ---------------------------------------------------------------------------------------------


def two_process_command(data, out, device):
    """The training program under the launcher (as train.sh starts it) for one short epoch on ``data``."""
    return [sys.executable, "-m", "cv.detection.engine.launch", "cv.detection.ssd300_vgg16.train",
            "--data-path", data, "--output-dir", out, "--device", device, "--epochs", "1", "--train-subset", "4",
            "--val-subset", "2", "--batch-size", "2", "--workers", "0", "--no-pretrained-backbone",
            "--print-freq", "1"]


def check_two_processes(device, gpus=None):
    """One epoch of the training program in two processes (NCCL on CUDA) on a generated 4-image sample dataset;
    passes when it ends well and the ranks' weights are identical (the program compares them at the end).
    Skipped on CUDA with fewer than two visible GPUs (``gpus``, default: counted)."""
    gpus = visible_gpus() if gpus is None else gpus
    if device != "cpu" and gpus < 2:
        return Result("two processes", None, f"skipped: {gpus} GPU visible, two needed")
    from cv.detection.data.sample import make_sample_dataset

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "data"), os.path.join(tmp, "out")
        make_sample_dataset(data, seed=0, num_train=4, num_val=2)
        env = dict(os.environ, NPROC_PER_NODE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        done = subprocess.run(two_process_command(data, out, device), env=env, capture_output=True, text=True,
                              timeout=900)
    same = [line for line in done.stdout.splitlines() if line.startswith("weights identical on all 2 ranks")]
    ok = done.returncode == 0 and bool(same)
    last = next((line for line in reversed((done.stderr + done.stdout).strip().splitlines()) if line.strip()), "")
    detail = (f"1 epoch of train.py on 4 images, 2 processes: {same[0]}" if ok else
              f"exit {done.returncode}, the ranks' weights were not confirmed identical: {last}")
    return Result("two processes", ok, detail, time.perf_counter() - start)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the program -----------------------------------------------------------------------------------------------


def random_ssd300(seed=0):
    """SSD300-VGG16 with COCO's 91 classes and random weights from ``seed`` (no download)."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(seed)
    return ssd300_vgg16(num_classes=NUM_CLASSES)


def environment(device):
    """One or two lines: OneFlow, CUDA, the driver, Python and the GPUs."""
    cuda = sysconfig.get_cuda_version() if sysconfig.with_cuda() else 0
    lines = [f"oneflow {flow.__version__} (CUDA {cuda // 1000}.{cuda % 1000 // 10} build), Python "
             f"{platform.python_version()}, {platform.platform(terse=True)}"]
    if device.startswith("cuda"):
        names = [flow.cuda.get_device_name(i) for i in range(flow.cuda.device_count())]
        driver = _nvidia_smi("driver_version")
        lines.append(f"{len(names)} GPU(s): {', '.join(names)}; driver {driver or 'unknown'}; TF32 off for the "
                     "comparisons")
    return lines


def _nvidia_smi(field):
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def format_report(results, env_lines, device):
    """The report: a title, the environment, one line per check (PASS, FAIL or SKIP, name, what was compared,
    seconds), the speeds on ``device`` and the verdict."""
    lines = ["SSD300-VGG16 GPU self-check (bash scripts/gpu_check.sh)"] + env_lines
    for r in results:
        status = "SKIP" if r.passed is None else "PASS" if r.passed else "FAIL"
        lines.append(f"{status}  {r.name:<13} {r.detail}" + (f"  [{r.seconds:.0f} s]" if r.seconds else ""))
    speeds = {k: v for r in results for k, v in r.speeds.items()}
    if speeds:
        lines.append(f"speed on {device} (images/s; inference batch 4 with post-processing, training batch "
                     f"{TRAIN_BATCH} at 300x300): " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()))
    failed = [r.name for r in results if r.passed is False]
    lines.append(f"result: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return "\n".join(lines)


def run_checks(device, reference="cpu", model=None, gpus=None):
    """Every check on ``device`` (a failure of one, even an exception, is its FAIL line; the others still run)."""
    model = model or random_ssd300()
    checks = [lambda: check_detections(device, reference, model), lambda: check_tie_order(device, reference, model),
              lambda: check_amp(device, model=model), lambda: check_graph(device, model=model),
              lambda: check_two_processes(device, gpus)]
    names = ["detections", "tie order", "amp", "graph mode", "two processes"]
    results = []
    for name, check in zip(names, checks):
        start = time.perf_counter()
        try:
            results.append(check())
        except Exception as e:  # noqa: BLE001  (the report must name it and go on)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            results.append(Result(name, False, f"{type(e).__name__}: {message}", time.perf_counter() - start))
    return results


def main(device=None):
    """The program: exit status 0 when all checks pass or no CUDA device is visible, 1 otherwise."""
    if device is None:
        if not flow.cuda.is_available():
            print("gpu_check: no CUDA device is visible to OneFlow on this machine: nothing to check (exit 0)")
            return 0
        device = "cuda"
    results = run_checks(device)
    print(format_report(results, environment(device), device), flush=True)
    return 0 if all(r.passed is not False for r in results) else 1


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    # Before the first CUDA operation, which reads it: float32 comparisons (see the module docstring).
    os.environ["ONEFLOW_EP_CUDA_ENABLE_TF32_EXECUTION"] = "0"
    sys.exit(main())
