"""Checkpoints that survive being killed at any moment.

Layout of an output directory::

    checkpoint_epoch0003/     one per saved epoch (a ``flow.save`` directory)
    checkpoints.json          {"latest": "checkpoint_epoch0003", "best": "checkpoint_epoch0002", "best_ap": 0.25}

A checkpoint is written under a temporary name and renamed into place (a rename is atomic), then the index is
replaced the same way, and only then are old checkpoints pruned. Killed at any point, the directory still holds
the previous complete checkpoint and an index that names it; leftovers of the interrupted write are removed by
the next save.
"""
import glob
import json
import os
import random
import shutil

import numpy as np
import oneflow as flow

from cv.detection.atomic import write_json_atomically
from cv.detection.hub import is_weights_dir

INDEX = "checkpoints.json"
PREFIX = "checkpoint_epoch"


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "oneflow": flow.get_rng_state()}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    flow.set_rng_state(state["oneflow"])


def read_index(output_dir):
    try:
        with open(os.path.join(output_dir, INDEX)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _write_index(output_dir, index):
    write_json_atomically(os.path.join(output_dir, INDEX), index, indent=1)


def save_checkpoint(output_dir, epoch, payload, ap=None, keep=3):
    """Save ``payload`` as the checkpoint of ``epoch``; it becomes the latest, and the best if ``ap`` beats the
    best so far. Keeps the ``keep`` newest checkpoints and the best. Returns the checkpoint's path."""
    name = f"{PREFIX}{epoch:04d}"
    for stale in glob.glob(os.path.join(output_dir, f".{PREFIX}*.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = os.path.join(output_dir, f".{name}.tmp-{os.getpid()}")
    flow.save(payload, tmp)
    final = os.path.join(output_dir, name)
    index = read_index(output_dir)
    if os.path.exists(final):  # the same epoch saved again (a resumed run): nothing may point at it meanwhile
        index = {k: v for k, v in index.items() if v != name}
        _write_index(output_dir, index)
        shutil.rmtree(final)
    os.rename(tmp, final)
    index["latest"] = name
    if ap is not None and (index.get("best_ap") is None or ap > index["best_ap"]):
        index["best"], index["best_ap"] = name, ap
    _write_index(output_dir, index)
    saved = sorted(d for d in os.listdir(output_dir) if d.startswith(PREFIX))
    for old in saved[:-keep] if keep > 0 else saved:
        if old not in (index.get("latest"), index.get("best")):
            shutil.rmtree(os.path.join(output_dir, old), ignore_errors=True)
    return final


def latest_checkpoint(output_dir):
    """Path of the newest complete checkpoint in ``output_dir``, or None."""
    name = read_index(output_dir).get("latest")
    if name and os.path.isdir(os.path.join(output_dir, name)):
        return os.path.join(output_dir, name)
    # No index (written by hand, or copied without it): the highest complete epoch.
    saved = sorted(d for d in os.listdir(output_dir) if d.startswith(PREFIX)) if os.path.isdir(output_dir) else []
    return os.path.join(output_dir, saved[-1]) if saved else None


def load_checkpoint(path):
    """The payload saved at ``path``; errors name the path."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path} (a checkpoint is a directory written by flow.save)")
    if not is_weights_dir(path):
        raise ValueError(f"{path} is not a checkpoint: it has no 'pickled_data' (a flow.save directory has one)")
    try:
        return flow.load(path)
    except Exception as e:  # flow.load raises assorted errors for partial or foreign directories
        raise ValueError(f"{path} is not a readable checkpoint: {e}") from e


def model_state(payload):
    """The model's state dict in a checkpoint of ours (``payload["model"]``) or a bare state dict (the zoo's)."""
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload["model"]
    return payload
