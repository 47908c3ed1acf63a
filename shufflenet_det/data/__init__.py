"""Detection data: dataset catalog (COCO names and layout), COCO loading with validation, a synthetic
dataset, the dataset mapper, samplers and loaders. See docs/data.md. The names imported here are the API."""

from .build import TestLoader, TrainLoader, build_detection_test_loader, build_detection_train_loader, get_detection_dataset_dicts
from .builtin import COCO_SPLITS, SYNTHETIC_SPLITS, datasets_root, register_builtin_datasets
from .catalog import DatasetCatalog, DatasetError, DatasetNotFoundError, Metadata, MetadataCatalog, UnknownDatasetError
from .coco import (BOX_MODE_XYWH_ABS, BOX_MODE_XYXY_ABS, COCO_CATEGORIES, COCO_THING_CLASSES, add_register_coco_argument,
                   load_coco_json, register_coco_datasets, register_coco_instances)
from .mapper import DatasetMapper, ImageReadError, read_image
from .samplers import InferenceSampler, TrainingSampler, aspect_ratio_group, batch_stream
from .synthetic import SYNTHETIC_CLASSES, SyntheticParams, ensure_synthetic_dataset, generate_synthetic_coco, verify_synthetic_dataset

register_builtin_datasets()
