"""What every detection dataset shares, whatever its annotation format: the image record, reading images, the
rules for unreadable files, per-epoch augmentation seeding, and the loader.

A dataset (:class:`cv.detection.data.coco.CocoDetection`, :class:`cv.detection.data.voc.VOCDetection`, ...) reads
its annotations into :class:`ImageRecord` s and hands them, with its label names, to
:class:`DetectionDataset`'s constructor. This module does not import oneflow at module level: datasets run in
DataLoader worker processes, and samples stay NumPy arrays until the training process turns a batch into tensors
(:func:`to_tensors`).
"""
import copy
import itertools
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from cv.detection.data.transforms import to_chw_float


# A dataset with more classes than this is a mistake (a names list pasted wrong); the largest public detection
# vocabularies (LVIS: 1203, Open Images: 601, Objects365: 365) stay well below.
MAX_CLASSES = 5000


def check_class_names(names, source):
    """A dataset's class names as a list of strings, checked whatever the format: at least one, at most
    :data:`MAX_CLASSES`, no name twice (labels would be told apart by number only). ValueError naming ``source``
    (the file that holds them)."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"{source}: the dataset has no classes")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{source}: {len(names)} classes, more than {MAX_CLASSES}: is the names list right?")
    seen = set()
    for k, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{source}: the class name {name!r} is given twice (the second time as class {k})")
        seen.add(name)
    return names


class ImageRecord(NamedTuple):
    """One image of a split as its annotations describe it."""

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray   # [N, 4] float32, x1 y1 x2 y2 in pixels of the stored image
    labels: np.ndarray  # [N] int64, 1..num_classes-1


def load_rgb(path, exif_transpose=False):
    """The image at ``path`` as an RGB PIL image, whatever its mode; raises ``OSError`` for unreadable files.

    16-bit and 32-bit grayscale are scaled to 8 bits (PIL's own conversion would clip them to white); palette
    and alpha images are converted by PIL (alpha is dropped); CMYK and grayscale by PIL. The pixels are the stored
    ones (COCO's boxes refer to them) unless ``exif_transpose``: then turned as the EXIF orientation says, as image
    viewers show them. A "decompression bomb" (an image over twice Pillow's ``Image.MAX_IMAGE_PIXELS``, 179 million
    pixels by default) is an OSError too.
    """
    try:
        return _load_rgb(path, exif_transpose)
    except Image.DecompressionBombError as e:
        raise OSError(f"refused as a decompression bomb ({e})") from None


def _load_rgb(path, exif_transpose):
    with Image.open(path) as img:
        img.load()  # decode now: a truncated or corrupt file fails here, not later in a transform
        return as_rgb(img, exif_transpose)


def as_rgb(img, exif_transpose=False):
    """A decoded PIL image as a new RGB image, converted as :func:`load_rgb` converts files."""
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")



class DetectionDataset:
    """Samples ``(image, target)`` from a list of :class:`ImageRecord` s.

    Args:
        records: the split's images, in a fixed order.
        label_names: names by label, ``label_names[0] == "__background__"``; ``num_classes`` is its length.
        label_to_category_id: label -> the annotation format's category id (what evaluation reports).
        source: one line naming where the split comes from (its annotation file), for messages.
        image_dir: named when no image at all can be read.
        transform: ``transform(image, boxes, labels, rng) -> (image [3, H, W] float32, boxes, labels)``; without
            one, the image is only converted to float32 CHW.
        train: training data skips unreadable files (counted, named in a warning) by taking the next image, so a
            batch keeps its size; evaluation data raises, since skipping would silently change the metric.
        seed: augmentation randomness; sample ``i`` in epoch ``e`` uses ``default_rng([seed, e, i])``, so runs are
            reproducible whatever the number of workers.

    A sample is ``(image, target)``: ``image`` float32 ``[3, H, W]``; ``target`` a dict with ``boxes`` float32
    ``[N, 4]`` (``x1, y1, x2, y2`` in pixels of ``image``), ``labels`` int64 ``[N]``, ``image_id`` and
    ``orig_size`` ``(height, width)`` of the file. Subclasses add :meth:`evaluator`.
    """

    # Read the pixels turned as their EXIF orientation says (formats whose labels refer to the image as viewers show
    # it); False: the stored pixels, which COCO's and VOC's boxes refer to.
    exif_transpose = False

    def __init__(self, records, label_names, label_to_category_id, source, image_dir, transform=None, train=False,
                 seed=0):
        if not records:
            raise ValueError(f"{source}: no usable images in this split")
        self.images = list(records)
        self.label_names = list(label_names)
        self.num_classes = len(self.label_names)
        self.label_to_category_id = dict(label_to_category_id)
        self.annotation_file = source
        self.image_dir = image_dir
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = 0
        self._unreadable = 0

    def __len__(self):
        return len(self.images)

    def set_epoch(self, epoch):
        """Augmentation draws depend on the epoch: call this before iterating each epoch."""
        self.epoch = epoch

    def _read(self, index):
        record = self.images[index]
        try:
            image = load_rgb(record.path, self.exif_transpose)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing, corrupt, truncated files
            raise OSError(f"image {record.image_id} ({record.path}) cannot be read: {e}") from None
        if image.size != (record.width, record.height):
            raise OSError(f"image {record.image_id} ({record.path}) is {image.size[0]}x{image.size[1]} but the "
                          f"annotation file says {record.width}x{record.height}: its boxes would be wrong")
        return image, record

    def __getitem__(self, index):
        for attempt in range(len(self.images)):
            i = (index + attempt) % len(self.images)
            try:
                image, record = self._read(i)
                break
            except OSError as e:
                if not self.train:
                    raise
                self._unreadable += 1
                warnings.warn(f"skipped for training: {e} (unreadable images in this process so far: "
                              f"{self._unreadable})")
        else:
            raise OSError(f"no image of {self.image_dir} can be read")
        boxes, labels = record.boxes, record.labels
        if self.transform is None:
            image = to_chw_float(image)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, boxes, labels = self.transform(image, boxes, labels, rng)
        return image, {"boxes": boxes, "labels": labels, "image_id": record.image_id,
                       "orig_size": (record.height, record.width)}

    def subset(self, image_ids=None, train=None, transform=None, max_images=None):
        """A copy of this dataset with only the images whose id is in ``image_ids`` (None: all), in this dataset's
        order, the first ``max_images`` of them; ``train`` (None: as this one) and ``transform`` as for the
        constructor. The evaluator still knows the whole split but scores only the images evaluated, so a part is
        evaluated as a split of its own. ValueError naming the source if no image is left."""
        part = copy.copy(self)
        wanted = None if image_ids is None else set(image_ids)
        part.images = [r for r in self.images if wanted is None or r.image_id in wanted][:max_images]
        if not part.images:
            raise ValueError(f"{self.annotation_file}: no images left in this part of the split")
        part.train = self.train if train is None else train
        part.transform = transform
        part.epoch, part._unreadable = 0, 0
        return part

    def max_boxes(self):
        """The most boxes any image of the split has (at least 1)."""
        return max([1] + [len(record.boxes) for record in self.images])


def collate(batch):
    """A batch as ``(images, targets)`` lists: images differ in size and targets in box count."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def to_tensors(images, targets, device="cpu"):
    """Turn a collated batch into the model's input: lists of oneflow tensors, images on ``device``. Targets stay
    on the host: the loss reads them there to pad the batch, then moves the padded batch once."""
    import oneflow as flow

    images = [flow.tensor(im, device=device) for im in images]
    targets = [{"boxes": flow.tensor(t["boxes"], dtype=flow.float32).reshape(-1, 4),
                "labels": flow.tensor(t["labels"], dtype=flow.int64).reshape(-1),
                "image_id": t["image_id"]} for t in targets]
    return images, targets


def make_loader(dataset, batch_size, workers=2, shuffle=True, distributed=False, drop_last=False, seed=0):
    """A DataLoader over ``dataset`` with :func:`collate`.

    The order depends only on ``seed`` and the epoch (call :func:`set_epoch` before each epoch), never on how
    many epochs this loader has run, and an epoch can begin part-way: a resumed run sees the same batches as an
    uninterrupted one. With ``distributed``, each rank reads its own shard; the last shard is padded with repeated
    images, which the evaluator de-duplicates.
    """
    from oneflow.utils.data import DataLoader, DistributedSampler

    class Sampler(DistributedSampler):
        """OneFlow's DistributedSampler (the epoch-seeded order and the sharding), from index ``start`` on."""

        start = 0

        def __iter__(self):
            return itertools.islice(super().__iter__(), self.start, None)

        def __len__(self):
            return super().__len__() - self.start

    if distributed:
        sampler = Sampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = Sampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      drop_last=drop_last)


def set_epoch(loader, epoch, start=0):
    """Select the epoch's shuffle and augmentation draws; the epoch's batches begin at batch ``start``."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.start = start * loader.batch_size
    loader.dataset.set_epoch(epoch)
