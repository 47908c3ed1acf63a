"""ImageNet classification with the paper's recipe: what ``tools/train_cls.py`` runs. Checkpoints carry
``"meta"`` (architecture, input format, mean/std) and load as MODEL.WEIGHTS of the detection configs."""

from .data import (  # noqa: F401
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
from .evaluation import evaluate_classifier, label_smoothing_cross_entropy, topk_correct  # noqa: F401
from .train import (  # noqa: F401
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
