"""Builtin dataset names under ``$DETECTRON2_DATASETS`` (default ``./datasets``, registered on import; call
``register_builtin_datasets()`` after changing it), with what datasets/check_coco.py needs to check COCO."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .catalog import DatasetCatalog, DatasetNotFoundError, MetadataCatalog
from .coco import COCO_CATEGORIES, load_coco_json
from .synthetic import SYNTHETIC_CATEGORIES, ensure_synthetic_dataset

COCO_DOWNLOAD_PAGE = "https://cocodataset.org/#download"
_IMAGES_URL = "http://images.cocodataset.org/zips/"
_ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/"
# Detectron's (v1) 2014 minival / valminusminival split, the split the ShuffleNet paper tested on.
MINIVAL_2014_URL = "https://dl.fbaipublicfiles.com/detectron/coco/coco_annotations_minival.tgz"


@dataclass(frozen=True)
class CocoSplit:
    """One builtin COCO split: paths relative to the datasets root and the URLs of the archives holding them."""

    name: str
    image_dir: str
    json_file: str
    image_archive: str
    annotation_archive: str


_TRAINVAL_2017 = _ANNOTATIONS_URL + "annotations_trainval2017.zip"
_TRAINVAL_2014 = _ANNOTATIONS_URL + "annotations_trainval2014.zip"
COCO_SPLITS: Dict[str, CocoSplit] = {
    name: CocoSplit(name, f"coco/{images}", f"coco/annotations/{json_name}", f"{_IMAGES_URL}{images}.zip", archive)
    for name, images, json_name, archive in (
        ("coco_2017_train", "train2017", "instances_train2017.json", _TRAINVAL_2017),
        ("coco_2017_val", "val2017", "instances_val2017.json", _TRAINVAL_2017),
        ("coco_2017_test-dev", "test2017", "image_info_test-dev2017.json", _ANNOTATIONS_URL + "image_info_test2017.zip"),
        ("coco_2014_train", "train2014", "instances_train2014.json", _TRAINVAL_2014),
        ("coco_2014_val", "val2014", "instances_val2014.json", _TRAINVAL_2014),
        ("coco_2014_minival", "val2014", "instances_minival2014.json", MINIVAL_2014_URL),
        ("coco_2014_valminusminival", "val2014", "instances_valminusminival2014.json", MINIVAL_2014_URL),
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


def coco_missing(split: CocoSplit, root: str) -> List[str]:
    """A line saying what is missing and which archive provides it, for each of the split's two parts."""
    json_path = os.path.abspath(os.path.join(root, split.json_file))
    image_dir = os.path.abspath(os.path.join(root, split.image_dir))
    coco_dir = os.path.abspath(os.path.join(root, "coco"))
    missing = []
    if not os.path.isfile(json_path):
        missing.append(f"missing annotations {json_path}: download {split.annotation_archive} and unpack it in {coco_dir}")
    if not os.path.isdir(image_dir):
        missing.append(f"missing images {image_dir}/: download {split.image_archive} and unzip it in {coco_dir}")
    return missing


def _load_builtin_coco(split: CocoSplit, root: str) -> List[dict]:
    missing = coco_missing(split, root)
    if missing:
        raise DatasetNotFoundError(
            f"dataset '{split.name}' not found under $DETECTRON2_DATASETS (now {os.path.abspath(root)}; default "
            f"./datasets): {'; '.join(missing)}. COCO is at {COCO_DOWNLOAD_PAGE}; see datasets/README.md and check "
            "with `python datasets/check_coco.py`."
        )
    return load_coco_json(os.path.join(root, split.json_file), os.path.join(root, split.image_dir), split.name)


def _load_synthetic(name: str, root: str) -> List[dict]:
    synthetic_root = os.path.join(root, SYNTHETIC_DIRNAME)
    ensure_synthetic_dataset(synthetic_root)
    image_dir, json_file = SYNTHETIC_SPLITS[name]
    return load_coco_json(os.path.join(synthetic_root, json_file), os.path.join(synthetic_root, image_dir), name)


def register_builtin_datasets(root: Optional[str] = None) -> None:
    """(Re-)register the builtin COCO and synthetic names under ``root`` (default :func:`datasets_root`)."""
    root = datasets_root() if root is None else os.path.expanduser(root)
    for split in COCO_SPLITS.values():
        _register(split.name, lambda split=split: _load_builtin_coco(split, root), os.path.join(root, split.json_file),
                  os.path.join(root, split.image_dir), COCO_CATEGORIES)
    synthetic_root = os.path.join(root, SYNTHETIC_DIRNAME)
    for name, (image_dir, json_file) in SYNTHETIC_SPLITS.items():
        _register(name, lambda name=name: _load_synthetic(name, root), os.path.join(synthetic_root, json_file),
                  os.path.join(synthetic_root, image_dir), SYNTHETIC_CATEGORIES)


def _register(name: str, load: Callable[[], List[dict]], json_file: str, image_root: str,
              categories: Sequence[Tuple[int, str]]) -> None:
    """Replace ``name``'s entries; its classes are known before loading, from ``(dataset id, name)`` pairs."""
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco",
        thing_classes=[class_name for _, class_name in categories],
        thing_dataset_id_to_contiguous_id={cat_id: i for i, (cat_id, _) in enumerate(categories)},
    )
