"""Turn a training checkpoint into the model zoo's artefacts: a weights-only tarball, its SHA-256, a model card.

    from cv.detection.ssd300_vgg16.publish import publish
    publish("output/ssd300_vgg16/checkpoint_epoch0119", "release/")   # or: scripts/publish.py CHECKPOINT -o DIR

A training checkpoint is for resuming: besides the weights it holds optimizer state (SGD momentum doubles its
size), RNG states and the arguments, possibly on a GPU. What the zoo serves is only the weights, on the CPU, in
the layout flowvision's ``load_state_dict_from_url`` reads: a gzip tar of ONE directory written by
``flow.save(state_dict, dir)``, named like the tarball (flowvision extracts it into its cache and loads
``members[0]``). Written into ``output_dir`` (``<name>`` defaults to ``ssd300_vgg16``):

    <name>.tar.gz          <name>/ = flow.save(model state dict): 71 tensors; and meta.json, the classes'
                           names and category ids (flowvision's loader ignores it; infer.sh names detections by it)
    <name>.tar.gz.sha256   "<hex digest>  <name>.tar.gz\\n" (``sha256sum -c`` checks it)
    <name>.json            the model card, for programs (architecture, classes, parameter count, evaluation,
    <name>.md              training arguments, source commit, date, digest, usage); the same for people

The tarball is reproducible (same checkpoint -> same bytes, so its digest identifies the weights, not the
moment of publishing): members sorted, mtime 0, uid/gid 0 without names, fixed modes, gzip header without name or
time, and tensor directories named by position rather than by OneFlow's process-wide counter (see
:func:`_save_state_dict`).

The four names are replaced as one set (:mod:`cv.detection.utils.fileset`): they are links into a hidden folder
holding one complete set, and a publish builds the new set beside the old one, then switches with one rename.
After any failure (a full disk, SIGTERM, kill -9 at any point) the names serve the previous set byte for byte, or
the complete new one, and the error line says which.
"""
import datetime
import gzip
import json
import os
import subprocess
import tarfile
import tempfile
from collections import OrderedDict

import oneflow as flow

from cv.detection.engine import checkpoint as ckpt
from cv.detection.utils import cli, fileset
from cv.detection.evaluation.coco import STAT_NAMES
from cv.detection.models.transfer import TransferReport
from cv.detection.utils.hub import file_sha256
from cv.detection.ssd300_vgg16 import REPO
from cv.detection.evaluation.voc import METRICS as VOC_METRICS

ARCH = "ssd300_vgg16"
PAPER = "https://arxiv.org/abs/1512.02325"
BACKBONE_PAPER = "https://arxiv.org/abs/1409.1556"
STAT_LABELS = {
    "AP": "AP @ IoU 0.50:0.95", "AP50": "AP @ IoU 0.50", "AP75": "AP @ IoU 0.75",
    "APs": "AP small", "APm": "AP medium", "APl": "AP large",
    "AR1": "AR, 1 detection", "AR10": "AR, 10 detections", "AR100": "AR, 100 detections",
    "ARs": "AR small", "ARm": "AR medium", "ARl": "AR large",
}


class PublishError(ValueError):
    """The input cannot be published (the message names the path and says why)."""


# ----------------------------------------------------------------------------------------------------- reading

def read_checkpoint(path):
    """``(state_dict, payload_or_None)`` of a checkpoint of ours (``payload["model"]``) or a bare state dict, read
    without running code from it (:func:`cv.detection.engine.checkpoint.load`).

    Raises FileNotFoundError if ``path`` does not exist, PublishError if it is not something we can publish;
    both name the path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if not os.path.isdir(path):
        raise PublishError(f"{path} is a file; a checkpoint is a directory written by flow.save "
                           f"(e.g. output/ssd300_vgg16/checkpoint_epoch0119)")
    if os.path.exists(os.path.join(path, ckpt.INDEX)):
        # A training output directory: which of its checkpoints to publish is the user's choice, not ours.
        index = ckpt.read_index(path)
        hint = ", ".join(f"{k}: {os.path.join(path, index[k])}" for k in ("best", "latest") if index.get(k))
        raise PublishError(f"{path} is a training output directory, not a checkpoint; pass one of its "
                           f"checkpoints ({hint or 'checkpoint_epochNNNN/'})")
    try:
        payload = ckpt.load(path)
    except ValueError as e:
        raise PublishError(str(e)) from e
    state = ckpt.model_state(payload)
    if not isinstance(state, dict) or not all(isinstance(v, flow.Tensor) for v in state.values()):
        raise PublishError(f"{path} holds neither a checkpoint with a 'model' state dict nor a bare state dict "
                           f"(found {type(state).__name__})")
    return state, (payload if state is not payload else None)


def check_state_dict(state, path):
    """``(num_classes, model_key_order)`` of the SSD300-VGG16 state dict ``state``, after loading it strictly into
    that model; PublishError naming ``path`` if it is not one."""
    from cv.detection.ssd300_vgg16.weights import from_state_dict

    try:
        model = from_state_dict(state, path)
    except ValueError as e:
        raise PublishError(str(e)) from e
    return model.num_classes, list(model.state_dict())


# ----------------------------------------------------------------------------------------------------- writing

class _PositionalNames:
    """Stands in for ``oneflow.framework.id_util`` inside ``flow.save``: tensor directories named
    tensor_0000, tensor_0001, ... in the order the state dict is pickled."""

    def __init__(self):
        self.count = 0

    def UniqueStr(self, prefix):  # noqa: N802 (OneFlow's name)
        name = f"{prefix}{self.count:04d}"
        self.count += 1
        return name


def _save_state_dict(state, directory):
    """``flow.save(state, directory)``, with reproducible file names.

    OneFlow 0.9 names each tensor's directory from a process-wide counter (``tensor_<n>``), so the same state
    dict saved twice, or after anything else was saved, gives different names and so a different tarball. We
    substitute the counter for the duration of the save; the result is still exactly ``flow.save``'s format
    (``flow.load`` and flowvision read it; the test checks both). If a future OneFlow saves differently, this
    falls back to a plain ``flow.save``: still correct, only no longer reproducible."""
    from oneflow.framework import check_point_v2

    original = getattr(check_point_v2, "id_util", None)
    if original is None or not hasattr(original, "UniqueStr"):
        flow.save(state, directory)
        return
    check_point_v2.id_util = _PositionalNames()
    try:
        flow.save(state, directory)
    finally:
        check_point_v2.id_util = original


def _write_tarball(directory, arcname, tar_path):
    """A reproducible ``tar.gz`` of ``directory`` as ``arcname/``: members sorted (so ``arcname`` itself comes
    first, which flowvision relies on), every timestamp 0, owner 0:0 without names, modes 755/644."""
    entries = []
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        top = arcname if rel == "." else f"{arcname}/{rel.replace(os.sep, '/')}"
        entries.append((top, None))
        entries += [(f"{top}/{f}", os.path.join(root, f)) for f in files]
    with open(tar_path, "wb") as raw:
        # filename="" and mtime=0 keep the temporary name and the time out of the gzip header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for i, (name, source) in enumerate(sorted(entries)):
                    if i == len(entries) // 2:
                        cli.pause_point("publish:tarball")  # a test looks at the folder mid-write
                    info = tarfile.TarInfo(name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    if source is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        info.mode, info.size = 0o644, os.path.getsize(source)
                        with open(source, "rb") as f:
                            tar.addfile(info, f)


def source_commit(repo=REPO):
    """``git rev-parse HEAD`` of ``repo``, with ``-dirty`` if ``git status --porcelain`` lists anything;
    ``"unknown"`` without git or outside a repository."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True, timeout=30)  # noqa
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        status = run("status", "--porcelain")
        dirty = status.returncode != 0 or bool(status.stdout.strip())
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------- the card

def _jsonable(value):
    """Training arguments and meta as JSON: tuples as lists, dict keys as strings, anything else by repr."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def build_card(name, checkpoint, state, payload, num_classes, tarball, sha256, size, commit, published, meta):
    """The model card as a JSON-able dict. Whatever the checkpoint does not record is None and listed in
    ``unknown`` (a bare state dict records only the weights)."""
    payload = payload or {}
    trained_on = payload.get("meta") or {}
    stats = trained_on.get("stats")
    unknown = []
    if meta.get("label_names") is None:
        unknown.append("label_names")
    if stats is None:
        unknown.append("evaluation")
    if payload.get("args") is None:
        unknown.append("training")
    evaluation = None
    if stats is not None and "voc_metric" in stats:  # a Pascal VOC evaluation (cv.detection.evaluation.voc)
        variant = VOC_METRICS.get(stats["voc_metric"], stats["voc_metric"])
        evaluation = {"dataset": trained_on.get("dataset"), "split": trained_on.get("eval_split"),
                      "epoch": payload.get("epoch"),
                      "metric": f"Pascal VOC box mAP at IoU 0.5, {variant} AP, difficult objects ignored "
                                "(cv.detection.evaluation.voc), fractions in 0..1",
                      "headline": {"name": f"VOC mAP ({variant})", "value": round(100 * stats["mAP"], 1)},
                      "box_ap": None, "voc_metric": stats["voc_metric"],
                      "stats": {k: stats[k] for k in ("mAP", "mAP_11point", "mAP_area") if k in stats},
                      "class_ap": _jsonable(stats.get("class_AP"))}
    elif stats is not None:
        evaluation = {"dataset": trained_on.get("dataset"), "split": trained_on.get("eval_split"),
                      "epoch": payload.get("epoch"),
                      "metric": "COCO bbox (pycocotools COCOeval), fractions in 0..1",
                      "box_ap": round(100 * stats["AP"], 1) if "AP" in stats else None,
                      "stats": {k: stats[k] for k in STAT_NAMES if k in stats},
                      "per_class": _jsonable(stats.get("per_class"))}
        evaluation["headline"] = {"name": "COCO box AP", "value": evaluation["box_ap"]}
    training = None
    if payload.get("args") is not None or "epoch" in payload:
        training = {"epochs_done": None if payload.get("epoch") is None else payload["epoch"] + 1,
                    "last_epoch": payload.get("epoch"), "iteration": payload.get("iteration"),
                    "args": _jsonable(payload.get("args")),
                    # Fine-tuned from other weights: where from, and what was transferred (models/transfer.py).
                    "started_from": _jsonable((payload.get("args") or {}).get("init"))}
    return {
        "name": name,
        "architecture": {
            "name": "SSD300", "backbone": "VGG16", "input_size": [300, 300],
            "paper": PAPER, "backbone_paper": BACKBONE_PAPER,
            "builder": "cv.detection.ssd300_vgg16.ssd300_vgg16",
            "flowvision_builder": "flowvision.models.detection.ssd300_vgg16",
        },
        "num_classes": num_classes,
        "label_names": _jsonable(meta.get("label_names")),
        "label_to_category_id": _jsonable(meta.get("label_to_category_id")),
        "parameters": sum(int(t.numel()) for t in state.values()),
        "tensors": len(state),
        "evaluation": evaluation,
        "training": training,
        "source": {"checkpoint": os.path.abspath(checkpoint), "kind": "training checkpoint" if payload
                   else "bare state dict", "commit": commit},
        "published": published,
        "artifact": {"file": os.path.basename(tarball), "sha256": sha256, "bytes": size,
                     "format": f"gzip tar of one directory {name}/ written by flow.save(state_dict)"},
        "usage": {
            "infer": f"bash cv/detection/ssd300_vgg16/infer.sh --weights <url or path of {name}.tar.gz>",
            "evaluate": f"tar xzf {name}.tar.gz && bash cv/detection/ssd300_vgg16/train.sh --test-only "
                        f"--weights {name}/ --data-path <dataset>",
            "python": (f"state = flowvision.models.utils.load_state_dict_from_url('<url or file://path of "
                       f"{name}.tar.gz>'); ssd300_vgg16(num_classes={num_classes}).load_state_dict(state)"),
        },
        "unknown": unknown,
    }


def _fmt_bytes(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} bytes"


def render_markdown(card):
    """The card for people: what the model is, how good, where from, how to use it."""
    name, art, src = card["name"], card["artifact"], card["source"]
    labels = card["label_names"]
    classes = f"{card['num_classes']} (including background)"
    if labels:
        classes += ": " + ", ".join(str(n) for n in labels[1:] if n != "N/A")
    else:
        classes += "; label names unknown (bare state dict)"
    ev, tr = card["evaluation"], card["training"]
    lines = [
        f"# {name}",
        "",
        f"SSD300 object detector with a VGG16 trunk ([Liu et al., ECCV 2016]({card['architecture']['paper']})), "
        f"for OneFlow. Published {card['published']}.",
        "",
        "| | |",
        "|---|---|",
        "| Architecture | SSD300 (300×300 input), VGG16 trunk ([Simonyan & Zisserman]"
        f"({card['architecture']['backbone_paper']})) |",
        f"| Classes | {classes} |",
        f"| Parameters | {card['parameters']:,} in {card['tensors']} tensors |",
        (f"| {ev['headline']['name']} | {'unknown' if ev['headline']['value'] is None else ev['headline']['value']}"
         f" ({ev['dataset']}{' ' + ev['split'] if ev.get('split') else ''}, after epoch {ev['epoch']}) |" if ev
         else "| Box AP | unknown |"),
        f"| Weights | `{art['file']}`, {_fmt_bytes(art['bytes'])} |",
        f"| SHA-256 | `{art['sha256']}` |",
        f"| Source | `{src['checkpoint']}` ({src['kind']}), commit `{src['commit']}` |",
        "",
        "## Evaluation",
        "",
    ]
    split = f" ({ev['split']})" if ev and ev.get("split") else ""
    if ev and ev.get("voc_metric"):
        variant = VOC_METRICS.get(ev["voc_metric"], ev["voc_metric"])
        paper = ", the metric of the SSD paper's VOC2007 test results" if ev["voc_metric"] == "2007" else ""
        lines += [f"Pascal VOC box mAP at IoU 0.5 on `{ev['dataset']}`{split}, evaluated after epoch {ev['epoch']}: "
                  f"the {variant} AP per class{paper}; objects marked difficult ignored (in %):", "",
                  "| Metric | Value |", "|---|---:|",
                  f"| **mAP ({variant})** | **{100 * ev['stats']['mAP']:.1f}** |",
                  f"| mAP, {VOC_METRICS['2007']} | {100 * ev['stats']['mAP_11point']:.1f} |",
                  f"| mAP, {VOC_METRICS['2010']} | {100 * ev['stats']['mAP_area']:.1f} |"]
        lines += [f"| AP {name} | {'n/a (no ground truth)' if v is None else f'{100 * v:.1f}'} |"
                  for name, v in (ev.get("class_ap") or {}).items()]
    elif ev:
        lines += [f"COCO box metrics (pycocotools COCOeval) on `{ev['dataset']}`{split}, evaluated after epoch "
                  f"{ev['epoch']} (in %):", "", "| Metric | Value |", "|---|---:|"]
        lines += [f"| {STAT_LABELS.get(k, k)} | {100 * v:.1f} |" for k, v in ev["stats"].items()]
        if ev.get("per_class"):
            lines += ["", "Per class (in %; -1: no ground truth in the evaluated images):", "",
                      "| Class | Objects | AP | AP50 | AP75 |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {c['name']} | {c['gt']} | {100 * c['AP']:.1f} | {100 * c['AP50']:.1f} | "
                      f"{100 * c['AP75']:.1f} |" for c in ev["per_class"]]
    else:
        lines.append("Unknown: the checkpoint records no evaluation"
                     + (" (a bare state dict holds only the weights)." if src["kind"] == "bare state dict"
                        else " at this epoch (it was not an evaluation epoch)."))
    lines += ["", "## Training", ""]
    if tr:
        done = "unknown" if tr["epochs_done"] is None else tr["epochs_done"]
        if tr.get("started_from"):
            lines += [f"Fine-tuned from other weights: {TransferReport(**tr['started_from'])}.", ""]
        lines += [f"Epochs completed: {done}; iterations: {tr['iteration']}. Arguments:", "", "```json",
                  json.dumps(tr["args"], indent=1, sort_keys=True), "```"]
    else:
        lines.append("Unknown: a bare state dict records no training arguments.")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"sha256sum -c {art['file']}.sha256                  # check the download",
        f"bash cv/detection/ssd300_vgg16/infer.sh --weights <url or path of {art['file']}>",
        f"tar xzf {art['file']} && bash cv/detection/ssd300_vgg16/train.sh --test-only --weights {name}/ "
        "--data-path <dataset>",
        "```",
        "",
        "```python",
        "from flowvision.models.utils import load_state_dict_from_url",
        "from cv.detection.ssd300_vgg16 import ssd300_vgg16  # or flowvision.models.detection.ssd300_vgg16",
        "",
        f"state = load_state_dict_from_url(\"<url, or file:///abs/path/{art['file']}>\")",
        f"model = ssd300_vgg16(num_classes={card['num_classes']})",
        "model.load_state_dict(state)",
        "```",
        "",
        f"flowvision caches by file name: if its cache (`$FLOWVISION_CACHE`, default `~/.oneflow/flowvision_cache`)"
        f" already holds a `{name}/` directory, for example the zoo's COCO weights, `load_state_dict_from_url` "
        "returns that without downloading; pass `model_dir=` a directory of its own for these weights.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- publish

def publish(checkpoint, output_dir, name=ARCH):
    """Publish the SSD300-VGG16 weights in ``checkpoint`` into ``output_dir`` (created if needed).

    ``checkpoint`` is a checkpoint directory of ``train.py`` (its ``model`` is published, its ``meta``, ``args``
    and ``epoch`` fill the card) or a bare state-dict directory (the card lists what is unknown; a
    ``meta.json`` beside its weights is carried along). The state dict must load strictly into
    ``ssd300_vgg16(num_classes)``, ``num_classes`` read off the classification head.

    Returns the card (a dict), plus ``"paths"``: the four files written. Raises FileNotFoundError for a missing
    path, PublishError (a ValueError) for anything that is not an SSD300-VGG16 checkpoint; both name the path.

    The four files replace those ``output_dir`` served as a whole (:func:`cv.detection.utils.fileset.replace`):
    a failure (a full disk, checked before anything is written; Ctrl-C; SIGTERM made an Interrupted by
    scripts/publish.py) is raised as an error that says which complete set ``output_dir`` now serves, and
    leaves no partial file. DirectoryInUseError if another publish into ``output_dir`` is under way.
    """
    if not name or "." in name or "/" in name or os.sep in name:
        # flowvision derives the extracted directory's name from the file name up to its first dot.
        raise ValueError(f"--name must be a plain name without dots or slashes, got {name!r}")
    state, payload = read_checkpoint(checkpoint)
    num_classes, key_order = check_state_dict(state, checkpoint)
    # Weights only, on the CPU, in the model's own key order; no optimizer, RNG, or arguments travel along.
    state = OrderedDict((k, state[k].detach().to("cpu").contiguous()) for k in key_order)
    meta = (payload or {}).get("meta") or ckpt.read_meta(checkpoint) or {}
    meta = {"arch": ARCH, "num_classes": num_classes, "label_names": meta.get("label_names"),
            "label_to_category_id": _jsonable(meta.get("label_to_category_id"))}

    final = {"tarball": f"{name}.tar.gz", "sha256": f"{name}.tar.gz.sha256", "card_json": f"{name}.json",
             "card_md": f"{name}.md"}
    with tempfile.TemporaryDirectory(prefix="publish-") as work:
        weights_dir = os.path.join(work, name)
        _save_state_dict(state, weights_dir)
        with open(os.path.join(weights_dir, ckpt.META_FILE), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        # The tarball is about the size of what it packs (weights barely compress); the digest and cards are small.
        need = _tree_bytes(weights_dir) + (1 << 20)
        with fileset.replace(output_dir, name, list(final.values()), need) as staging:
            card = _write_set(staging, final, weights_dir, name, (checkpoint, state, payload, num_classes, meta))
    return dict(card, paths={k: os.path.join(output_dir, v) for k, v in final.items()})


def _tree_bytes(directory):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(directory) for f in files)


def _write_set(staging, final, weights_dir, name, source):
    """Write the four files named in ``final`` into ``staging``; the card."""
    checkpoint, state, payload, num_classes, meta = source
    tarball = os.path.join(staging, final["tarball"])
    _write_tarball(weights_dir, name, tarball)
    sha256, size = file_sha256(tarball), os.path.getsize(tarball)
    with open(os.path.join(staging, final["sha256"]), "w") as f:
        f.write(f"{sha256}  {final['tarball']}\n")
    published = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    card = build_card(name, checkpoint, state, payload, num_classes, tarball, sha256, size, source_commit(),
                      published, meta)
    with open(os.path.join(staging, final["card_json"]), "w") as f:
        f.write(json.dumps(card, indent=1) + "\n")
    with open(os.path.join(staging, final["card_md"]), "w") as f:
        f.write(render_markdown(card))
    return card
