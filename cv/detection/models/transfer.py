"""Start an SSD from the weights of another SSD trained on other classes (fine-tuning), and say what was kept.

Every tensor whose name and shape fit is copied: the trunk, the extra layers, the L2 scale and the box-regression
head do not depend on the classes. The classification head does: its convolution for feature map ``k`` predicts
``num_classes`` scores for each of the map's ``A_k`` default boxes per cell, output channel ``a * num_classes + c``
(:class:`cv.detection.models.ssd.SSDScoringHead`). It is rebuilt for the new classes, and where a new class has
the name of a source class (:func:`name_key`: case, spaces, ``_`` and ``-`` ignored) its rows, one per default box,
are copied from the source, as is the background row; the other classes keep the fresh model's initialisation.
So a dataset whose "person" and "car" are COCO's starts out detecting them.

Softmax scores are not kept: the score of a class is normalised over the classes the model has, so the same
logits give other scores among other classes. What is kept exactly are the logits of the copied classes and the
box regression (tested).
"""
from dataclasses import dataclass, field

CLASSIFICATION_PREFIX = "head.classification_head.module_list."
IGNORED_NAMES = {"", "__background__", "n/a"}


def name_key(name):
    """What two class names must share to be the same class: ``"Stop sign" == "stop_sign" == "stopsign"``."""
    return "".join(ch for ch in str(name).lower() if ch not in " _-\t")


@dataclass
class TransferReport:
    """What :func:`transfer` did, for the first lines of a run, the checkpoint and the model card."""

    source: str
    tensors_copied: int
    tensors_total: int
    num_classes: int
    class_sources: dict = field(default_factory=dict)  # target class name -> source class name, or None (new)
    rebuilt: bool = True  # False: the classes were the same, every tensor was copied

    def __str__(self):
        if not self.rebuilt:
            return f"loaded all {self.tensors_total} tensors from {self.source} (same {self.num_classes} classes)"
        known = [n for n, s in self.class_sources.items() if s is not None]
        new = [n for n, s in self.class_sources.items() if s is None]
        said = [f"{', '.join(known)} from its classes" if known else "", f"{', '.join(new)} new" if new else ""]
        return (f"transferred {self.tensors_copied} of {self.tensors_total} tensors from {self.source}; "
                f"classification head rebuilt for {self.num_classes} classes (background"
                + "".join(f" + {part}" if i == 0 else f"; {part}" for i, part in enumerate(p for p in said if p))
                + ")")

    def as_dict(self):
        return {"source": self.source, "tensors_copied": self.tensors_copied, "tensors_total": self.tensors_total,
                "num_classes": self.num_classes, "rebuilt": self.rebuilt, "class_sources": dict(self.class_sources)}


def class_mapping(target_names, source_names):
    """``{target label: source label}`` for the background and every target class whose name a source class has.

    ``target_names``/``source_names``: names by label, background first; ``source_names`` may be None (unknown:
    only the background is mapped). Source names that are placeholders (``N/A``) never match.
    """
    mapping = {0: 0}
    if not source_names:
        return mapping
    by_key = {}
    for label, name in enumerate(source_names):
        key = name_key(name)
        if label and key not in IGNORED_NAMES and key not in by_key:
            by_key[key] = label
    for label, name in enumerate(target_names):
        if label and name_key(name) in by_key:
            mapping[label] = by_key[name_key(name)]
    return mapping


def _copy_rows(fresh, source, mapping, num_anchors, target_classes, source_classes):
    """``fresh`` (a classification weight or bias for ``target_classes``) with the mapped rows of ``source``."""
    out = fresh.clone()
    for a in range(num_anchors):
        for target, src in mapping.items():
            out[a * target_classes + target] = source[a * source_classes + src]
    return out


def transfer(model, source_state, source_names, target_names, source="the weights"):
    """Load ``source_state`` (an SSD state dict, possibly for other classes) into ``model``; the report.

    ``model`` must be freshly built for ``len(target_names)`` classes: what is not copied keeps its initialisation.
    The same classes (same count, and the same names where both are known) load every tensor as they are.
    Raises ValueError naming ``source`` when a tensor outside the classification head is missing or misshapen
    (weights of another architecture).
    """
    fresh = model.state_dict()
    problems = [k for k, v in fresh.items() if not k.startswith(CLASSIFICATION_PREFIX)
                and (k not in source_state or tuple(source_state[k].shape) != tuple(v.shape))]
    if problems:
        raise ValueError(f"{source} does not fit this model's architecture: {len(problems)} tensors missing or of "
                         f"another shape ({', '.join(problems[:3])}{', ...' if len(problems) > 3 else ''})")
    num_anchors = model.anchor_generator.num_anchors_per_location()
    first = source_state.get(f"{CLASSIFICATION_PREFIX}0.weight")
    if first is None or first.shape[0] % num_anchors[0]:
        raise ValueError(f"{source}: cannot read its number of classes from {CLASSIFICATION_PREFIX}0.weight")
    source_classes = first.shape[0] // num_anchors[0]
    target_classes = len(target_names)
    same_names = source_names is None or [name_key(n) for n in source_names] == [name_key(n) for n in target_names]
    if source_classes == target_classes and same_names:
        model.load_state_dict({k: source_state[k] for k in fresh})
        return TransferReport(source, len(fresh), len(fresh), target_classes, rebuilt=False)
    mapping = class_mapping(target_names, source_names if source_names and len(source_names) == source_classes
                            else None)
    state, copied = {}, 0
    for key, value in fresh.items():
        if key.startswith(CLASSIFICATION_PREFIX):
            k = int(key[len(CLASSIFICATION_PREFIX):].split(".")[0])
            state[key] = _copy_rows(value, source_state[key], mapping, num_anchors[k], target_classes, source_classes)
        else:
            state[key] = source_state[key]
            copied += 1
    model.load_state_dict(state)
    class_sources = {str(target_names[t]): (str(source_names[mapping[t]]) if t in mapping and source_names else None)
                     for t in range(1, target_classes)}
    return TransferReport(source, copied, len(fresh), target_classes, class_sources)
