"""Object detection: shared box machinery (:mod:`box_ops`, :mod:`anchors`), the SSD meta-architecture
(:mod:`ssd`), and one folder per model with its recipe (``ssd300_vgg16/``)."""
