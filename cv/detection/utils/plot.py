"""The pictures, drawn with matplotlib (``Figure`` alone, no pyplot: the Agg renderer, no display needed).

The training curve, ``training.png``, from the records of ``metrics.jsonl``: the loss per iteration (raw and
smoothed, with its two parts), the learning rate, and the evaluation metrics per evaluated epoch. An evaluation's
precision-recall curves and confusion matrix (:mod:`cv.detection.evaluation.report` writes them beside it).
"""
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Metrics drawn per evaluated epoch, whichever the evaluation reported (COCO: AP, AP50; Pascal VOC: mAP).
EVAL_METRICS = ("AP", "AP50", "mAP")
# Smoothing of the loss: an exponential moving average over about this many logged iterations.
SMOOTHING = 10


def smoothed(values, span=SMOOTHING):
    """Exponential moving average with weight ``2 / (span + 1)``, bias-corrected so that it starts at the first
    value rather than at 0 (as TensorBoard's smoothing does)."""
    alpha, average, weight, out = 2.0 / (span + 1), 0.0, 0.0, []
    for v in values:
        average = (1 - alpha) * average + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def plot_metrics(records, path):
    """Write the figure of ``records`` (see :func:`figure`) to ``path`` (PNG)."""
    figure(records).savefig(path)


def figure(records):
    """The figure of ``records``: dicts of ``type`` "train" (``iteration``, ``lr``, the losses) and of ``type``
    "eval" (``epoch``, 0-based, and metrics). Epochs are shown as counts of epochs done, on integer ticks."""
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval" and not r.get("test_only")]
    fig = Figure(figsize=(9, 8), dpi=100, layout="constrained")
    loss_ax, lr_ax, eval_ax = fig.subplots(3, 1, height_ratios=[3, 1, 2])

    its = [r["iteration"] for r in train]
    if train:
        loss_ax.plot(its, [r["loss"] for r in train], color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        loss_ax.plot(its, smoothed([r["loss"] for r in train]), color="tab:blue", linewidth=2, label="loss, smoothed")
        for key, colour in (("bbox_regression", "tab:orange"), ("classification", "tab:green")):
            loss_ax.plot(its, smoothed([r[key] for r in train]), color=colour, linewidth=1.2, linestyle="--",
                         label=f"{key}, smoothed")
        loss_ax.legend(loc="upper right", fontsize="small")
        lr_ax.plot(its, [r["lr"] for r in train], color="tab:purple", drawstyle="steps-post")
    loss_ax.set(title="training loss", xlabel="iteration", ylabel="loss")
    lr_ax.set(title="learning rate", xlabel="iteration", ylabel="lr")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    done = [r["epoch"] + 1 for r in evals]
    for key in EVAL_METRICS:
        if evals and all(key in r for r in evals):
            eval_ax.plot(done, [r[key] for r in evals], marker="o", label=key, clip_on=False)
    last_epoch = max(done + [r.get("epoch", -1) + 1 for r in train] + [1])
    eval_ax.set(title="evaluation (val)", xlabel="epochs done", ylabel="metric", xlim=(0, last_epoch + 0.5))
    eval_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Metrics are fractions: from 0, and at least to 0.1, so an untrained model's 1e-6 does not fill the axis.
    highest = max([r[key] for r in evals for key in EVAL_METRICS if key in r] + [0.0])
    eval_ax.set_ylim(0, max(0.1, min(1.05, highest * 1.15)))
    if evals:
        eval_ax.legend(loc="lower right", fontsize="small")
    else:
        eval_ax.text(0.5, 0.5, "no evaluation yet", transform=eval_ax.transAxes, ha="center", color="grey")
    for ax in (loss_ax, lr_ax, eval_ax):
        ax.grid(alpha=0.3)
    return fig


# Evaluation pictures (cv.detection.evaluation.report). Beyond this many classes a legend, tick labels and numbers
# in cells would be unreadable: the classes are drawn unnamed, the mean (PR) and the colours (confusion) remain.
NAMED_CLASSES = 30


def plot_pr_curves(recall, curves, names, path, title):
    """Write precision-recall curves (PNG, 900 x 700 px) to ``path``: ``curves`` one precision array per class
    (over ``recall``; None for a class without ground truth, left out), with their mean thick; each labelled with
    its mean precision (the AP for COCO's 101-point curves)."""
    fig = Figure(figsize=(9, 7), dpi=100, layout="constrained")
    ax = fig.subplots()
    drawn = [(name, np.asarray(c)) for name, c in zip(names, curves) if c is not None]
    named = len(drawn) <= NAMED_CLASSES
    for i, (name, precision) in enumerate(drawn):
        unnamed = f"each of {len(drawn)} classes" if i == 0 else None
        ax.plot(recall, precision, linewidth=1, alpha=0.8 if named else 0.3, color=None if named else "grey",
                label=f"{name} {precision.mean():.3f}" if named else unnamed)
    if drawn:
        mean = np.mean([c for _, c in drawn], axis=0)
        ax.plot(recall, mean, linewidth=3, color="tab:blue", label=f"all classes {mean.mean():.3f}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    else:
        ax.text(0.5, 0.5, "no ground truth", transform=ax.transAxes, ha="center", color="grey")
    ax.set(title=title, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    fig.savefig(path)


def plot_confusion(counts, names, path, title):
    """Write the confusion matrix ``counts`` (``[K + 1, K + 1]``, rows ground truth, columns predictions, the
    background last; see :mod:`cv.detection.evaluation.confusion`) to ``path`` (PNG, 1000 x 900 px), each row
    normalised by its sum so that the colours compare classes of different sizes."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = counts / np.where(totals > 0, totals, 1.0)
    fig = Figure(figsize=(10, 9), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the row (its ground truth)")
    labels = list(names) + ["background"]
    unnamed = len(labels) > NAMED_CLASSES + 1
    note = " (index into the report's names; the last: background)" if unnamed else ""
    if not unnamed:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
        ax.set_yticks(range(len(labels)), labels, fontsize="small")
        for (i, j), value in np.ndenumerate(fractions):
            if counts[i, j]:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if value > 0.5 else "black")
    ax.set(title=title, xlabel="predicted" + note, ylabel="ground truth" + note)
    fig.savefig(path)
