"""The training loop, checkpoints and the training program (``cv.detection.ssd300_vgg16.train``, ``train.sh``).

The program runs for real in subprocesses (one process, and two under the launcher) on a few sample images: SSD300
costs ~4 s per image and step on this CPU. The learning proof uses the same loop (:class:`Trainer`,
:func:`evaluate`) with a small SSD built from the same classes, which can overfit a handful of images within a CI
budget; SSD300 from scratch cannot.
"""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import oneflow as flow
import pytest
from oneflow import nn

from cv.detection.engine import checkpoint as ckpt
from cv.detection.utils import fileio
from cv.detection.models.anchors import DefaultBoxGenerator
from cv.detection.data.coco import CocoDetection
from cv.detection.data.base import make_loader
from cv.detection.evaluation.coco import CocoEvaluator
from cv.detection.engine.trainer import (AmpTrainer, DynamicLossScaler, NonFiniteLossError, ProgressLog, Trainer,
                                         evaluate, learning_rate, read_metrics)
from cv.detection.models.layers import Conv2d
from cv.detection.models.ssd import SSD
from tests.conftest import (TRAIN, TRAIN_SH, free_port, last_line, plant_payload, quick_args, run, tiny_ssd)


# --- pieces --------------------------------------------------------------------------------------------------


def test_learning_rate_warmup_and_steps():
    lr = lambda it, ep: learning_rate(0.01, it, ep, warmup_iters=100, lr_steps=[3, 5])  # noqa: E731
    assert lr(0, 0) == pytest.approx(1e-5)
    assert lr(50, 0) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lr(100, 0) == lr(5000, 2) == pytest.approx(0.01)
    assert lr(5000, 3) == pytest.approx(0.001) and lr(9000, 5) == pytest.approx(0.0001)


@pytest.mark.slow
def test_dynamic_loss_scaler_skips_bad_steps_and_grows():
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=2)
    p = flow.nn.Parameter(flow.ones(3))
    p.grad = flow.tensor([8.0, 16.0, float("inf")])
    assert not scaler.unscale_and_check([p]) and scaler.scale == 4.0
    p.grad = flow.tensor([4.0, 8.0, 12.0])
    assert scaler.unscale_and_check([p]) and scaler.scale == 4.0
    np.testing.assert_array_equal(p.grad.numpy(), [1.0, 2.0, 3.0])
    p.grad = flow.tensor([4.0, 4.0, 4.0])
    assert scaler.unscale_and_check([p]) and scaler.scale == 8.0  # two good steps in a row
    state = scaler.state_dict()
    other = DynamicLossScaler()
    other.load_state_dict(state)
    assert other.scale == 8.0 and other.good_steps == 0


def test_amp_loss_scaling_in_the_training_loop(sample_dataset):
    """The --amp trainer on CPU (autocast only changes CUDA ops): a scaled step lands where an unscaled one does,
    and a step whose scaled gradients overflow is skipped with the scale halved."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(sample_dataset, "train", max_images=2)
    plain, scaled = tiny_ssd(ds.num_classes), tiny_ssd(ds.num_classes)
    loader = make_loader(ds, 2, 0)
    Trainer(plain, flow.optim.SGD(plain.parameters(), lr=0.01), lambda i, e: 0.01, "cpu").train_epoch(loader)
    AmpTrainer(scaled, flow.optim.SGD(scaled.parameters(), lr=0.01), lambda i, e: 0.01, "cpu",
               scaler=DynamicLossScaler(init_scale=1024.0)).train_epoch(loader)
    for (name, a), b in zip(plain.state_dict().items(), scaled.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    before = {k: v.numpy().copy() for k, v in scaled.state_dict().items()}
    # 2^128 is past float32's largest value: the scaled loss and its gradients overflow.
    overflow = DynamicLossScaler(init_scale=2.0 ** 128)
    AmpTrainer(scaled, flow.optim.SGD(scaled.parameters(), lr=0.01), lambda i, e: 0.01, "cpu",
               scaler=overflow).train_epoch(loader)
    assert overflow.scale == 2.0 ** 127
    for name, value in scaled.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            np.testing.assert_array_equal(value.numpy(), before[name], err_msg=name)


def test_the_training_curve(tmp_path):
    from cv.detection.utils.plot import figure, plot_metrics, smoothed

    assert smoothed([4.0, 4.0, 4.0]) == [4.0, 4.0, 4.0]  # bias-corrected: no ramp up from 0
    # span 3, weight 1/2: (0.5 * 2) / 0.5 = 2, then (0.5 * 0.5 * 2 + 0.5 * 6) / (0.5 + 0.5 * 0.5)
    assert smoothed([2.0, 6.0], span=3) == pytest.approx([2.0, (0.25 * 2 + 0.5 * 6) / 0.75])
    records = [{"type": "train", "iteration": i, "epoch": i // 10, "lr": 0.01 * min(1, (i + 1) / 5),
                "loss": 10 / (i + 1), "bbox_regression": 3 / (i + 1), "classification": 7 / (i + 1)}
               for i in range(0, 30, 2)]
    records += [{"type": "eval", "epoch": 1, "AP": 0.1, "AP50": 0.2}, {"type": "eval", "epoch": 2, "AP": 0.15,
                                                                        "AP50": 0.3},
                {"type": "eval", "epoch": 2, "test_only": True, "AP": 0.9, "AP50": 0.9}]
    loss_ax, lr_ax, eval_ax = figure(records).axes
    raw, smooth = loss_ax.lines[:2]
    assert list(raw.get_xdata()) == list(range(0, 30, 2)) and len(loss_ax.lines) == 4
    assert list(smooth.get_ydata()) == pytest.approx(smoothed([10 / (i + 1) for i in range(0, 30, 2)]))
    assert list(lr_ax.lines[0].get_ydata())[-1] == pytest.approx(0.01)
    ap, ap50 = eval_ax.lines
    assert (ap.get_label(), ap50.get_label()) == ("AP", "AP50")
    assert list(ap.get_xdata()) == [2, 3] and list(ap50.get_ydata()) == [0.2, 0.3]  # epochs done; no test-only
    assert all(float(t).is_integer() for t in eval_ax.get_xticks())
    assert eval_ax.get_ylim() == pytest.approx((0, 0.3 * 1.15))  # from 0, a little above the best
    untrained = [{"type": "eval", "epoch": 0, "AP": 2e-6, "AP50": 9e-6}]
    assert figure(records[:3] + untrained).axes[2].get_ylim() == pytest.approx((0, 0.1))  # not a 1e-6 scale
    plot_metrics(records, tmp_path / "training.png")
    from PIL import Image

    assert Image.open(tmp_path / "training.png").size == (900, 800)


def test_non_finite_loss_stops_naming_epoch_and_iteration(sample_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(sample_dataset, "train", max_images=4)
    model = tiny_ssd(num_classes=ds.num_classes)
    with flow.no_grad():
        model.head.classification_head.module_list[0].weight[0, 0, 0, 0] = float("nan")
    trainer = Trainer(model, flow.optim.SGD(model.parameters(), lr=0.01), lambda i, e: 0.01, "cpu")
    trainer.iteration, trainer.epoch = 7, 2
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 3, iteration 0 of 2 \(global 7\)"):
        trainer.train_epoch(make_loader(ds, 2, 0))


def test_a_stop_request_ends_the_epoch_after_the_current_iteration_and_the_next_call_continues(sample_dataset):
    """A stop requested during iteration 2 of 4: the epoch ends after it, with a progress record there (print_freq
    notwithstanding) and the counters at 2 iterations into epoch 0; the next call trains the other 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(sample_dataset, "train", max_images=4)

    class Stop:
        requested = False

    class StoppedInStep2(Trainer):
        def step(self, images, targets):
            self.stop.requested = self.iteration == 1  # as a signal arriving during the step
            return super().step(images, targets)

    model, records = tiny_ssd(ds.num_classes), Records()
    trainer = StoppedInStep2(model, flow.optim.SGD(model.parameters(), lr=0.01), lambda i, e: 0.01, "cpu",
                             log=ProgressLog(100, records), stop=Stop())
    loader = make_loader(ds, 1, 0)
    assert trainer.train_epoch(loader) == 2
    assert (trainer.iteration, trainer.epoch, trainer.part) == (2, -1, 2)
    assert trainer.train_epoch(loader) == 4
    assert (trainer.iteration, trainer.epoch, trainer.part) == (4, 0, 0)
    assert [(r["epoch"], r["iter"], r["iters"], r["iteration"]) for r in records] == [(0, 2, 4, 2), (0, 4, 4, 4)]


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoints_keep_the_newest_and_the_best(tmp_path):
    for epoch, ap in enumerate([0.1, 0.5, 0.2, 0.3, 0.25]):
        ckpt.save_checkpoint(tmp_path, {"w": flow.ones(2) * epoch, "epoch": epoch, "iteration": epoch}, epoch, ap=ap,
                             keep=2)
    kept = sorted(d for d in os.listdir(tmp_path) if d.startswith(ckpt.PREFIX))
    assert kept == ["checkpoint_epoch0001", "checkpoint_epoch0003", "checkpoint_epoch0004"]
    index = ckpt.read_index(tmp_path)
    assert (index["latest"], index["best"], index["best_ap"]) == ("checkpoint_epoch0004", "checkpoint_epoch0001", 0.5)
    assert sorted(index["checkpoints"]) == kept
    assert ckpt.load(ckpt.latest_checkpoint(tmp_path))["epoch"] == 4
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.load(tmp_path / "nope")


# Killed (SIGKILL, deterministically) at two moments of a checkpoint write: while flow.save writes the tensors, and
# after everything is written but before the rename.
KILL_SCRIPT = """
import os, signal, sys
import oneflow as flow
from cv.detection.engine import checkpoint as ckpt
from cv.detection.utils import fileio
from oneflow.framework import check_point_v2
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "mid-write":
    written, save_tensor = [], check_point_v2._save_tensor_to_disk
    def save_some(tensor, path):
        written.append(path)
        (die if len(written) == 3 else save_tensor)(tensor, path)
    check_point_v2._save_tensor_to_disk = save_some
else:
    fileio._fsync_tree = die
ckpt.save_checkpoint(sys.argv[1], {"a": flow.ones(3), "b": flow.ones(3), "c": flow.ones(3), "epoch": 1}, 1)
"""


@pytest.mark.parametrize("moment", ["mid-write", "before-rename"])
def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path, moment):
    ckpt.save_checkpoint(tmp_path, {"w": flow.ones(3), "epoch": 0}, 0)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), moment])
    assert proc.returncode == -signal.SIGKILL
    leftovers = [d for d in os.listdir(tmp_path) if fileio.TMP_MARK in d]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint_epoch0001")
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0000"
    payload = ckpt.load(ckpt.latest_checkpoint(tmp_path))
    assert payload["epoch"] == 0 and payload["w"].numpy().tolist() == [1, 1, 1]
    # The next run (holding the directory's lock) removes what the dead writer left, and nothing else.
    assert fileio.remove_dead_temporaries(tmp_path) == leftovers
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch0000", "checkpoints.json"]


def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, {"w": flow.ones(3), "epoch": 0}, 0)
    from oneflow.framework import check_point_v2

    def disk_full(tensor, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "out"), "wb") as f:
            f.write(b"\0" * 5)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(check_point_v2, "_save_tensor_to_disk", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(tmp_path, {"w": flow.ones(3), "epoch": 1}, 1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch0000", "checkpoints.json"]
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0000"


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
    for epoch in range(3):
        ckpt.save_checkpoint(tmp_path, {"w": flow.ones(1000) * epoch, "epoch": epoch}, epoch)
    latest = tmp_path / "checkpoint_epoch0002"
    data = next(p for p in latest.rglob("out"))
    data.write_bytes(data.read_bytes()[:100])  # a truncated copy
    said = []
    # Only looking (before the run holds the directory's lock) finds the same checkpoint and leaves the index alone.
    assert ckpt.latest_checkpoint(tmp_path, say=said.append, repair=False) == str(tmp_path / "checkpoint_epoch0001")
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0002"
    said.clear()
    assert ckpt.latest_checkpoint(tmp_path, say=said.append) == str(tmp_path / "checkpoint_epoch0001")
    assert "checkpoint_epoch0002 named latest" in said[0] and "holds 100 bytes" in said[0]
    assert "skipping damaged checkpoint checkpoint_epoch0002" in said[1]
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0001"  # the index now says so too
    assert ckpt.load(ckpt.latest_checkpoint(tmp_path))["epoch"] == 1
    # A damaged index is rebuilt from the directories.
    (tmp_path / ckpt.INDEX).write_text('{"latest": "checkpoint_ep')
    said.clear()
    assert ckpt.latest_checkpoint(tmp_path, say=said.append) == str(tmp_path / "checkpoint_epoch0001")
    assert "is damaged; rebuilding it" in said[0]
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0001"


def test_the_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    lock = fileio.DirectoryLock(tmp_path, "training run").acquire()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cv.detection.utils import fileio\n"
                               f"fileio.DirectoryLock({str(tmp_path)!r}).acquire()\nprint('locked', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = holder.communicate(timeout=60)
    assert "is in use by another run (pid" in err  # the lock of this test process
    lock.release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cv.detection.utils import fileio\n"
                               f"fileio.DirectoryLock({str(tmp_path)!r}).acquire()\nprint('locked', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(fileio.DirectoryInUseError, match=f"in use by another training run \\(pid {holder.pid} "):
        fileio.DirectoryLock(tmp_path, "training run").acquire()
    holder.kill()  # kill -9: the kernel releases the lock
    holder.wait()
    fileio.DirectoryLock(tmp_path).acquire().release()


def test_the_safe_loader_runs_nothing_and_names_the_global(tmp_path):
    ckpt.save_checkpoint(tmp_path, {"model": {"w": flow.ones(2)}, "epoch": 0}, 0)
    directory = tmp_path / "checkpoint_epoch0000"
    plant_payload(directory, tmp_path / "pwned")
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"pickled_data: it asks for the Python global posix\.system"):
        ckpt.load(directory)
    assert not (tmp_path / "pwned").exists()
    # A tensor that points outside the checkpoint is refused too: flow.save's pickle opcodes, path edited.
    def text(s):
        return b"X" + len(s).to_bytes(4, "little") + s.encode()

    (directory / "pickled_data").write_bytes(
        b"\x80\x02}(" + text("protocol_version") + b"K\x01" + text("data") + b"}" + text("w")
        + b"coneflow\nTensor\n)\x81}" + text("path") + text("../../etc") + b"sbsu.")
    with pytest.raises(ckpt.UnsafeCheckpointError, match=r"a tensor refers to '\.\./\.\./etc'"):
        ckpt.load(directory)


# --- learning ------------------------------------------------------------------------------------------------


class SmallBackbone(nn.Module):
    """Three maps (16, 8, 4 cells for a 128x128 input) with batch norm, so that it trains fast from scratch."""

    out_channels = [32, 64, 64]

    def __init__(self):
        super().__init__()

        def block(i, o, stride):
            return nn.Sequential(Conv2d(i, o, 3, stride=stride, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.stem = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 32, 2), block(32, 32, 1))
        self.down1 = nn.Sequential(block(32, 64, 2), block(64, 64, 1))
        self.down2 = block(64, 64, 2)

    def forward(self, x):
        a = self.stem(x)
        b = self.down1(a)
        return [a, b, self.down2(b)]


class Records(list):
    """Stands in for a MetricsFile: keeps the records."""

    write = list.append


@pytest.mark.slow
def test_training_makes_the_model_find_the_objects(sample_dataset, capsys):
    """The proof that the loss, the loop and the evaluation fit together: 8 sample images, 120 steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_set = CocoDetection(sample_dataset, "train")
        eval_set = CocoDetection(sample_dataset, "train", train=False)
    # Images whose objects all have sides of 16 px or more: at 128x128 input the smallest become ~5 px.
    big = [im for im in train_set.images
           if (np.minimum(im[4][:, 2] - im[4][:, 0], im[4][:, 3] - im[4][:, 1]) >= 16).all()][:8]
    assert len(big) == 8
    train_set.images = eval_set.images = big
    flow.manual_seed(0)
    anchors = DefaultBoxGenerator([[2], [2, 3], [2]], scales=[0.1, 0.3, 0.6, 1.0], steps=[8, 16, 32])
    model = SSD(SmallBackbone(), anchors, (128, 128), train_set.num_classes, image_mean=[0.5] * 3,
                image_std=[0.25] * 3)
    optimizer = flow.optim.Adam(model.parameters(), lr=0.003)
    loader = make_loader(train_set, batch_size=8, workers=0)
    records = Records()
    trainer = Trainer(model, optimizer, lambda i, e: 0.003, "cpu", log=ProgressLog(1, records))
    for _ in range(120):
        trainer.train_epoch(loader)
    losses = [r["loss"] for r in records]
    stats = evaluate(model, make_loader(eval_set, 8, 0, shuffle=False),
                     CocoEvaluator(eval_set.dataset, eval_set.label_to_category_id), "cpu")
    with capsys.disabled():
        print(f"\nlearning proof: loss {losses[0]:.3f} -> {losses[-1]:.4f}, AP50 {stats['AP50']:.3f}, "
              f"AP {stats['AP']:.3f} on {sum(len(im[4]) for im in big)} objects in 8 images")
    assert len(losses) == 120 and losses[-1] < 0.02 * losses[0]
    assert stats["AP50"] >= 0.9


# --- the training program: arguments -------------------------------------------------------------------------


def test_demo_schedule_without_data_and_flags_override(monkeypatch, tmp_path):
    from cv.detection.ssd300_vgg16 import train

    monkeypatch.setattr(train, "COCO_DIR", str(tmp_path / "no_coco"))
    parser = train.get_args_parser()
    args = train.resolve(parser.parse_args([]))
    assert args.demo and args.data_path == train.SAMPLE_DATA
    assert (args.epochs, args.train_subset, args.pretrained_backbone) == (2, 48, False)
    args = train.resolve(parser.parse_args(["--epochs", "5"]))
    assert args.epochs == 5
    args = train.resolve(parser.parse_args(["--data-path", str(tmp_path)]))
    assert not args.demo and (args.epochs, args.lr_steps, args.lr, args.weight_decay) == (120, [80, 110], 0.002, 5e-4)
    assert args.pretrained_backbone and args.warmup_iters == 1000
    with pytest.raises(ValueError, match="--amp needs a CUDA device"):
        train.resolve(parser.parse_args(["--data-path", str(tmp_path), "--amp", "--device", "cpu"]))
    with pytest.raises(ValueError, match="--data-path .*nope: no such file or directory"):
        train.resolve(parser.parse_args(["--data-path", str(tmp_path / "nope")]))
    with pytest.raises(ValueError, match="--test-only needs --weights or --resume"):
        train.resolve(parser.parse_args(["--data-path", str(tmp_path), "--test-only"]))


@pytest.mark.parametrize("flag,value,message", [
    ("--batch-size", "0", "must be at least 1"), ("--batch-size", "-2", "must be at least 1"),
    ("--epochs", "0", "must be at least 1"), ("--lr", "nan", "must be a positive number"),
    ("--lr", "-1", "must be a positive number"), ("--momentum", "1.5", "must be between 0 and 1"),
    ("--workers", "-1", "must be 0 or more"), ("--weight-decay", "inf", "must be a number >= 0"),
])
def test_bad_flag_values_are_refused_at_parse_time(flag, value, message, capsys):
    from cv.detection.ssd300_vgg16 import train

    with pytest.raises(SystemExit) as exit_:
        train.get_args_parser().parse_args([flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_optimizer_flags_reach_the_optimizer(tmp_path):
    from cv.detection.ssd300_vgg16 import train

    parser = train.get_args_parser()
    args = train.resolve(parser.parse_args(["--data-path", str(tmp_path), "--lr", "0.004", "--batch-size", "8",
                                            "--momentum", "0.8", "--weight-decay", "0.001"]))
    model = tiny_ssd()
    model.backbone.stem[0].weight.requires_grad_(False)
    optimizer, base_lr = train.build_optimizer(model, args, world_size=2)
    assert base_lr == pytest.approx(0.004 * 16 / 32)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (pytest.approx(0.002), 0.8, 0.001)
    assert len(group.parameters) == len(list(model.parameters())) - 1  # frozen parameters are left out


# --- the training program, end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_keep_checkpoints_flag_prunes_old_checkpoints(sample_dataset, tmp_path):
    run(TRAIN + quick_args(sample_dataset, tmp_path / "out", "--train-subset", "1", "--val-subset", "1",
                           "--batch-size", "1", "--epochs", "3", "--eval-every", "100", "--keep-checkpoints", "1"),
        tmp_path)
    # The newest, plus the best by AP (the only evaluated epoch is the last, so it is both).
    assert sorted(d for d in os.listdir(tmp_path / "out") if d.startswith("checkpoint_epoch")) == [
        "checkpoint_epoch0002"]


def train_records(path):
    """The logged iterations of a metrics file, with their lr and losses."""
    return [(r["epoch"], r["iter"], r["iteration"], r["lr"], r["loss"], r["bbox_regression"], r["classification"])
            for r in read_metrics(path) if r["type"] == "train"]


def process_status(pid):
    """``/proc/PID/status`` as a dict: ``State``, ``ShdPnd`` (signals sent to the process, not yet delivered)..."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def wait_until(condition, what):
    """Block until ``condition()`` holds: a state another process reaches, as /proc shows it. Not a timing: the
    deadline only turns a hang into a failure."""
    deadline = time.monotonic() + 600
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.01)


def batches_read(trace_dir, rank):
    """``[(iteration, image ids)]`` of every training step of process ``rank``, as it logged them ($CV_TRACE_DIR)."""
    with open(trace_dir / f"rank{rank}.jsonl") as f:
        return [(r["iteration"], r["image_ids"]) for r in map(json.loads, f) if r["event"] == "train:batch"]


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resume_auto_continues_exactly(sample_dataset, tmp_path):
    """A scheduler's SIGTERM to train.sh with 2 processes, mid-epoch: the iteration in progress ends on both, a
    resumable checkpoint is saved, the exit status is 143; --resume auto then ends bit for bit where a run never
    interrupted ends: the same weights and SGD momentum, the same images read by each process at each step (the order
    the seed and the epoch draw, across the stop and into the next epoch), the same logged losses.

    Both processes stop themselves before their first step (CV_PAUSE_AT); the SIGTERM goes to train.sh (the
    launcher, which passes it on) while they are stopped, and they go on once it is pending in each of them: the stop
    falls in the first iteration of the epoch's two, on a machine of any speed."""
    def env(**extra):
        return dict(os.environ, NPROC_PER_NODE="2", MASTER_PORT=str(free_port()), **extra)

    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    traces = {run_dir: tmp_path / f"trace_{run_dir.name}" for run_dir in (stopped, straight)}
    for directory in traces.values():
        directory.mkdir()
    common = quick_args(sample_dataset, stopped, "--train-subset", "4", "--val-subset", "1", "--batch-size", "1",
                        "--epochs", "2", "--eval-every", "100", "--workers", "1")
    proc = subprocess.Popen(["bash", TRAIN_SH, *common], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=env(CV_PAUSE_AT="train:step", CV_TRACE_DIR=str(traces[stopped])))
    paused, lines = [], []
    try:
        for line in proc.stdout:
            lines.append(line)
            found = re.match(r"paused at train:step \(pid (\d+)\)", line)
            paused += [int(found[1])] if found else []
            if len(paused) == 2:
                break
        assert len(paused) == 2, "".join(lines)
        for pid in paused:
            wait_until(lambda: process_status(pid)["State"].startswith("T"), f"process {pid} to stop itself")
        proc.send_signal(signal.SIGTERM)
        for pid in paused:
            wait_until(lambda: int(process_status(pid)["ShdPnd"], 16) & 1 << (signal.SIGTERM - 1),
                       f"the launcher to pass SIGTERM on to process {pid}")
            os.kill(pid, signal.SIGCONT)
        out = "".join(lines) + proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
        for pid in paused:  # stopped processes outlive a killed launcher
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 143, out
    assert "SIGTERM received: stopping after the current iteration" in out
    assert last_line(out).startswith("stopped: by SIGTERM at epoch 0, iteration 1 of 2; saved ")
    saved = ckpt.read_index(stopped)["latest"]
    assert saved == "checkpoint_epoch0000_part000001" and ckpt.load(stopped / saved)["iteration"] == 1

    resumed = run(["bash", TRAIN_SH, *common, "--resume", "auto"], tmp_path,
                  env=env(CV_TRACE_DIR=str(traces[stopped]))).stdout
    assert f"resumed from {stopped / saved}: 1 iterations of epoch 0 done" in resumed
    assert "weights identical on all 2 ranks" in resumed
    run([sys.executable, "-m", "cv.detection.engine.launch", "cv.detection.ssd300_vgg16.train",
         *[a if a != str(stopped) else str(straight) for a in common]], tmp_path,
        env=env(CV_TRACE_DIR=str(traces[straight])))
    a, b = (ckpt.load(d / "checkpoint_epoch0001") for d in (straight, stopped))
    assert a["iteration"] == b["iteration"] == 4
    for name, tensor in a["model"].items():
        np.testing.assert_array_equal(tensor.numpy(), b["model"][name].numpy(), err_msg=name)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa["step"] == sb["step"] and len(sa) == len(a["model"]) + 1
    for index in (k for k in sa if k != "step"):
        np.testing.assert_array_equal(sa[index]["momentum_buf"].numpy(), sb[index]["momentum_buf"].numpy(),
                                      err_msg=f"momentum of parameter {index}")
    # The images each process read at each step: 2 steps per epoch, each image once per epoch across processes.
    read = {d: [batches_read(traces[d], rank) for rank in (0, 1)] for d in (straight, stopped)}
    assert read[stopped] == read[straight] and [[it for it, _ in rank] for rank in read[stopped]] == [[0, 1, 2, 3]] * 2
    order = [sum((ids for rank in read[straight] for it, ids in rank if it // 2 == epoch), []) for epoch in (0, 1)]
    assert len(set(order[0])) == 4 and sorted(order[0]) == sorted(order[1])
    assert order[0] != order[1]  # the order is drawn anew each epoch: a resume that replayed epoch 0's would fail
    # One metrics file: every iteration logged once, in order, with the same lr and losses, across the stop.
    assert train_records(stopped / "metrics.jsonl") == train_records(straight / "metrics.jsonl")


@pytest.mark.slow
def test_test_only_evaluates_given_weights_without_training(sample_dataset, tmp_path):
    common = ["--train-subset", "2", "--val-subset", "1", "--batch-size", "2", "--epochs", "1"]
    run(TRAIN + quick_args(sample_dataset, tmp_path / "train", *common), tmp_path)
    weights = tmp_path / "train" / "checkpoint_epoch0000"
    out = run(TRAIN + quick_args(sample_dataset, tmp_path / "eval", *common, "--test-only", "--weights",
                                 str(weights)), tmp_path).stdout
    assert "COCO bbox evaluation: 1 images" in out and "Average Precision" in out and "epoch 0 [" not in out
    # The recorded numbers are pycocotools' own on the written results file (the first val image by id).
    from cv.detection.evaluation.coco import STAT_NAMES
    from reference import pycocotools_stats

    dataset = json.loads((sample_dataset / "annotations" / "instances_val2017.json").read_text())
    first = sorted(image["id"] for image in dataset["images"])[:1]
    reference = pycocotools_stats(dataset, str(tmp_path / "eval" / "detections_test.json"), first)
    (record,) = read_metrics(tmp_path / "eval" / "metrics.jsonl")
    assert {k: record[k] for k in STAT_NAMES} == pytest.approx(reference, abs=1e-12)
    assert sorted(os.listdir(tmp_path / "eval")) == [".lock", "args.json", "detections_test.json",
                                                     "detections_test_confusion.png", "detections_test_pr.png",
                                                     "detections_test_report.json", "metrics.jsonl"]
    assert "per class (" in out and "per-class pictures: " in out
    assert record["type"] == "eval"
    # Weights that do not fit (another class count) are refused, naming the file.
    other = tmp_path / "other"
    other.mkdir()
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.save(ssd300_vgg16(num_classes=3).state_dict(), str(other / "w"))
    bad = run(TRAIN + quick_args(sample_dataset, tmp_path / "eval2", *common, "--test-only",
                                 "--weights", str(other / "w")), tmp_path, expect=1)
    assert last_line(bad.stderr).startswith(f"error: --weights {other / 'w'} does not fit this model (7 classes)")


@pytest.mark.slow
def test_two_processes_train_identical_weights_and_only_rank0_writes(sample_dataset, tmp_path):
    out_dir, cwd, digests = tmp_path / "out", tmp_path / "cwd", tmp_path / "digests"
    cwd.mkdir()
    digests.mkdir()
    from tests.conftest import rank_weight_digests, rank_weights_env  # each rank writes the digests of its weights

    env = dict(rank_weights_env(digests), NPROC_PER_NODE="2", MASTER_PORT=str(free_port()))
    out = run(["bash", TRAIN_SH] + quick_args(sample_dataset, out_dir, "--train-subset", "4", "--val-subset", "2",
                                              "--batch-size", "1", "--epochs", "1"), cwd, env=env).stdout
    assert "2 process(es) x 1 images" in out
    assert "weights identical on all 2 ranks (71 tensors compared)" in out
    assert out.count("saved ") == 1 and "COCO bbox evaluation: 2 images" in out
    assert sorted(os.listdir(out_dir)) == [".lock", "args.json", "checkpoint_epoch0000", "checkpoints.json",
                                          "detections_epoch0000.json", "detections_epoch0000_confusion.png",
                                          "detections_epoch0000_pr.png", "detections_epoch0000_report.json",
                                          "metrics.jsonl", "training.png"]
    assert os.listdir(cwd) == []
    records = read_metrics(out_dir / "metrics.jsonl")
    # 4 images over 2 ranks with 1 per step: 2 iterations, each logged, then the evaluation.
    assert [(r["type"], r.get("iter")) for r in records] == [("train", 1), ("train", 2), ("eval", None)]
    first, second = records[:2]
    assert np.isfinite(first["loss"]) and np.isfinite(second["loss"])
    # The speed is images over time: the first window starts with the epoch, as the time per iteration of the ETA
    # (one iteration left) does, so speed x ETA is the window's 2 images (1 per rank); the second window lies
    # between the two records' clock times (which also hold a print, hence the 5%).
    assert first["images_per_s"] * first["eta_s"] == pytest.approx(2, rel=1e-9)
    assert second["eta_s"] == 0
    assert second["images_per_s"] * (second["time"] - first["time"]) == pytest.approx(2, rel=0.05)
    # The evaluation's numbers are pycocotools' own on the results file (the first 2 val images by id).
    from cv.detection.evaluation.coco import STAT_NAMES
    from reference import pycocotools_stats

    dataset = json.loads((sample_dataset / "annotations" / "instances_val2017.json").read_text())
    first_two = sorted(image["id"] for image in dataset["images"])[:2]
    reference = pycocotools_stats(dataset, str(out_dir / "detections_epoch0000.json"), first_two)
    assert {k: records[2][k] for k in STAT_NAMES} == pytest.approx(reference, abs=1e-12)
    payload = ckpt.load(out_dir / "checkpoint_epoch0000")
    assert payload["iteration"] == 2 and payload["meta"]["num_classes"] == 7
    # The weights themselves are identical on both ranks, and are what the checkpoint holds.
    import hashlib

    ranks = rank_weight_digests(digests)
    saved = {name: hashlib.sha256(t.numpy().tobytes()).hexdigest() for name, t in payload["model"].items()}
    assert len(saved) == 71 and ranks[0] == ranks[1] == saved
    assert json.loads((out_dir / "args.json").read_text())["batch_size"] == 1


# --- the training program: what goes wrong ends in one line ------------------------------------------------------


def nan_weights(directory, num_classes=7):
    """A state dict of SSD300 for ``num_classes`` whose classification head holds a NaN: the loss is NaN at once."""
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.manual_seed(0)
    state = ssd300_vgg16(num_classes=num_classes).state_dict()
    key = "head.classification_head.module_list.0.weight"
    weight = state[key].numpy().copy()
    weight[0, 0, 0, 0] = float("nan")
    state[key] = flow.tensor(weight)
    flow.save(state, str(directory))
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_failures_end_in_one_line_through_train_sh(sample_dataset, tmp_path, nproc):
    env = dict(os.environ, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(free_port()))
    base = ["--train-subset", "2", "--val-subset", "1", "--batch-size", "1", "--epochs", "1"]

    def fails(*args, data=sample_dataset, env=env, expect=1):
        res = run(["bash", TRAIN_SH, *quick_args(data, tmp_path / "out", *base, *args)], tmp_path, env=env,
                  expect=expect)
        assert "Traceback" not in res.stderr and "CalledProcessError" not in res.stderr, res.stderr[-2000:]
        return last_line(res.stderr)

    # With two processes both fail alike; the launcher names the lower rank, every time.
    suffix = re.compile(r" \(process 0 of 2\)$" if nproc > 1 else "$")

    def ends(line, start):
        return line.startswith(start) and suffix.search(line[len(start):]) is not None

    # A flag argparse refuses: its status 2, and its line last (not "process 0 exited with status 2").
    assert ends(fails("--epochs", "0", expect=2), "error: argument --epochs: must be at least 1, got 0")
    assert ends(fails("--weights", str(nan_weights(tmp_path / "nan"))),
                "error: non-finite loss at epoch 0, iteration 0 of ")
    missing = tmp_path / "missing"
    line = fails("--resume", str(missing))
    assert ends(line, f"error: no checkpoint at {missing} (a checkpoint is a directory written by flow.save)")
    bad = tmp_path / "bad_data"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_train2017.json").write_text('{"images": [], "annotations": [')
    assert ends(fails(data=bad), f"error: {bad / 'annotations' / 'instances_train2017.json'}: not valid JSON")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert fails(env=dict(env, MASTER_PORT=str(port))).startswith(
            f"error: MASTER_PORT {port} on MASTER_ADDR 127.0.0.1 cannot be used")


@pytest.mark.slow
def test_output_dir_problems_and_a_second_run_are_one_line(sample_dataset, tmp_path):
    base = quick_args(sample_dataset, tmp_path / "out", "--train-subset", "2", "--val-subset", "1",
                      "--batch-size", "1", "--epochs", "1")
    (tmp_path / "file").write_text("x")
    res = run(TRAIN + base + ["--output-dir", str(tmp_path / "file")], tmp_path, expect=1)
    assert last_line(res.stderr) == f"error: --output-dir {tmp_path / 'file'} is a file, not a directory"
    # A second run into the output directory of a running one is refused before it writes anything.
    first = subprocess.Popen(["bash", TRAIN_SH, *base, "--epochs", "50"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        for line in first.stdout:
            if line.startswith("training on"):
                break
        res = run(TRAIN + base, tmp_path, expect=1)
        assert last_line(res.stderr).startswith(f"error: {tmp_path / 'out'} is in use by another training run (pid ")
        assert "checkpoint_epoch0000" not in os.listdir(tmp_path / "out")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


@pytest.mark.slow
def test_weights_and_resume_never_run_a_crafted_pickle(sample_dataset, tmp_path):
    """Weights are code under flow.load: a checkpoint whose pickled_data runs `touch MARKER` is refused by every
    loading path of the training program, naming the file and the global, and the marker never appears."""
    run(TRAIN + quick_args(sample_dataset, tmp_path / "out", "--train-subset", "1", "--val-subset", "1",
                           "--batch-size", "1", "--epochs", "1", "--eval-every", "9"), tmp_path)
    evil = tmp_path / "out" / "checkpoint_epoch0000"
    marker = tmp_path / "pwned"
    plant_payload(evil, marker)
    common = quick_args(sample_dataset, tmp_path / "out2", "--train-subset", "1", "--val-subset", "1",
                        "--batch-size", "1", "--epochs", "2")
    for flags in (["--weights", str(evil)], ["--resume", str(evil)], ["--test-only", "--weights", str(evil)]):
        res = run(["bash", TRAIN_SH, *common, *flags], tmp_path, expect=1)
        assert last_line(res.stderr) == (f"error: refusing to load {evil / 'pickled_data'}: it asks for the Python "
                                         "global posix.system, which saved weights never need (only tensors, numbers, "
                                         "strings and containers are loaded; a file that asks for more may run code "
                                         "on this machine)")
        assert not marker.exists()
    # --resume auto finds the crafted checkpoint unusable and says so, then starts from scratch (nothing else).
    res = run(["bash", TRAIN_SH, *quick_args(sample_dataset, tmp_path / "out", "--train-subset", "1",
                                             "--val-subset", "1", "--batch-size", "1", "--epochs", "1",
                                             "--resume", "auto")], tmp_path)
    assert "checkpoint_epoch0000 named latest in checkpoints.json is unusable (refusing to load" in res.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_a_full_disk_ends_with_the_latest_intact_checkpoint_named(sample_dataset, tmp_path, small_disk):
    """The output directory on a disk with room for one checkpoint of SSD300 (7 classes, with SGD momentum:
    ~210 MB) but not two: the second save fails, leaves nothing, and the error names the intact one."""
    out = small_disk(300)
    res = run(TRAIN + quick_args(sample_dataset, out, "--train-subset", "1", "--val-subset", "1", "--batch-size",
                                 "1", "--epochs", "2", "--eval-every", "9"), tmp_path, expect=1)
    assert last_line(res.stderr).startswith(f"error: cannot write checkpoint {out / 'checkpoint_epoch0001'} (No "
                                            "space left on device); nothing of it was kept. The latest intact "
                                            f"checkpoint is {out / 'checkpoint_epoch0000'}")
    assert sorted(os.listdir(out)) == [".lock", "args.json", "checkpoint_epoch0000", "checkpoints.json",
                                       "detections_epoch0001.json", "detections_epoch0001_confusion.png",
                                       "detections_epoch0001_pr.png", "detections_epoch0001_report.json",
                                       "metrics.jsonl"]
    assert ckpt.load(ckpt.latest_checkpoint(out))["epoch"] == 0
