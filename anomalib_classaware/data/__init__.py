"""Multi-class datamodules: every item and batch carries ``category`` and ``category_id``."""

from anomalib_classaware._registry import expose_datamodules
from anomalib_classaware.data.benchmarks import MultiClassMVTecAD, MultiClassVisa
from anomalib_classaware.data.dataclasses import MultiClassImageBatch, MultiClassImageItem
from anomalib_classaware.data.dataset import MultiClassDataset, MultiClassSyntheticDataset
from anomalib_classaware.data.demo import MultiClassDemo
from anomalib_classaware.data.multiclass import MultiClassDataModule, MultiClassFolder
from anomalib_classaware.data.sampler import ClassBalancedBatchSampler
from anomalib_classaware.data.samples import CategoryIndex

__all__ = [
    "CategoryIndex",
    "ClassBalancedBatchSampler",
    "MultiClassDataModule",
    "MultiClassDataset",
    "MultiClassDemo",
    "MultiClassFolder",
    "MultiClassImageBatch",
    "MultiClassImageItem",
    "MultiClassMVTecAD",
    "MultiClassSyntheticDataset",
    "MultiClassVisa",
]

expose_datamodules([MultiClassDemo, MultiClassFolder, MultiClassMVTecAD, MultiClassVisa])
