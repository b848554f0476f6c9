"""Small helpers for runs under :mod:`cv.detection.engine.launch` (OneFlow reads the rank and world size from the
environment the launcher sets; a plain ``python`` run is rank 0 of 1)."""
import os

import numpy as np
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


def all_gather_arrays(array):
    """Every rank's 1-D float64 ``array`` (lengths may differ), in rank order, on every rank (a collective).

    oneflow 0.9's ``oneflow.comm`` has tensor collectives only, with equal shapes: first every length travels, then
    the arrays padded to the longest. CPU tensors (oneflow puts a process's CPU tensors on ``cpu:<local rank>``, as
    ``all_gather`` requires) whether or not the model runs on a GPU: this is host data anyway. Plain numbers, never a
    pickle: nothing a rank sends can run code on another.
    """
    lengths = [None] * world_size()
    flow.comm.all_gather(lengths, flow.tensor([len(array)], dtype=flow.int64))
    lengths = [int(t.numpy()[0]) for t in lengths]
    padded = np.zeros(max(lengths), dtype=np.float64)
    padded[:len(array)] = array
    chunks = [None] * world_size()
    flow.comm.all_gather(chunks, flow.tensor(padded, dtype=flow.float64))
    return [chunk.numpy()[:length] for chunk, length in zip(chunks, lengths)]


def gather_per_image(per_image):
    """Merge every rank's ``{image_id: [N, 6] float64 rows}`` into rank 0's ``per_image``, in place; a collective.

    Rank 0's own images come first as they are; the other ranks' follow in rank order, skipping images already
    present (a distributed sampler pads the last batch by repeating images, possibly on another rank, and a
    repeated image would count its ground truth twice; a second gather changes nothing). Returns how many copies
    were skipped (0 on the other ranks, whose ``per_image`` is left as it was).
    """
    ids = np.asarray(list(per_image), dtype=np.float64)
    rows = [np.column_stack([np.full(len(r), i, dtype=np.float64), r]) for i, r in per_image.items()]
    rows = np.concatenate(rows).ravel() if rows else np.zeros(0)
    all_ids, all_rows = all_gather_arrays(ids), all_gather_arrays(rows)
    skipped = 0
    if is_main():
        for ids, rows in zip(all_ids[1:], all_rows[1:]):
            rows = rows.reshape(-1, 7)
            for image_id in ids.astype(np.int64).tolist():
                if image_id in per_image:
                    skipped += 1
                else:
                    per_image[image_id] = rows[rows[:, 0] == image_id, 1:]
    return skipped


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
