"""ImageNet classification with the paper's recipe: what ``tools/train_cls.py`` runs. Checkpoints carry
``"meta"`` (architecture, input format, mean/std) and load as MODEL.WEIGHTS of the detection configs."""

from .data import CorruptDatasetError, DatasetMissingError, ImageFolderDataset, ImagePreprocessing  # noqa: F401
from .data import Normalizer, ResumableSampler, build_dataset, build_test_loader, build_test_transform  # noqa: F401
from .data import build_train_loader, build_train_transform, dataset_root  # noqa: F401
from .train import ClassificationLoss, accuracy_table, argument_parser, benchmark_classifier  # noqa: F401
from .train import build_classifier, checkpoint_meta, evaluate_classifier, label_smoothing_cross_entropy  # noqa: F401
from .train import list_classification_configs, load_classification_config, main, topk_correct  # noqa: F401
