"""Checkpoints: loading saved weights without running code, and saving that survives being killed at any moment.

**Loading** (:func:`load`). ``flow.save`` writes a directory: ``pickled_data`` (a pickle of the saved object in
which every tensor is a reference ``{"path": "tensor_12"}``) and one folder per tensor (``meta``: shape and dtype;
``out``: the raw bytes). ``flow.load`` unpickles without restriction, so a crafted ``pickled_data`` runs any code
it likes on the machine that loads it. :func:`load` never calls ``flow.load`` and never lets pickle import
anything but the few names that ``flow.save`` writes for a state dict or for our checkpoints (found from
OneFlow 0.9's ``check_point_v2.py`` and by disassembling the files we write):

* ``collections.OrderedDict`` (state dicts), ``oneflow.Tensor`` and ``oneflow.nn.Parameter`` (the tensor
  references, turned into tensors read from their folders by us, not by OneFlow);
* ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ``numpy.core.multiarray.scalar``
  (NumPy arrays: the NumPy random state in our checkpoints).

Anything else is refused with :class:`UnsafeCheckpointError` naming the file and the global, before anything of it
runs. A tensor reference must name a folder inside the checkpoint, and its ``out`` must hold exactly the bytes its
``meta`` announces.

**Saving** (:func:`save_checkpoint`). Layout of an output directory::

    checkpoint_epoch0003/                one per saved epoch (a flow.save directory)
    checkpoint_epoch0004_part000120/     saved mid-epoch (a stop was requested): 120 iterations of epoch 4 done
    checkpoints.json                     {"latest": ..., "best": ..., "best_ap": ..., "checkpoints": {name: {...}}}

A checkpoint is written under a temporary name, renamed into place, read back and checked (:func:`verify`); only
then does the index name it, and only then are old checkpoints pruned. Killed at any point, or out of disk space,
the directory still holds the previous complete checkpoint and an index that names it. :func:`latest_checkpoint`
skips checkpoints that are damaged anyway (a truncated copy, a disk error) and rebuilds a damaged index.
"""
import io
import math
import os
import pickle
import random
import re
from collections import OrderedDict

import numpy as np
import oneflow as flow

from cv.detection.utils import fileio

INDEX = "checkpoints.json"
PREFIX = "checkpoint_epoch"
PICKLE_FILE = "pickled_data"
# pickled_data holds names and numbers only (tensors live in their own folders): a few KB for our checkpoints.
MAX_PICKLE_BYTES = 64 << 20


class UnsafeCheckpointError(ValueError):
    """A saved file asks for something that saved weights never need (the message names the file and what)."""


class _TensorReference:
    """What the unpickler builds for a saved tensor: ``state`` is ``{"path": <folder name>}``."""

    def __setstate__(self, state):
        self.state = state


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("oneflow", "Tensor"): _TensorReference,
    ("oneflow.nn", "Parameter"): _TensorReference,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, source):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {self.source}: it asks for the Python global {module}.{name}, which saved "
                "weights never need (only tensors, numbers, strings and containers are loaded; a file that asks "
                "for more may run code on this machine)") from None


def _unpickle(path):
    """``(object, [tensor references])`` of the flow.save directory ``path``; tensors not read yet."""
    pickle_path = os.path.join(path, PICKLE_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path} (a checkpoint is a directory written by flow.save)")
    if not os.path.isfile(pickle_path):
        raise ValueError(f"{path} is not a checkpoint: it has no {PICKLE_FILE} (a flow.save directory has one)")
    size = os.path.getsize(pickle_path)
    if size > MAX_PICKLE_BYTES:
        raise ValueError(f"{pickle_path} is {size} bytes, not the index of a checkpoint (at most {MAX_PICKLE_BYTES})")
    with open(pickle_path, "rb") as f:
        data = f.read()
    try:
        top = _RestrictedUnpickler(data, pickle_path).load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise all sorts of errors
        raise ValueError(f"{pickle_path} is damaged ({type(e).__name__}: {e})") from None
    if not (isinstance(top, dict) and top.get("protocol_version") == 1 and "data" in top):
        raise ValueError(f"{pickle_path} was not written by flow.save (no protocol_version 1 header)")
    refs = []

    def collect(obj):
        if isinstance(obj, _TensorReference):
            refs.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                collect(v)

    try:
        collect(top["data"])
    except RecursionError:  # self-referencing or absurdly nested containers: never written by flow.save
        raise ValueError(f"{pickle_path} is damaged (containers nested too deeply)") from None
    return top["data"], refs


def _tensor_files(path, ref):
    """``(data file, numpy dtype, shape)`` of a tensor reference, checked; ValueError naming what is wrong."""
    from google.protobuf import text_format
    from oneflow.core.framework import variable_meta_info_pb2
    from oneflow.framework import dtype as dtype_util

    rel = ref.state.get("path") if isinstance(getattr(ref, "state", None), dict) else None
    if not isinstance(rel, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", rel):
        raise UnsafeCheckpointError(f"refusing to load {path}: a tensor refers to {rel!r}, not to a folder inside "
                                    "the checkpoint")
    folder = os.path.join(path, rel)
    try:
        with open(os.path.join(folder, "meta")) as f:
            meta = text_format.Parse(f.read(), variable_meta_info_pb2.VariableMetaInfo())
        dtype = np.dtype(dtype_util.convert_oneflow_dtype_to_numpy_dtype(
            dtype_util.convert_proto_dtype_to_oneflow_dtype(meta.data_type)))
        data_file = os.path.join(folder, "out")
        size = os.path.getsize(data_file)
    except (OSError, text_format.ParseError, NotImplementedError, TypeError) as e:
        raise ValueError(f"{path} is damaged: tensor {rel} cannot be read ({type(e).__name__}: {e})") from None
    shape = tuple(int(d) for d in meta.shape.dim)
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise ValueError(f"{path} is damaged: tensor {rel} holds {size} bytes, its shape {list(shape)} needs "
                         f"{expected} (a truncated copy?)")
    return data_file, dtype, shape


def load(path):
    """The object that ``flow.save`` wrote to the directory ``path``, tensors on the CPU, without running any code
    from it (see the module docstring). Raises FileNotFoundError, :class:`UnsafeCheckpointError` (a ValueError),
    or ValueError for damaged or foreign directories; every message names the path."""
    obj, refs = _unpickle(path)
    tensors = {}
    for ref in refs:
        data_file, dtype, shape = _tensor_files(path, ref)
        tensors[id(ref)] = flow.tensor(np.fromfile(data_file, dtype=dtype).reshape(shape))

    def build(o):
        if isinstance(o, _TensorReference):
            return tensors[id(o)]
        if isinstance(o, dict):
            out = type(o)() if isinstance(o, OrderedDict) else {}
            for k, v in o.items():
                out[k] = build(v)
            return out
        if isinstance(o, list):
            return [build(v) for v in o]
        if isinstance(o, tuple):
            return tuple(build(v) for v in o)
        return o

    return build(obj)


def verify(path):
    """Check, without reading the tensors' values, that ``path`` is a complete, loadable flow.save directory (the
    pickle is safe and whole, every tensor's data has the size its metadata announces); returns the saved object
    with tensors left as placeholders. Raises as :func:`load` does."""
    obj, refs = _unpickle(path)
    for ref in refs:
        _tensor_files(path, ref)
    return obj


# Beside pickled_data in a published weights directory: what the weights were trained on (label names, category
# ids, number of classes), as JSON. flow.load and flowvision's loader ignore it.
META_FILE = "meta.json"


def read_meta(directory):
    """The :data:`META_FILE` of a published weights directory, or None (absent, or not a JSON object)."""
    return fileio.read_json_object(os.path.join(directory, META_FILE))


def model_state(payload):
    """The model's state dict in a checkpoint of ours (``payload["model"]``) or a bare state dict (the zoo's)."""
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload["model"]
    return payload


# --------------------------------------------------------------------------------------------------- saving

def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "oneflow": flow.get_rng_state()}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    flow.set_rng_state(state["oneflow"])


def checkpoint_name(epoch, part=None):
    """``checkpoint_epochNNNN`` when ``epoch`` is done; ``checkpoint_epochNNNN_partIIIIII`` for ``part`` iterations
    of ``epoch`` (a stop mid-epoch). Names sort in the order they were written."""
    return f"{PREFIX}{epoch:04d}" + ("" if part is None else f"_part{part:06d}")


def read_index(output_dir):
    """The index of ``output_dir`` (``{}`` when there is none or it is unreadable)."""
    return fileio.read_json_object(os.path.join(output_dir, INDEX)) or {}


def _write_index(output_dir, index):
    fileio.write_json(os.path.join(output_dir, INDEX), index, indent=1)


def _saved(output_dir):
    return sorted(d for d in os.listdir(output_dir) if d.startswith(PREFIX)) if os.path.isdir(output_dir) else []


def save_checkpoint(output_dir, payload, epoch, part=None, ap=None, keep=3):
    """Save ``payload`` as the checkpoint of ``epoch`` (or of ``part`` iterations into it); once written and
    verified it becomes the latest, and the best if ``ap`` beats the best so far. Keeps the ``keep`` newest
    checkpoints and the best. Returns the checkpoint's path. On a failure (a full disk...) nothing of it remains
    and the index still names the previous checkpoint; the OSError propagates."""
    name = checkpoint_name(epoch, part)
    final = os.path.join(output_dir, name)
    index = read_index(output_dir)
    if os.path.exists(final):  # the same epoch saved again (a resumed run): nothing may point at it meanwhile
        index = {k: v for k, v in index.items() if v != name}
        index.get("checkpoints", {}).pop(name, None)
        _write_index(output_dir, index)
    with fileio.atomic_path(final) as tmp:
        flow.save(payload, tmp)
    verify(final)
    index["latest"] = name
    if ap is not None and (index.get("best_ap") is None or ap > index["best_ap"]):
        index["best"], index["best_ap"] = name, ap
    index.setdefault("checkpoints", {})[name] = {"epoch": epoch, "part": part, "iteration": payload.get("iteration"),
                                                 "ap": ap}
    _write_index(output_dir, index)
    saved = _saved(output_dir)
    for old in saved[:-keep] if keep > 0 else saved:
        if old not in (index.get("latest"), index.get("best")):
            fileio.remove(os.path.join(output_dir, old))
            index["checkpoints"].pop(old, None)
    _write_index(output_dir, index)
    return final


def latest_checkpoint(output_dir, say=print, repair=True):
    """Path of the newest intact checkpoint in ``output_dir``, or None.

    The index names it; when that checkpoint is damaged or missing, or the index itself is, the checkpoint
    directories are checked from the newest down (:func:`verify`), the first intact one is used, what was skipped is
    said through ``say``, and (``repair``) the index is rewritten to match. ``repair=False`` only looks: for a
    question asked before the run holds the output directory's lock.
    """
    index = read_index(output_dir)
    name = index.get("latest")
    if name:
        try:
            verify(os.path.join(output_dir, name))
            return os.path.join(output_dir, name)
        except (OSError, ValueError) as e:
            say(f"checkpoint {name} named latest in {INDEX} is unusable ({e}); looking for an older one")
    elif os.path.exists(os.path.join(output_dir, INDEX)):
        say(f"{os.path.join(output_dir, INDEX)} is damaged; rebuilding it from the checkpoint directories")
    found = None
    for candidate in reversed(_saved(output_dir)):
        try:
            payload = verify(os.path.join(output_dir, candidate))
        except (OSError, ValueError) as e:
            say(f"skipping damaged checkpoint {candidate} ({e})")
            continue
        found = candidate
        meta = (payload.get("meta") or {}) if isinstance(payload, dict) else {}
        stats = meta.get("stats") or {}
        value = stats.get(meta.get("primary_metric") or "AP")  # the evaluator's primary number (COCO AP, VOC mAP)
        if value is not None and (index.get("best_ap") is None or value > index["best_ap"]):
            index["best"], index["best_ap"] = candidate, value
        break
    if found is None:
        return None
    if repair and index.get("latest") != found:
        index["latest"] = found
        if index.get("best") and not os.path.isdir(os.path.join(output_dir, index["best"])):
            index.pop("best", None), index.pop("best_ap", None)
        _write_index(output_dir, index)
        say(f"using {found}, the newest intact checkpoint")
    return os.path.join(output_dir, found)
