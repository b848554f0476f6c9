"""A PNG of a training run: loss over iterations and AP over epochs, drawn with PIL (no plotting library needed
for two line charts)."""
import math

from PIL import Image, ImageDraw

WIDTH, PANEL_HEIGHT, MARGIN = 900, 300, 60
COLOURS = {"loss": (31, 119, 180), "bbox_regression": (255, 127, 14), "classification": (44, 160, 44),
           "AP": (214, 39, 40), "AP50": (148, 103, 189)}


def _nice_ticks(lo, hi, count=5):
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(step))
    for m in (1, 2, 2.5, 5, 10):  # a step of 1, 2, 2.5 or 5 times a power of ten
        if magnitude * m >= step:
            step = magnitude * m
            break
    first = (lo // step) * step
    return [first + k * step for k in range(count + 3) if first + k * step <= hi + step * 0.999]


def _panel(draw, top, title, xlabel, series):
    """One chart at vertical offset ``top``; ``series``: {name: [(x, y), ...]}."""
    points = [p for pts in series.values() for p in pts]
    left, right, bottom = MARGIN, WIDTH - 20, top + PANEL_HEIGHT - 40
    draw.text((left, top + 5), title, fill=(0, 0, 0))
    if not points:
        draw.text((left, top + PANEL_HEIGHT // 2), "(nothing recorded)", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    yticks = _nice_ticks(min(0.0, min(ys)), max(ys))
    y0, y1 = yticks[0], yticks[-1]
    chart_top = top + 25

    def to_px(x, y):
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - chart_top))

    for t in yticks:
        _, py = to_px(x0, t)
        draw.line([left, py, right, py], fill=(225, 225, 225))
        draw.text((5, py - 6), f"{t:.3g}", fill=(0, 0, 0))
    draw.rectangle([left, chart_top, right, bottom], outline=(0, 0, 0))  # after the grid, which would cover it
    for t in _nice_ticks(x0, x1):
        px, _ = to_px(t, y0)
        if left <= px <= right:
            draw.text((px - 10, bottom + 5), f"{t:.4g}", fill=(0, 0, 0))
    draw.text(((left + right) // 2 - 20, bottom + 20), xlabel, fill=(0, 0, 0))
    legend_x = left + 10
    for name, pts in series.items():
        colour = COLOURS.get(name, (0, 0, 0))
        px = [to_px(x, y) for x, y in pts]
        if len(px) > 1:
            draw.line(px, fill=colour, width=2)
        for x, y in px:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.text((legend_x, chart_top + 5), name, fill=colour)
        legend_x += 8 * len(name) + 20


def plot_metrics(records, path):
    """Write ``path`` (PNG): losses of the ``train`` records over global iterations, and AP/AP50 of the ``eval``
    records over epochs."""
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    image = Image.new("RGB", (WIDTH, 2 * PANEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, "training loss", "iteration",
           {k: [(r["iteration"], r[k]) for r in train] for k in ("loss", "bbox_regression", "classification")})
    _panel(draw, PANEL_HEIGHT, "COCO box AP (val)", "epoch",
           {k: [(r["epoch"], r[k]) for r in evals] for k in ("AP", "AP50")})
    image.save(path)
