"""Training and evaluation loops shared by the detectors: one epoch of training, one pass of evaluation.

Distributed runs (``oneflow.distributed.launch``) are handled here and in :mod:`cv.detection.distributed`: every
rank trains on its own shard, losses are averaged across ranks for logging only, and only rank 0 prints and writes.
"""
import json
import math
import time

import oneflow as flow

from cv.detection import distributed as dist
from cv.detection.coco import set_epoch, to_tensors


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the epoch and iteration."""


def learning_rate(base_lr, iteration, epoch, warmup_iters, lr_steps, warmup_factor=0.001, gamma=0.1):
    """The learning rate at a global ``iteration`` in ``epoch``: linear warm-up from ``warmup_factor * base_lr``
    over the first ``warmup_iters`` iterations, times ``gamma`` for each of ``lr_steps`` (epochs) reached.

    A pure function of the iteration and epoch (both saved in checkpoints), so a resumed run continues the exact
    schedule without any scheduler state of its own.
    """
    lr = base_lr * gamma ** sum(epoch >= step for step in lr_steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


class DynamicLossScaler:
    """Loss scaling for float16 training (``--amp``), as OneFlow 0.9's ``GradScaler`` serves only ``nn.Graph``.

    The loss is multiplied by ``scale`` before backward so that small float16 gradients do not flush to zero.
    Before the optimizer step the gradients are divided back; if any is not finite the step is skipped and the
    scale halved; after ``growth_interval`` good steps in a row the scale doubles.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_interval=2000):
        self.scale = init_scale
        self.growth_interval = growth_interval
        self.good_steps = 0

    def unscale_and_check(self, parameters):
        """Divide the gradients by the scale; True if they are all finite (the step may be taken)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        finite = all(bool(flow.isfinite(g).all()) for g in grads)
        if finite:
            for g in grads:
                g.mul_(1.0 / self.scale)
        self.update(finite)
        return finite

    def update(self, finite):
        if not finite:
            self.scale /= 2.0
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= 2.0
            self.good_steps = 0

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state):
        self.scale, self.good_steps = state["scale"], state["good_steps"]


def format_seconds(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_one_epoch(model, optimizer, loader, device, epoch, state, schedule, print_freq=20, metrics=None,
                    amp_scaler=None, total_epochs=None):
    """Train ``model`` for one epoch of ``loader``.

    Args:
        state: the run's counters, updated in place: ``state["iteration"]`` is the global iteration.
        schedule: ``schedule(iteration, epoch) -> lr``, applied before every step.
        metrics: a :class:`MetricsFile` (rank 0) or None; logged iterations and the epoch summary are written to it.
        amp_scaler: a :class:`DynamicLossScaler` to train under ``flow.autocast`` (CUDA only), or None.
        total_epochs: for the ETA.

    Returns the epoch's mean losses. Raises :class:`NonFiniteLossError` as soon as a loss is NaN or infinite.
    """
    model.train()
    set_epoch(loader, epoch)
    num_iters = len(loader)
    world = dist.world_size()
    window = {"loss": 0.0, "bbox_regression": 0.0, "classification": 0.0, "images": 0, "iters": 0}
    totals = {"loss": 0.0, "bbox_regression": 0.0, "classification": 0.0}
    epoch_start = window_start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        lr = schedule(state["iteration"], epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = to_tensors(images, targets, device)
        if amp_scaler is not None:
            with flow.autocast(device_type="cuda"):
                losses = model(images, targets)
        else:
            losses = model(images, targets)
        loss = sum(losses.values())
        # Averaged across ranks for logging only; each rank's gradient is its own (DDP averages those).
        logged = dist.reduce_mean(flow.stack([loss.detach()] + [v.detach() for v in losses.values()]))
        values = dict(zip(["loss"] + list(losses), (float(v) for v in logged)))
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, iteration {i} of {num_iters} (global {state['iteration']}): "
                + ", ".join(f"{k}={v}" for k, v in values.items())
                + ". Training stopped; the last checkpoint in the output directory is from before this epoch.")
        optimizer.zero_grad()
        if amp_scaler is not None:
            (loss * amp_scaler.scale).backward()
            if amp_scaler.unscale_and_check(model.parameters()):
                optimizer.step()
        else:
            loss.backward()
            optimizer.step()
        state["iteration"] += 1

        for k, v in values.items():
            window[k] += v
            totals[k] += v
        window["images"] += len(images) * world
        window["iters"] += 1
        if (i + 1) % print_freq == 0 or i + 1 == num_iters:
            now = time.perf_counter()
            per_iter = (now - epoch_start) / (i + 1)
            remaining = num_iters - i - 1 + num_iters * ((total_epochs or epoch + 1) - epoch - 1)
            record = {"type": "train", "epoch": epoch, "iter": i + 1, "iters": num_iters,
                      "iteration": state["iteration"], "lr": lr,
                      **{k: window[k] / window["iters"] for k in totals},
                      "images_per_s": window["images"] / max(now - window_start, 1e-9),
                      "eta_s": per_iter * remaining}
            dist.print0(f"epoch {epoch} [{i + 1:>{len(str(num_iters))}}/{num_iters}]  lr {lr:.3g}  "
                        f"loss {record['loss']:.4f} (box {record['bbox_regression']:.4f}, "
                        f"cls {record['classification']:.4f})  {record['images_per_s']:.2f} img/s  "
                        f"eta {format_seconds(record['eta_s'])}")
            if metrics is not None:
                metrics.write(record)
            window = dict.fromkeys(window, 0)
            window_start = now
    return {k: v / max(num_iters, 1) for k, v in totals.items()}


@flow.no_grad()
def evaluate(model, loader, evaluator, device, output_json=None):
    """Run ``model`` over ``loader`` (each rank its shard), gather the detections on rank 0 and return the COCO
    summary there (None on other ranks). Detections go to ``output_json`` in the official results format."""
    model.eval()
    start, count = time.perf_counter(), 0
    for images, targets in loader:
        images, _ = to_tensors(images, [], device)  # only the image ids of the targets are needed here
        detections = model(images)
        evaluator.update([t["image_id"] for t in targets], detections)
        count += len(images)
    dist.print0(f"evaluated {count * dist.world_size()} images in {time.perf_counter() - start:.1f} s")
    evaluator.gather()
    return evaluator.summarize(output_json)


class MetricsFile:
    """JSON lines, one record per logged iteration or evaluation, flushed at once (a crash loses nothing)."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "a")

    def write(self, record):
        self.file.write(json.dumps({"time": time.time(), **record}) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
