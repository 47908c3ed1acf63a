"""ImageNet classification with the paper's recipe: class-folder data and transforms, label smoothing,
top-1/top-5 evaluation, a tiny synthetic dataset (``synthetic.make_shapes_dataset``), and the
training / evaluation / benchmark modes of ``tools/train_cls.py``.

Checkpoints written here carry ``"meta"`` (architecture, input format, mean/std) and load directly as
MODEL.WEIGHTS of the detection configs.
"""

from .data import (
    CorruptDatasetError,
    DatasetMissingError,
    ImageFolderDataset,
    ImagePreprocessing,
    Normalizer,
    ResumableSampler,
    build_dataset,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    build_train_transform,
    dataset_root,
)
from .evaluation import evaluate_classifier, topk_correct
from .loss import label_smoothing_cross_entropy
from .train import (
    ClassificationLoss,
    accuracy_table,
    argument_parser,
    benchmark_classifier,
    build_classifier,
    checkpoint_meta,
    list_classification_configs,
    load_classification_config,
    main,
)

__all__ = [
    "ClassificationLoss",
    "CorruptDatasetError",
    "DatasetMissingError",
    "ImageFolderDataset",
    "ImagePreprocessing",
    "Normalizer",
    "ResumableSampler",
    "accuracy_table",
    "argument_parser",
    "benchmark_classifier",
    "build_classifier",
    "build_dataset",
    "build_test_loader",
    "build_test_transform",
    "build_train_loader",
    "build_train_transform",
    "checkpoint_meta",
    "dataset_root",
    "evaluate_classifier",
    "label_smoothing_cross_entropy",
    "list_classification_configs",
    "load_classification_config",
    "main",
    "topk_correct",
]
