"""Arrays from what models and datasets hand around (oneflow tensors, numpy arrays, Python numbers), without
importing oneflow: evaluation and data code use these in processes that never load it."""
import numpy as np


def as_numpy(x):
    """``x`` as a numpy array: oneflow (or torch) tensors through their ``.numpy()``, anything else through
    ``np.asarray``."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


def as_int(x):
    """An image id given as a Python/numpy int or a one-element tensor/array, as a Python int."""
    if isinstance(x, (int, np.integer)):
        return int(x)
    a = as_numpy(x)
    if a.size != 1:
        raise ValueError(f"an image id must be a single number, got an array of shape {a.shape}")
    return int(a.reshape(()).item())
