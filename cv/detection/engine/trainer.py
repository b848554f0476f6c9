"""Training and evaluation loops shared by the detectors: one epoch of training, one pass of evaluation.

Distributed runs (:mod:`cv.detection.engine.launch`) are handled here and in :mod:`cv.detection.engine.distributed`: every rank
trains on its own shard, losses are averaged across ranks for logging only, and only rank 0 prints and writes.
"""
import json
import math
import sys
import time

import oneflow as flow

from cv.detection.engine import distributed as dist
from cv.detection.data.base import set_epoch, to_tensors


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
                    amp_scaler=None, total_epochs=None, start=0, stop=None, graph_step=None):
    """Train ``model`` for one epoch of ``loader``, or for its rest from batch ``start`` (a resumed run).

    Args:
        state: the run's counters, updated in place: ``state["iteration"]`` is the global iteration.
        schedule: ``schedule(iteration, epoch) -> lr``, applied before every step.
        metrics: a :class:`MetricsFile` (rank 0) or None; logged iterations are written to it.
        amp_scaler: a :class:`DynamicLossScaler` to train under ``flow.autocast`` (CUDA only), or None.
        total_epochs: for the ETA.
        stop: a :class:`cv.detection.utils.cli.StopRequest`; when any rank has one requested, every rank stops after the
            same iteration.
        graph_step: a :class:`cv.detection.engine.graph_mode.GraphTrainer` to train in graph mode (``--graph``): it runs
            each step (forward, backward, SGD update) as one ``nn.Graph``, with its own copy of ``schedule``.

    Returns the number of this epoch's iterations done (``len`` of the epoch unless stopped). Raises
    :class:`NonFiniteLossError` as soon as a loss is NaN or infinite.
    """
    model.train()
    set_epoch(loader, epoch, start)
    num_iters = start + len(loader)
    world = dist.world_size()
    keys = ("loss", "bbox_regression", "classification")
    window = dict.fromkeys(keys + ("images", "iters"), 0.0)
    epoch_start = window_start = time.perf_counter()
    i = start
    batches = iter(loader)
    while i < num_iters:
        try:
            images, targets = next(batches)
        except Exception:
            # Ctrl-C in a terminal also reaches the loader workers, which then exit: no more batches, but the
            # stop was asked for anyway.
            if stop is not None and stop.requested:
                break
            raise
        lr = schedule(state["iteration"], epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = to_tensors(images, targets, device)
        if graph_step is not None:
            losses = graph_step(images, targets, state["iteration"])  # updated already, at this lr
        elif amp_scaler is not None:
            with flow.autocast(device_type="cuda"):
                losses = model(images, targets)
        else:
            losses = model(images, targets)
        loss = sum(losses.values())
        # Averaged across ranks for logging only (each rank's gradient is its own; DDP averages those), together
        # with the ranks' stop requests, so that all stop after the same iteration.
        stop_flag = flow.tensor([float(stop is not None and stop.requested)], device=loss.device)
        logged = dist.reduce_mean(flow.cat([flow.stack([loss.detach()] + [v.detach() for v in losses.values()]),
                                            stop_flag]))
        values = dict(zip(keys, (float(v) for v in logged[:3])))
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, iteration {i} of {num_iters} (global {state['iteration']}): "
                + ", ".join(f"{k}={v}" for k, v in values.items())
                + ". Training stopped; the latest checkpoint in the output directory is from before this.")
        if graph_step is None:
            optimizer.zero_grad()
            if amp_scaler is not None:
                (loss * amp_scaler.scale).backward()
                if amp_scaler.unscale_and_check(model.parameters()):
                    optimizer.step()
            else:
                loss.backward()
                optimizer.step()
        state["iteration"] += 1
        i += 1

        for k, v in values.items():
            window[k] += v
        window["images"] += len(images) * world
        window["iters"] += 1
        stopping = float(logged[3]) > 0
        if i % print_freq == 0 or i == num_iters or stopping:
            now = time.perf_counter()
            per_iter = (now - epoch_start) / (i - start)
            remaining = num_iters - i + num_iters * ((total_epochs or epoch + 1) - epoch - 1)
            record = {"type": "train", "epoch": epoch, "iter": i, "iters": num_iters,
                      "iteration": state["iteration"], "lr": lr, **{k: window[k] / window["iters"] for k in keys},
                      "images_per_s": window["images"] / max(now - window_start, 1e-9),
                      "eta_s": per_iter * remaining}
            dist.print0(f"epoch {epoch} [{i:>{len(str(num_iters))}}/{num_iters}]  lr {lr:.3g}  "
                        f"loss {record['loss']:.4f} (box {record['bbox_regression']:.4f}, "
                        f"cls {record['classification']:.4f})  {record['images_per_s']:.2f} img/s  "
                        f"eta {format_seconds(record['eta_s'])}")
            if metrics is not None:
                metrics.write(record)
            window = dict.fromkeys(window, 0.0)
            window_start = now
        if stopping:
            break
    return i


# Seconds between redraws of the evaluation's progress bar: on a terminal often enough to see it move; elsewhere
# (stderr captured in a file, or piped: train.sh ... 2>&1 | tee log) each redraw is one more carriage-return
# separated update in the log, so rarely.
PROGRESS_INTERVAL = {True: 1.0, False: 30.0}


def progress_bar(loader):
    """The evaluation's progress (a ``tqdm`` context manager: images done of all ranks' total, images/s) on rank 0,
    on stderr; disabled on the other ranks (one bar per run, not one per process).

    Rank 0's count times the world size stands for all ranks' (they advance together). Shown whether or not
    stderr is a terminal: a user who pipes stdout into a log (``train.sh ... | tee log``) still has the terminal
    on stderr, and where stderr itself is captured the bar redraws rarely (:data:`PROGRESS_INTERVAL`) instead of
    disappearing. The one-line-per-event output on stdout is untouched. Leaving the ``with`` block (also by an
    exception) closes the bar: its final state, with the rate, stays on a line of its own, and a following line
    (an error message) starts a new one.
    """
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=len(loader.sampler) * dist.world_size(), desc="evaluating", unit="img", file=sys.stderr,
                disable=not dist.is_main(), mininterval=PROGRESS_INTERVAL[interactive],
                dynamic_ncols=interactive)


@flow.no_grad()
def evaluate(model, loader, evaluator, device, output_json=None):
    """Run ``model`` over ``loader`` (each rank its shard), gather the detections on rank 0 and return the
    evaluator's summary there (None on other ranks): COCO's 12 numbers and per-class table
    (:class:`cv.detection.evaluation.coco.CocoEvaluator`) or VOC's APs
    (:class:`cv.detection.evaluation.voc.VocEvaluator`). Detections go to ``output_json``, the evaluator's pictures
    beside it. While the model runs, rank 0 shows :func:`progress_bar` on stderr."""
    model.eval()
    start, count = time.perf_counter(), 0
    with progress_bar(loader) as bar:
        for images, targets in loader:
            images, _ = to_tensors(images, [], device)  # only the image ids of the targets are needed here
            detections = model(images)
            evaluator.update([t["image_id"] for t in targets], detections)
            count += len(images)
            bar.update(len(images) * dist.world_size())
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
