"""COCO instances JSON -> detectron2 dataset dicts, validated so that bad data never passes silently
(the rules are in docs/data.md: bad boxes dropped or clipped with a count, bad ids or files fatal)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from .catalog import DatasetCatalog, DatasetError, DatasetNotFoundError, MetadataCatalog

logger = logging.getLogger(__name__)

# detectron2's BoxMode values, so the dicts also work inside detectron2.
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

# The 80 COCO "thing" categories as (dataset id, name); ids have gaps (1..90). torchvision lists them by
# id with "N/A" in the gaps.
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = tuple(
    (cat_id, name)
    for cat_id, name in enumerate(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    if name not in ("__background__", "N/A")
)
COCO_THING_CLASSES: Tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

_MAX_LISTED = 5


def load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """A COCO instances JSON as detectron2 dataset dicts in image id order; sets ``dataset_name``'s
    ``thing_classes`` and id map. Bad data is a :class:`DatasetError` naming the file (docs/data.md)."""
    label = dataset_name or json_file
    start = time.perf_counter()
    path = os.path.abspath(json_file)
    data = _read_coco_file(json_file)
    if not data["categories"]:
        raise DatasetError(f"{path}: 'categories' is empty; a detection dataset needs at least one category")
    _check_items(data["categories"], "category", "an integer 'id' and a string 'name'", path,
                 lambda cat: isinstance(cat.get("id"), int) and isinstance(cat.get("name"), str))
    _check_items(data["images"], "image", "'id', 'file_name' and positive integer 'height' and 'width'", path,
                 lambda image: "id" in image and "file_name" in image
                 and all(isinstance(image.get(key), int) and image[key] > 0 for key in ("height", "width")))
    if not data["images"]:
        raise DatasetError(f"dataset '{label}' has no images: the 'images' list of {path} is empty")
    annotations = data.get("annotations") or []
    _check_items(annotations, "annotation", "'id', 'image_id' and 'category_id'", path,
                 lambda ann: all(key in ann for key in ("id", "image_id", "category_id")))

    categories = {cat["id"]: cat["name"] for cat in data["categories"]}
    dataset_id_to_contiguous = {cat_id: i for i, cat_id in enumerate(sorted(categories))}
    images = {image["id"]: image for image in data["images"]}
    anns_by_image: Dict[Any, List[dict]] = defaultdict(list)
    orphans = []
    for ann in annotations:
        if ann["category_id"] not in categories:
            raise DatasetError(
                f"{path}: annotation id {ann['id']} has category_id {ann['category_id']!r}, which is not in "
                f"'categories' (ids: {sorted(categories)})"
            )
        (anns_by_image[ann["image_id"]] if ann["image_id"] in images else orphans).append(ann)
    if orphans:
        logger.warning(
            "%s: dropped %d annotations whose image_id is not in 'images' (e.g. annotation id %s, image_id %s)",
            label, len(orphans), orphans[0]["id"], orphans[0]["image_id"],
        )

    image_ids = sorted(images)
    present = _present_image_files(image_root, [images[i]["file_name"] for i in image_ids], label)
    box_problems: Dict[str, List[Any]] = defaultdict(list)  # problem -> annotation ids
    dataset_dicts = []
    for image_id in itertools.compress(image_ids, present):
        image = images[image_id]
        record_annotations = []
        for ann in anns_by_image[image_id]:
            bbox, problem = _clipped_box(ann.get("bbox"), image["width"], image["height"])
            if problem:
                box_problems[problem].append(ann["id"])
            if bbox is not None:
                category = dataset_id_to_contiguous[ann["category_id"]]
                record_annotations.append(
                    {"bbox": bbox, "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": category, "iscrowd": int(ann.get("iscrowd", 0))}
                )
        dataset_dicts.append(
            {"file_name": os.path.join(image_root, image["file_name"]), "height": image["height"],
             "width": image["width"], "image_id": image_id, "annotations": record_annotations}
        )
    for problem, (level, verb, what) in _BOX_PROBLEMS.items():
        ids = box_problems[problem]
        if ids:
            logger.log(level, "%s: %s %d %s (e.g. annotation id %s)", label, verb, len(ids), what, ids[0])
    logger.info(
        "%s: loaded %d images with %d annotations in %d categories from %s in %.2f s",
        label, len(dataset_dicts), sum(len(d["annotations"]) for d in dataset_dicts), len(categories), json_file,
        time.perf_counter() - start,
    )
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=[categories[cat_id] for cat_id in sorted(categories)],
            thing_dataset_id_to_contiguous_id=dataset_id_to_contiguous,
        )
    return dataset_dicts


def add_register_coco_argument(parser: Any) -> None:
    """``--register-coco NAME JSON IMAGE_ROOT`` (repeatable) on an ``argparse`` parser; see ``register_coco_datasets``."""
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME for DATASETS.TRAIN/TEST or CLASSIFICATION.BOX_CROPS_OF (repeatable)",
    )


def register_coco_datasets(entries: Optional[Sequence[Sequence[str]]]) -> None:
    """Register each ``(name, json_file, image_root)`` of ``--register-coco``; a taken name is a DatasetError."""
    for name, json_file, image_root in entries or ():
        if name in DatasetCatalog.list():
            raise DatasetError(f"--register-coco: the name '{name}' is taken by another dataset: choose another NAME")
        register_coco_instances(name, json_file, image_root)


def register_coco_instances(name: str, json_file: str, image_root: str, metadata: Optional[dict] = None) -> None:
    """Register a COCO-format dataset that loads when first asked for. ``metadata`` (e.g. ``thing_classes``)
    is stored now; the JSON's categories must agree with it."""
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {}))


def _read_coco_file(json_file: str) -> Dict[str, Any]:
    path = os.path.abspath(json_file)
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(f"annotation file not found: {path}")
    try:
        with open(json_file, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not a COCO instances file: it is not valid JSON ({error})") from None
    not_coco = f"{path} is not a COCO instances file"
    if not isinstance(data, dict):
        kind = "list (a detection results file?)" if isinstance(data, list) else type(data).__name__
        raise DatasetError(f"{not_coco}: it holds a JSON {kind}; expected an object with 'images', 'annotations' and 'categories'")
    missing = [key for key in ("images", "categories") if key not in data]
    if missing:
        raise DatasetError(f"{not_coco}: missing key(s) {missing} (found: {sorted(data)})")
    for key in ("images", "categories", "annotations"):
        if key in data and not isinstance(data[key], list):
            raise DatasetError(f"{not_coco}: '{key}' is a {type(data[key]).__name__}, expected a list")
    return data


def _check_items(items: List[Any], kind: str, needs: str, path: str, valid: Callable[[dict], bool]) -> None:
    """Every item is a dict that passes ``valid``, and no two have the same ``id``."""
    for item in items:
        if not isinstance(item, dict) or not valid(item):
            raise DatasetError(f"{path}: every {kind} needs {needs}, got {item!r}")
    repeated = [(item_id, n) for item_id, n in Counter(item["id"] for item in items).items() if n > 1]
    if repeated:
        raise DatasetError(
            f"{path}: {kind} ids are not unique ({len(repeated)} repeated, e.g. id {repeated[0][0]!r} appears "
            f"{repeated[0][1]} times)"
        )


def _present_image_files(image_root: str, file_names: List[str], label: str) -> List[bool]:
    """Which image files exist: one directory listing instead of a stat per image where possible."""
    if not os.path.isdir(image_root):
        raise DatasetNotFoundError(f"dataset '{label}': image folder not found: {os.path.abspath(image_root)}")
    listing = set(os.listdir(image_root))
    present = [
        (name in listing) if os.sep not in name and "/" not in name else os.path.isfile(os.path.join(image_root, name))
        for name in file_names
    ]
    missing = [name for name, ok in zip(file_names, present) if not ok]
    if len(missing) == len(file_names):
        raise DatasetNotFoundError(
            f"dataset '{label}': none of its {len(file_names)} image files is in {os.path.abspath(image_root)} "
            f"(e.g. {file_names[0]}); is the image folder right?"
        )
    if missing:
        logger.warning(
            "%s: skipping %d of %d images whose file is missing under %s: %s%s",
            label, len(missing), len(file_names), os.path.abspath(image_root),
            ", ".join(missing[:_MAX_LISTED]), " ..." if len(missing) > _MAX_LISTED else "",
        )
    return present


_BOX_PROBLEMS = {
    "malformed": (logging.WARNING, "dropped", "annotations whose box has zero/negative width or height or is malformed"),
    "outside": (logging.WARNING, "dropped", "annotations whose box lies entirely outside its image"),
    "clipped": (logging.INFO, "clipped", "boxes that extended outside their image"),
}


def _clipped_box(bbox: Any, width: int, height: int) -> Tuple[Optional[List[float]], Optional[str]]:
    """The box clipped to the image as [x, y, w, h] (None: drop it) and its problem (a ``_BOX_PROBLEMS`` key)."""
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        or bbox[2] <= 0
        or bbox[3] <= 0
    ):
        return None, "malformed"
    x0, y0, w, h = (float(v) for v in bbox)
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x0 + w, float(width)), min(y0 + h, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        return None, "outside"
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x0 + w, y0 + h)
    return [cx0, cy0, cx1 - cx0, cy1 - cy0], "clipped" if clipped else None
