"""Detection data: the dataset base and its record, COCO, Pascal VOC, dataset layouts, transforms, sample data.

Nothing here imports oneflow at module level: datasets run in DataLoader worker processes."""
