"""Data for prompt-learning runs: CoOp-layout datasets, few-shot, base/novel, preprocessing.

    from textrefiner.data import ImageDataset, load_dataset, transforms_from_processor

    data = load_dataset("eurosat", "~/data", shots=16, seed=1, subsample="base")
    train_set = ImageDataset(data.train, transforms_from_processor(processor, train=True), seed=1)
    test_set = ImageDataset(data.test, transforms_from_processor(processor, train=False))
"""

from .datasets import BASE_TO_NOVEL, CROSS_DOMAIN, DATASETS, MINI, DatasetInfo, get_dataset_info
from .decoded import DecodedImageDataset
from .image_dataset import ImageDataset
from .item import Item, classnames_of, prompt_classname
from .load import DatasetSplits, load_dataset, unlabeled_items
from .sampling import few_shot
from .splits import base_novel_labels, split_per_class, subsample_classes
from .synthetic import make_fake_dataset, make_fake_image_folder
from .transforms import EvalTransform, TrainTransform, load_image, transforms_from_processor

__all__ = [
    "BASE_TO_NOVEL",
    "CROSS_DOMAIN",
    "DATASETS",
    "DatasetInfo",
    "DatasetSplits",
    "DecodedImageDataset",
    "EvalTransform",
    "ImageDataset",
    "MINI",
    "Item",
    "TrainTransform",
    "base_novel_labels",
    "classnames_of",
    "few_shot",
    "get_dataset_info",
    "load_dataset",
    "load_image",
    "make_fake_dataset",
    "make_fake_image_folder",
    "prompt_classname",
    "split_per_class",
    "subsample_classes",
    "transforms_from_processor",
    "unlabeled_items",
]
