"""Small helpers for runs under :mod:`cv.detection.engine.launch` (OneFlow reads the rank and world size from the
environment the launcher sets; a plain ``python`` run is rank 0 of 1)."""
import os

import oneflow as flow


def rank():
    return flow.env.get_rank()


def world_size():
    return flow.env.get_world_size()


def is_main():
    return rank() == 0


def is_local_main():
    """The first process of this node (``LOCAL_RANK`` 0): the one that prepares per-node files (a download, the
    sample dataset) while the others wait, whether or not the nodes share a file system."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def print0(*args, **kwargs):
    """``print`` on rank 0 only, flushed (progress lines must show up while a long step runs)."""
    if is_main():
        print(*args, **kwargs, flush=True)


def reduce_mean(tensor):
    """The mean of ``tensor`` over all ranks (a copy; the input is left alone)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    flow.comm.all_reduce(out)
    return out / world_size()


def barrier():
    if world_size() > 1:
        flow.comm.barrier()


def any_rank(flag):
    """True on every rank if ``flag`` is true on any (a collective: every rank must call it)."""
    if world_size() == 1:
        return bool(flag)
    value = flow.tensor([float(bool(flag))])
    flow.comm.all_reduce(value)
    return float(value) > 0


def all_gather_ints(values):
    """Every rank's list of ``len(values)`` ints, in rank order (``[values]`` in a single process)."""
    if world_size() == 1:
        return [list(values)]
    out = [None] * world_size()
    flow.comm.all_gather(out, flow.tensor(list(values), dtype=flow.int64))
    return [t.numpy().tolist() for t in out]


def check_same_weights(model):
    """Raise ``RuntimeError`` unless every rank holds exactly the same parameters (what DDP must guarantee).

    Compares, bit for bit, each parameter's sum and sum of squares gathered from all ranks; on rank 0 prints
    the confirmation.
    """
    params = [p.detach() for p in model.parameters()]
    local = flow.cat([flow.stack([p.sum() for p in params]), flow.stack([(p * p).sum() for p in params])]).cpu()
    gathered = [flow.zeros_like(local) for _ in range(world_size())]
    flow.comm.all_gather(gathered, local)
    different = [r for r, g in enumerate(gathered) if not bool((g == gathered[0]).all())]
    if different:
        raise RuntimeError(f"ranks {different} hold different weights from rank 0")
    print0(f"weights identical on all {world_size()} ranks ({len(params)} tensors compared)")
