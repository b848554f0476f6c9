"""Evaluation: COCO's metrics, Pascal VOC's, and the gathering of per-image results across processes."""
