"""Training and evaluation shared by the detectors: a trainer that owns a run's state and trains epoch by epoch
(:class:`Trainer`; :class:`AmpTrainer` and :class:`GraphModeTrainer` change only its step), one pass of evaluation.

Distributed runs (:mod:`cv.detection.engine.launch`) are handled here and in :mod:`cv.detection.engine.distributed`:
every rank trains on its own shard, losses are averaged across ranks for logging only, and only rank 0 prints and
writes.
"""
import json
import math
import sys
import time
from typing import NamedTuple, Sequence

import oneflow as flow

from cv.detection.engine import distributed as dist
from cv.detection.utils import cli
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


class LrSchedule(NamedTuple):
    """:func:`learning_rate` with its settings: ``schedule(iteration, epoch) -> lr``."""

    base_lr: float
    warmup_iters: int = 0
    lr_steps: Sequence[int] = ()

    def __call__(self, iteration, epoch):
        return learning_rate(self.base_lr, iteration, epoch, self.warmup_iters, self.lr_steps)


# The logged losses: their sum and the model's two terms, in this order in the progress lines and metrics records.
LOSS_KEYS = ("loss", "bbox_regression", "classification")


class ProgressLog:
    """The progress lines (rank 0) and the ``train`` records of the metrics file, every ``print_freq`` iterations,
    at the end of an epoch and at a stop: the losses averaged over the iterations since the previous line, images
    per second and the ETA (over ``total_epochs``). ``metrics``: a :class:`MetricsFile` (rank 0) or None."""

    def __init__(self, print_freq=20, metrics=None, total_epochs=None):
        self.print_freq, self.metrics, self.total_epochs = print_freq, metrics, total_epochs

    def start_epoch(self, epoch, start, num_iters):
        """An epoch of ``num_iters`` iterations whose first ``start`` are done already (a resumed run)."""
        self.epoch, self.start, self.num_iters = epoch, start, num_iters
        self.epoch_start = time.perf_counter()
        self._new_window(self.epoch_start)

    def _new_window(self, now):
        self.window = dict.fromkeys(LOSS_KEYS + ("images", "iters"), 0.0)
        self.window_start = now

    def add(self, values, images):
        """One iteration's losses (``LOSS_KEYS`` -> float) over ``images`` images (all ranks)."""
        for key in LOSS_KEYS:
            self.window[key] += values[key]
        self.window["images"] += images
        self.window["iters"] += 1

    def write(self, i, iteration, lr, force=False):
        """After the epoch's iteration ``i`` (global ``iteration``), if a line is due or ``force``."""
        if not (force or i % self.print_freq == 0 or i == self.num_iters):
            return
        now, window = time.perf_counter(), self.window
        per_iter = (now - self.epoch_start) / (i - self.start)
        remaining = self.num_iters - i + self.num_iters * ((self.total_epochs or self.epoch + 1) - self.epoch - 1)
        record = {"type": "train", "epoch": self.epoch, "iter": i, "iters": self.num_iters, "iteration": iteration,
                  "lr": lr, **{k: window[k] / window["iters"] for k in LOSS_KEYS},
                  "images_per_s": window["images"] / max(now - self.window_start, 1e-9), "eta_s": per_iter * remaining}
        dist.print0(f"epoch {self.epoch} [{i:>{len(str(self.num_iters))}}/{self.num_iters}]  lr {lr:.3g}  "
                    f"loss {record['loss']:.4f} (box {record['bbox_regression']:.4f}, "
                    f"cls {record['classification']:.4f})  {record['images_per_s']:.2f} img/s  "
                    f"eta {format_seconds(record['eta_s'])}")
        if self.metrics is not None:
            self.metrics.write(record)
        self._new_window(now)


class Trainer:
    """A training run's state and its epoch loop, eager (detectron2's ``SimpleTrainer``): :meth:`step` is one SGD step;
    :class:`AmpTrainer` and :class:`GraphModeTrainer` override it (and only it, and :meth:`sync_model`).

    Args:
        model: the model, on ``device``; checkpoints and evaluation read it.
        optimizer: over ``model``'s trainable parameters; its learning rate is set from ``schedule`` before every step.
        schedule: ``schedule(iteration, epoch) -> lr`` (an :class:`LrSchedule`).
        net: what runs the forward pass: ``DistributedDataParallel(model)`` in a distributed eager run (default:
            ``model``).
        log: a :class:`ProgressLog` (default: every 20 iterations, no metrics file).
        stop: a :class:`cv.detection.utils.cli.StopRequest`, or None; when any rank has one requested, every rank
            stops after the same iteration.

    The counters, which a checkpoint saves and a resumed run sets: ``iteration`` (global, the schedule's argument),
    ``epoch`` (the last epoch done, -1 before the first) and ``part`` (iterations of the next epoch done). Losses
    are averaged across ranks for logging only: each rank's gradient is its own (DDP averages those).
    """

    description = "eager mode"
    scaler = None  # a DynamicLossScaler whose state checkpoints keep (--amp)

    def __init__(self, model, optimizer, schedule, device, net=None, log=None, stop=None):
        self.model, self.optimizer, self.schedule, self.device = model, optimizer, schedule, device
        self.net = model if net is None else net
        self.log = ProgressLog() if log is None else log
        self.stop = stop
        self.iteration, self.epoch, self.part = 0, -1, 0

    def step(self, images, targets):
        """One SGD step on a batch (lists as :func:`cv.detection.data.base.to_tensors` makes them): forward,
        backward, update; returns this rank's losses (a dict of scalar tensors)."""
        losses = self.net(images, targets)
        self.optimizer.zero_grad()
        sum(losses.values()).backward()
        self.optimizer.step()
        return losses

    def sync_model(self):
        """Bring ``model`` and ``optimizer`` up to date for evaluation and checkpoints (eager: they are)."""

    def train_epoch(self, loader):
        """Train epoch ``epoch + 1`` of ``loader`` from its batch ``part`` (a resumed run) to its end, or until a
        stop is requested. Returns the number of the epoch's iterations done (its length unless stopped); the
        counters move on (a finished epoch becomes ``epoch``, with ``part`` 0). Raises :class:`NonFiniteLossError`
        at the first NaN or infinite loss (on every rank: the check is on the averaged losses)."""
        epoch, start = self.epoch + 1, self.part
        self.net.train()
        set_epoch(loader, epoch, start)
        num_iters = start + len(loader)
        self.log.start_epoch(epoch, start, num_iters)
        for images, targets in self._batches(loader):
            lr = self.schedule(self.iteration, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            cli.trace("train:batch", iteration=self.iteration, image_ids=[int(t["image_id"]) for t in targets])
            cli.pause_point("train:step")  # a test signals the run here, mid-epoch, on every rank
            images, targets = to_tensors(images, targets, self.device)
            values = self._logged_losses(self.step(images, targets), epoch, num_iters)
            self.iteration += 1
            self.part += 1
            self.log.add(values, len(images) * dist.world_size())
            stopping = dist.any_rank(self.stop is not None and self.stop.requested)
            self.log.write(self.part, self.iteration, lr, force=stopping)
            if stopping:
                break
        done = self.part
        if done == num_iters:
            self.epoch, self.part = epoch, 0
        self.sync_model()
        return done

    def _batches(self, loader):
        """The loader's batches, ending early if its workers are gone and a stop was requested: Ctrl-C in a terminal
        also reaches the loader workers, which then exit."""
        batches = iter(loader)
        while True:
            try:
                yield next(batches)
            except StopIteration:
                return
            except Exception:
                if self.stop is not None and self.stop.requested:
                    return
                raise

    def _logged_losses(self, losses, epoch, num_iters):
        """``{LOSS_KEYS: float}``: the step's losses and their sum, averaged across ranks."""
        total = sum(losses.values())
        logged = dist.reduce_mean(flow.stack([total.detach()] + [losses[k].detach() for k in LOSS_KEYS[1:]]))
        values = dict(zip(LOSS_KEYS, (float(v) for v in logged)))
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, iteration {self.part} of {num_iters} (global {self.iteration}): "
                + ", ".join(f"{k}={v}" for k, v in values.items())
                + ". Training stopped; the latest checkpoint in the output directory is from before this.")
        return values


class AmpTrainer(Trainer):
    """``--amp``: the forward pass under float16 autocast (CUDA), the loss scaled by ``scaler`` (a
    :class:`DynamicLossScaler`); a step whose gradients are not finite is skipped."""

    def __init__(self, *args, scaler, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaler = scaler

    def step(self, images, targets):
        with flow.autocast(device_type="cuda"):
            losses = self.net(images, targets)
        self.optimizer.zero_grad()
        (sum(losses.values()) * self.scaler.scale).backward()
        if self.scaler.unscale_and_check(self.model.parameters()):
            self.optimizer.step()
        return losses


class GraphModeTrainer(Trainer):
    """``--graph``: each step (forward, backward, SGD update at the graph's own copy of the schedule; with
    ``--amp`` OneFlow's AMP) runs as one ``nn.Graph`` through ``graph``, a
    :class:`cv.detection.engine.graph_mode.GraphTrainer` built on the same model, optimizer (and scaler)."""

    def __init__(self, graph, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph = graph
        self.scaler = graph.amp_scaler

    @property
    def description(self):
        return f"graph mode (nn.Graph, {self.graph.max_boxes} boxes per image; compiled at the first step)"

    def step(self, images, targets):
        return self.graph(images, targets, self.iteration)  # the update is done already, at this lr

    def sync_model(self):
        self.graph.export()  # the graph's weights and momentum into model and optimizer


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
