"""Datasets: the shipped 8x8 digits, CIFAR-10, MNIST and Fashion-MNIST, read as untrusted files.

``datasets`` loads, splits and preprocesses them, ``download`` fetches them,
``formats`` reads their file formats within bounds (``pickle_subset``: CIFAR-10's
pickles without unpickling). Nothing here imports the model, the runs or the plots.
"""

from xpdl.data.datasets import DATASETS, apply_preprocessing, default_num_val, load_dataset, load_raw, prepare
from xpdl.data.formats import DatasetError

__all__ = [
    "DATASETS",
    "DatasetError",
    "apply_preprocessing",
    "default_num_val",
    "load_dataset",
    "load_raw",
    "prepare",
]
