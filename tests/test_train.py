"""The training loop, checkpoints and the training program (``cv.detection.ssd300_vgg16.train``).

The program runs for real in subprocesses (one process, and two under ``oneflow.distributed.launch``) on a few
sample images: SSD300 costs ~4 s per image and step on this CPU. The learning proof uses the same loop
(:func:`train_one_epoch`, :func:`evaluate`) with a small SSD built from the same classes, which can overfit a
handful of images within a CI budget; SSD300 from scratch cannot.
"""
import json
import os
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
from PIL import Image

from cv.detection import checkpoint as ckpt
from cv.detection.anchors import DefaultBoxGenerator
from cv.detection.coco import CocoDetection, make_loader
from cv.detection.coco_eval import CocoEvaluator
from cv.detection.engine import (DynamicLossScaler, NonFiniteLossError, evaluate, learning_rate, read_metrics,
                                 train_one_epoch)
from cv.detection.layers import Conv2d
from cv.detection.plot import plot_metrics
from cv.detection.ssd import SSD
from tests.conftest import tiny_ssd

TRAIN = [sys.executable, "-m", "cv.detection.ssd300_vgg16.train"]


def run(cmd, cwd, timeout=600, expect=0):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == expect, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quick_args(data, out, *extra):
    return ["--data-path", str(data), "--output-dir", str(out), "--workers", "0", "--no-pretrained-backbone",
            "--print-freq", "1", *extra]


# --- pieces --------------------------------------------------------------------------------------------------


def test_learning_rate_warmup_and_steps():
    lr = lambda it, ep: learning_rate(0.01, it, ep, warmup_iters=100, lr_steps=[3, 5])  # noqa: E731
    assert lr(0, 0) == pytest.approx(1e-5)
    assert lr(50, 0) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lr(100, 0) == lr(5000, 2) == pytest.approx(0.01)
    assert lr(5000, 3) == pytest.approx(0.001) and lr(9000, 5) == pytest.approx(0.0001)


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


def test_non_finite_loss_stops_naming_epoch_and_iteration(sample_dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(sample_dataset, "train", max_images=4)
    model = tiny_ssd(num_classes=ds.num_classes)
    with flow.no_grad():
        model.head.classification_head.module_list[0].weight[0, 0, 0, 0] = float("nan")
    optimizer = flow.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 3, iteration 0 of 2 \(global 7\)"):
        train_one_epoch(model, optimizer, make_loader(ds, 2, 0), "cpu", 3, {"iteration": 7}, lambda i, e: 0.01)


def test_plot_shows_losses_and_ap(tmp_path):
    records = [{"type": "train", "iteration": i, "loss": 10 / (i + 1), "bbox_regression": 3 / (i + 1),
                "classification": 7 / (i + 1)} for i in range(0, 50, 5)]
    records += [{"type": "eval", "epoch": e, "AP": 0.1 * e, "AP50": 0.2 * e} for e in range(4)]
    plot_metrics(records, tmp_path / "plot.png")
    image = np.asarray(Image.open(tmp_path / "plot.png").convert("RGB"))
    assert image.shape == (600, 900, 3)
    loss_blue = (np.abs(image[:300].astype(int) - (31, 119, 180)).sum(-1) < 10).sum()
    ap_red = (np.abs(image[300:].astype(int) - (214, 39, 40)).sum(-1) < 10).sum()
    assert loss_blue > 100 and ap_red > 100


# --- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoints_keep_the_newest_and_the_best(tmp_path):
    for epoch, ap in enumerate([0.1, 0.5, 0.2, 0.3, 0.25]):
        ckpt.save_checkpoint(tmp_path, epoch, {"w": flow.ones(2) * epoch, "epoch": epoch}, ap=ap, keep=2)
    kept = sorted(d for d in os.listdir(tmp_path) if d.startswith(ckpt.PREFIX))
    assert kept == ["checkpoint_epoch0001", "checkpoint_epoch0003", "checkpoint_epoch0004"]
    index = ckpt.read_index(tmp_path)
    assert index == {"latest": "checkpoint_epoch0004", "best": "checkpoint_epoch0001", "best_ap": 0.5}
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["epoch"] == 4
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "nope")


KILL_SCRIPT = """
import sys
from cv.detection import checkpoint as ckpt
import oneflow as flow
ckpt.save_checkpoint(sys.argv[1], 1, {"w": flow.randn(64, 1024, 1024), "epoch": 1})  # ~256 MB: takes a while
"""


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    ckpt.save_checkpoint(tmp_path, 0, {"w": flow.ones(3), "epoch": 0})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)])
    deadline = time.time() + 120
    while not any(d.startswith(".checkpoint_epoch0001.tmp") for d in os.listdir(tmp_path)):
        assert proc.poll() is None and time.time() < deadline, "the writer ended before it was caught writing"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.read_index(tmp_path)["latest"] == "checkpoint_epoch0000"
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert payload["epoch"] == 0 and payload["w"].numpy().tolist() == [1, 1, 1]
    ckpt.save_checkpoint(tmp_path, 1, {"epoch": 1})  # the next save clears the leftover
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch0000", "checkpoint_epoch0001", "checkpoints.json"]


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
    state = {"iteration": 0}
    losses = [train_one_epoch(model, optimizer, loader, "cpu", epoch, state, lambda i, e: 0.003, print_freq=1000)
              ["loss"] for epoch in range(120)]
    stats = evaluate(model, make_loader(eval_set, 8, 0, shuffle=False),
                     CocoEvaluator(eval_set.coco(), eval_set.label_to_category_id), "cpu")
    with capsys.disabled():
        print(f"\nlearning proof: loss {losses[0]:.3f} -> {losses[-1]:.4f}, AP50 {stats['AP50']:.3f}, "
              f"AP {stats['AP']:.3f} on {sum(len(im[4]) for im in big)} objects in 8 images")
    assert losses[-1] < 0.02 * losses[0]
    assert stats["AP50"] >= 0.9


# --- the training program ------------------------------------------------------------------------------------


def test_amp_is_refused_on_cpu(tmp_path):
    out = subprocess.run(TRAIN + ["--amp", "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "--amp needs a CUDA device" in out.stderr


def test_demo_schedule_without_data_and_flags_override(monkeypatch, tmp_path):
    from cv.detection.ssd300_vgg16 import train

    monkeypatch.setattr(train, "DEFAULT_COCO", str(tmp_path / "no_coco"))
    parser = train.get_args_parser()
    args = train.resolve(parser.parse_args([]), parser)
    assert args.demo and args.data_path == train.SAMPLE_DATA
    assert (args.epochs, args.train_subset, args.pretrained_backbone) == (2, 48, False)
    args = train.resolve(parser.parse_args(["--epochs", "5"]), parser)
    assert args.epochs == 5
    args = train.resolve(parser.parse_args(["--data-path", str(tmp_path)]), parser)
    assert not args.demo and (args.epochs, args.lr_steps, args.lr, args.weight_decay) == (120, [80, 110], 0.002, 5e-4)
    assert args.pretrained_backbone and args.warmup_iters == 1000


def test_optimizer_flags_reach_the_optimizer(tmp_path):
    from cv.detection.ssd300_vgg16 import train

    parser = train.get_args_parser()
    args = train.resolve(parser.parse_args(["--data-path", str(tmp_path), "--lr", "0.004", "--batch-size", "8",
                                            "--momentum", "0.8", "--weight-decay", "0.001"]), parser)
    model = tiny_ssd()
    model.backbone.stem[0].weight.requires_grad_(False)
    optimizer, base_lr = train.build_optimizer(model, args, world_size=2)
    assert base_lr == pytest.approx(0.004 * 16 / 32)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (pytest.approx(0.002), 0.8, 0.001)
    assert len(group.parameters) == len(list(model.parameters())) - 1  # frozen parameters are left out


def test_keep_checkpoints_flag_prunes_old_checkpoints(sample_dataset, tmp_path):
    run(TRAIN + quick_args(sample_dataset, tmp_path / "out", "--train-subset", "1", "--val-subset", "1",
                           "--batch-size", "1", "--epochs", "3", "--eval-every", "100", "--keep-checkpoints", "1"),
        tmp_path)
    # The newest, plus the best by AP (the only evaluated epoch is the last, so it is both).
    assert sorted(d for d in os.listdir(tmp_path / "out") if d.startswith("checkpoint_epoch")) == [
        "checkpoint_epoch0002"]


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(sample_dataset, tmp_path):
    common = ["--train-subset", "2", "--val-subset", "1", "--batch-size", "2", "--eval-every", "100"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(TRAIN + quick_args(sample_dataset, straight, *common, "--epochs", "2"), tmp_path)
    run(TRAIN + quick_args(sample_dataset, resumed, *common, "--epochs", "1"), tmp_path)
    out = run(TRAIN + quick_args(sample_dataset, resumed, *common, "--epochs", "2", "--resume", "auto"), tmp_path)
    assert "resumed from" in out and "epoch 0 done, iteration 1" in out
    a = ckpt.load_checkpoint(straight / "checkpoint_epoch0001")
    b = ckpt.load_checkpoint(resumed / "checkpoint_epoch0001")
    assert a["iteration"] == b["iteration"] == 2
    for name, tensor in a["model"].items():
        np.testing.assert_array_equal(tensor.numpy(), b["model"][name].numpy(), err_msg=name)
    # The resumed run appended to the same metrics file: both epochs' iterations are there once.
    records = read_metrics(resumed / "metrics.jsonl")
    assert [(r["epoch"], r["iter"]) for r in records if r["type"] == "train"] == [(0, 1), (1, 1)]


def test_test_only_evaluates_given_weights_without_training(sample_dataset, tmp_path):
    common = ["--train-subset", "2", "--val-subset", "1", "--batch-size", "2", "--epochs", "1"]
    run(TRAIN + quick_args(sample_dataset, tmp_path / "train", *common), tmp_path)
    weights = tmp_path / "train" / "checkpoint_epoch0000"
    out = run(TRAIN + quick_args(sample_dataset, tmp_path / "eval", *common, "--test-only", "--weights",
                                 str(weights)), tmp_path)
    assert "COCO bbox evaluation: 1 images" in out and "Average Precision" in out and "epoch 0 [" not in out
    assert sorted(os.listdir(tmp_path / "eval")) == ["args.json", "detections_test.json", "metrics.jsonl"]
    assert [r["type"] for r in read_metrics(tmp_path / "eval" / "metrics.jsonl")] == ["eval"]
    # Weights that do not fit (another class count) are refused, naming the file.
    other = tmp_path / "other"
    other.mkdir()
    from cv.detection.ssd300_vgg16 import ssd300_vgg16

    flow.save(ssd300_vgg16(num_classes=3).state_dict(), str(other / "w"))
    bad = subprocess.run(TRAIN + quick_args(sample_dataset, tmp_path / "eval2", *common, "--test-only",
                                            "--weights", str(other / "w")), cwd=tmp_path, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and f"--weights {other / 'w'} does not fit this model (7 classes)" in bad.stderr


def test_two_processes_train_identical_weights_and_only_rank0_writes(sample_dataset, tmp_path):
    out_dir, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "cv.detection.ssd300_vgg16.train"]
    out = run(cmd + quick_args(sample_dataset, out_dir, "--train-subset", "4", "--val-subset", "2",
                               "--batch-size", "1", "--epochs", "1"), cwd)
    assert "2 process(es) x 1 images" in out
    assert "weights identical on all 2 ranks (71 tensors compared)" in out
    assert out.count("saved ") == 1 and "COCO bbox evaluation: 2 images" in out
    assert sorted(os.listdir(out_dir)) == ["args.json", "checkpoint_epoch0000", "checkpoints.json",
                                          "detections_epoch0000.json", "metrics.jsonl", "training.png"]
    assert os.listdir(cwd) == []
    records = read_metrics(out_dir / "metrics.jsonl")
    # 4 images over 2 ranks with 1 per step: 2 iterations, each logged, then the evaluation.
    assert [(r["type"], r.get("iter")) for r in records] == [("train", 1), ("train", 2), ("eval", None)]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in records[:2])
    assert set(records[2]) >= {"AP", "AP50", "AR100"}
    payload = ckpt.load_checkpoint(out_dir / "checkpoint_epoch0000")
    assert payload["iteration"] == 2 and payload["meta"]["num_classes"] == 7
    assert json.loads((out_dir / "args.json").read_text())["batch_size"] == 1
