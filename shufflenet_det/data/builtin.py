"""Builtin dataset names, laid out under ``$DETECTRON2_DATASETS`` (default ``./datasets``) as in detectron2.

``register_builtin_datasets()`` runs when ``shufflenet_det.data`` is imported. It reads the
environment variable at that moment; call it again (it replaces the builtin entries) after changing
``DETECTRON2_DATASETS`` in a running process. Registering touches no file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .catalog import DatasetCatalog, DatasetNotFoundError, MetadataCatalog
from .coco import coco_class_metadata, load_coco_json
from .synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset, synthetic_categories

COCO_DOWNLOAD_PAGE = "https://cocodataset.org/#download"
_IMAGES_URL = "http://images.cocodataset.org/zips/"
_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/"
# Detectron's (v1) 2014 minival / valminusminival split, the split the ShuffleNet paper tested on.
MINIVAL_2014_URL = "https://dl.fbaipublicfiles.com/detectron/coco/coco_annotations_minival.tgz"


@dataclass(frozen=True)
class CocoSplit:
    """One builtin COCO split: paths relative to the datasets root and the archives that provide them."""

    name: str
    image_dir: str
    json_file: str
    image_archive: str  # URL of the zip that unpacks to image_dir
    annotation_archive: str  # URL of the archive that unpacks to json_file


def _split(name: str, images: str, json_name: str, annotation_archive: str) -> CocoSplit:
    return CocoSplit(
        name=name,
        image_dir=f"coco/{images}",
        json_file=f"coco/annotations/{json_name}",
        image_archive=_IMAGES_URL + images + ".zip",
        annotation_archive=annotation_archive,
    )


_TRAINVAL_2017 = _ANNOTATIONS_URL + "annotations_trainval2017.zip"
_TRAINVAL_2014 = _ANNOTATIONS_URL + "annotations_trainval2014.zip"

COCO_SPLITS: Dict[str, CocoSplit] = {
    split.name: split
    for split in (
        _split("coco_2017_train", "train2017", "instances_train2017.json", _TRAINVAL_2017),
        _split("coco_2017_val", "val2017", "instances_val2017.json", _TRAINVAL_2017),
        _split("coco_2017_test-dev", "test2017", "image_info_test-dev2017.json", _ANNOTATIONS_URL + "image_info_test2017.zip"),
        _split("coco_2014_train", "train2014", "instances_train2014.json", _TRAINVAL_2014),
        _split("coco_2014_val", "val2014", "instances_val2014.json", _TRAINVAL_2014),
        _split("coco_2014_minival", "val2014", "instances_minival2014.json", MINIVAL_2014_URL),
        _split("coco_2014_valminusminival", "val2014", "instances_valminusminival2014.json", MINIVAL_2014_URL),
    )
}

# name -> (image folder, annotation file), relative to the synthetic dataset's folder.
SYNTHETIC_SPLITS: Dict[str, Tuple[str, str]] = {
    "synthetic_train": ("train", "annotations/instances_train.json"),
    "synthetic_val": ("val", "annotations/instances_val.json"),
}
SYNTHETIC_DIRNAME = "synthetic"


def datasets_root() -> str:
    """The folder holding the builtin datasets: ``$DETECTRON2_DATASETS`` or ``datasets`` (relative to the cwd)."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def coco_missing_message(split: CocoSplit, root: str) -> str:
    """What is missing for ``split`` under ``root`` and how to get it, in one paragraph."""
    json_path = os.path.abspath(os.path.join(root, split.json_file))
    image_path = os.path.abspath(os.path.join(root, split.image_dir))
    missing = [p for p in (json_path, image_path) if not os.path.exists(p)]
    coco_dir = os.path.abspath(os.path.join(root, "coco"))
    return (
        f"dataset '{split.name}' not found: looked for {' and '.join(missing) or json_path}. "
        f"The datasets root is $DETECTRON2_DATASETS (now {os.path.abspath(root)}; default ./datasets). "
        f"Get COCO from {COCO_DOWNLOAD_PAGE}: download {split.image_archive} and {split.annotation_archive} "
        f"and unpack both in {coco_dir} (giving {split.image_dir}/ and {split.json_file}); "
        "see datasets/README.md and check with `python datasets/check_coco.py`."
    )


def _load_builtin_coco(split: CocoSplit, root: str) -> List[dict]:
    json_file = os.path.join(root, split.json_file)
    image_root = os.path.join(root, split.image_dir)
    if not (os.path.isfile(json_file) and os.path.isdir(image_root)):
        raise DatasetNotFoundError(coco_missing_message(split, root))
    return load_coco_json(json_file, image_root, split.name)


def _load_synthetic(name: str, root: str) -> List[dict]:
    synthetic_root = os.path.join(root, SYNTHETIC_DIRNAME)
    ensure_synthetic_dataset(synthetic_root)
    image_dir, json_file = SYNTHETIC_SPLITS[name]
    return load_coco_json(os.path.join(synthetic_root, json_file), os.path.join(synthetic_root, image_dir), name)


def builtin_dataset_names() -> List[str]:
    return sorted(COCO_SPLITS) + sorted(SYNTHETIC_SPLITS)


def register_builtin_datasets(root: Optional[str] = None) -> None:
    """(Re-)register the builtin COCO and synthetic names under ``root`` (default :func:`datasets_root`)."""
    root = datasets_root() if root is None else os.path.expanduser(root)
    for name in builtin_dataset_names():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for split in COCO_SPLITS.values():
        DatasetCatalog.register(split.name, lambda split=split: _load_builtin_coco(split, root))
        MetadataCatalog.get(split.name).set(
            json_file=os.path.join(root, split.json_file),
            image_root=os.path.join(root, split.image_dir),
            evaluator_type="coco",
            **coco_class_metadata(),
        )
    for name, (image_dir, json_file) in SYNTHETIC_SPLITS.items():
        DatasetCatalog.register(name, lambda name=name: _load_synthetic(name, root))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, SYNTHETIC_DIRNAME, json_file),
            image_root=os.path.join(root, SYNTHETIC_DIRNAME, image_dir),
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_CLASSES),
            thing_dataset_id_to_contiguous_id={cat["id"]: i for i, cat in enumerate(synthetic_categories())},
        )
