"""Trains tiny_ssd (tests/conftest.py) for a few steps in eager or graph mode, under cv.detection.engine.launch or
alone, from fixed weights and data, and saves the result; tests/test_graph_mode.py compares the modes.

    python -m cv.detection.engine.launch tests.graph_mode_worker MODE OUT [STEPS] [RESUME]

MODE is eager or graph; every process trains on its own images (rank-dependent), 2 per step, with the recipe's
optimizer (SGD, momentum 0.9, weight decay 5e-4), warm-up and an lr step. Rank 0 writes OUT (flow.save): the
eager-format checkpoint payload (model, optimizer, iteration), every step's logged losses, and the weights and SGD
momentum after every step (``steps``; in graph mode exported from the graph after each step). With RESUME (a
directory of such a result), training continues from it; STEPS counts from the start of training.
"""
import sys

import cv  # noqa: F401
import numpy as np
import oneflow as flow

from cv.detection.engine import checkpoint as ckpt
from cv.detection.engine import distributed as dist
from cv.detection.engine.trainer import learning_rate
from cv.detection.engine.graph_mode import GraphTrainer
from tests.conftest import tiny_ssd

BASE_LR, WARMUP, LR_STEPS, ITERS_PER_EPOCH, NUM_CLASSES = 0.05, 3, [1], 2, 5


def batch(step, rank, n=2):
    """Images and targets for ``step`` on ``rank``: 64x64 (the model's size), 0-4 boxes, some images without."""
    rng = np.random.default_rng(1000 * step + rank)
    images = [flow.tensor(rng.random((3, 64, 64), dtype=np.float32)) for _ in range(n)]
    targets = []
    for _ in range(n):
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 40, (k, 2))
        wh = rng.uniform(6, 24, (k, 2))
        targets.append({"boxes": flow.tensor(np.concatenate([xy, xy + wh], 1).astype(np.float32)).reshape(-1, 4),
                        "labels": flow.tensor(rng.integers(1, NUM_CLASSES, k), dtype=flow.int64)})
    return images, targets


def snapshot(model, optimizer):
    """The weights and each parameter's SGD momentum now, copied: state dicts hold the live tensors."""
    state = optimizer.state_dict()["state"]
    return {"model": {name: tensor.clone() for name, tensor in model.state_dict().items()},
            "momentum": [state[index]["momentum_buf"].clone() for index in range(len(state) - 1)]}


def main(mode, out, steps, resume=None):
    model = tiny_ssd(NUM_CLASSES)
    optimizer = flow.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9, weight_decay=5e-4)
    state = {"iteration": 0, "epoch": -1, "part": 0}
    losses, history = [], []
    if resume:
        payload = ckpt.load(resume)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        state = {"iteration": payload["iteration"], "epoch": payload["iteration"] // ITERS_PER_EPOCH - 1,
                 "part": payload["iteration"] % ITERS_PER_EPOCH}
        losses, history = payload["losses"], payload["steps"]
    model.train()
    trainer = net = None
    if mode == "graph":
        trainer = GraphTrainer(model, optimizer, BASE_LR, WARMUP, LR_STEPS, state, ITERS_PER_EPOCH, "cpu")
    else:
        net = flow.nn.parallel.DistributedDataParallel(model) if dist.world_size() > 1 else model
    for it in range(state["iteration"], steps):
        images, targets = batch(it, dist.rank())
        if trainer is not None:
            values = trainer(images, targets, it)
        else:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(BASE_LR, it, it // ITERS_PER_EPOCH, WARMUP, LR_STEPS)
            values = net(images, targets)
            optimizer.zero_grad()
            sum(values.values()).backward()
            optimizer.step()
        logged = dist.reduce_mean(flow.stack([values["bbox_regression"].detach(), values["classification"].detach()]))
        losses.append([float(v) for v in logged])
        if trainer is not None:
            trainer.export()
        history.append(snapshot(model, optimizer))
    if dist.is_main():
        flow.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": steps,
                   "losses": losses, "steps": history}, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3,
         sys.argv[4] if len(sys.argv) > 4 else None)
