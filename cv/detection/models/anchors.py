"""SSD default boxes ("anchors"), paper §2.2 "Choosing scales and aspect ratios for default boxes"."""
import math

import numpy as np
import oneflow as flow


class DefaultBoxGenerator:
    """The default boxes of SSD for a set of feature maps.

    At feature map ``k`` (of ``m``) each cell holds boxes of scale ``s_k`` and ``sqrt(s_k * s_k+1)`` with aspect
    ratio 1, and of scale ``s_k`` with aspect ratios ``r`` and ``1/r`` for each ``r`` in ``aspect_ratios[k]``,
    centred on the cell: ``(i + 0.5) * step_k`` pixels.

    Args:
        aspect_ratios: per feature map, the ratios ``r`` besides 1.
        scales: ``m + 1`` scales relative to the image side; without them, ``m`` are spread evenly over
            ``[min_ratio, max_ratio]`` and 1.0 is added.
        steps: per feature map, the distance in pixels between cell centres; without them, image size / map size.
        clip: clip each box's relative width and height to 1 (done while boxes are (cx, cy, w, h), as the
            reference implementations do, so the boxes stay centred on their cells).

    The boxes depend only on the feature-map sizes, image size, device and dtype, so they are computed once for
    each combination and cached.
    """

    def __init__(self, aspect_ratios, min_ratio=0.15, max_ratio=0.9, scales=None, steps=None, clip=True):
        num_maps = len(aspect_ratios)
        if steps is not None and len(steps) != num_maps:
            raise ValueError(f"{len(steps)} steps for {num_maps} feature maps")
        if scales is None:
            if num_maps > 1:
                scales = [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0) for k in range(num_maps)]
                scales.append(1.0)
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_maps + 1:
            raise ValueError(f"{len(scales)} scales for {num_maps} feature maps: need one more than maps")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = list(scales)
        self.steps = None if steps is None else list(steps)
        self.clip = clip
        self._cache = {}

    def num_anchors_per_location(self):
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _wh_pairs(self, k):
        s_k, s_next = self.scales[k], self.scales[k + 1]
        pairs = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
        for r in self.aspect_ratios[k]:
            pairs += [(s_k * math.sqrt(r), s_k / math.sqrt(r)), (s_k / math.sqrt(r), s_k * math.sqrt(r))]
        pairs = np.array(pairs)
        return pairs.clip(0, 1) if self.clip else pairs

    def relative_boxes(self, grid_sizes, image_size):
        """``[A, 4]`` float64 boxes as (cx, cy, w, h) relative to the image, in the order the head predicts them:
        feature map, then row, then column, then box within the cell."""
        height, width = image_size
        out = []
        for k, (rows, cols) in enumerate(grid_sizes):
            step_y, step_x = (self.steps[k],) * 2 if self.steps else (height / rows, width / cols)
            cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step_y / height, (np.arange(cols) + 0.5) * step_x / width,
                                 indexing="ij")
            wh = self._wh_pairs(k)
            centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], axis=1), len(wh), axis=0)
            out.append(np.concatenate([centres, np.tile(wh, (rows * cols, 1))], axis=1))
        return np.concatenate(out)

    def __call__(self, grid_sizes, image_size, device, dtype=flow.float32):
        """``[A, 4]`` default boxes as ``[x1, y1, x2, y2]`` in pixels of an image of ``image_size = (h, w)``."""
        grid_sizes = tuple((int(h), int(w)) for h, w in grid_sizes)
        key = (grid_sizes, tuple(int(s) for s in image_size), str(device), dtype)
        if key not in self._cache:
            rel = self.relative_boxes(grid_sizes, image_size)
            scale = np.array([image_size[1], image_size[0]] * 2, dtype=np.float64)
            xyxy = np.concatenate([rel[:, :2] - 0.5 * rel[:, 2:], rel[:, :2] + 0.5 * rel[:, 2:]], axis=1) * scale
            self._cache[key] = flow.tensor(xyxy.astype(np.float32), device=device).to(dtype)
        return self._cache[key]

    def __repr__(self):
        return (f"{type(self).__name__}(aspect_ratios={self.aspect_ratios}, scales={self.scales}, "
                f"steps={self.steps}, clip={self.clip})")
