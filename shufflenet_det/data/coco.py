"""COCO instances JSON -> detectron2 dataset dicts, with validation that never lets bad data pass silently.

Rules applied by :func:`load_coco_json` (each one logs what it did, with a count):

- boxes with zero/negative width or height, or not four finite numbers: dropped (count, an example id);
- boxes extending outside their image: clipped to it (count); boxes entirely outside: dropped;
- an annotation whose ``category_id`` is not in ``categories``: fatal (names both ids);
- an annotation whose ``image_id`` is not in ``images``: dropped with a warning (count, an example id);
- images whose file is missing under ``image_root``: skipped with a warning listing the first few;
  fatal when no image file is found at all (a wrong ``image_root`` is the likely cause);
- no images at all, duplicate image/annotation/category ids, or a file that is not a COCO instances
  JSON: fatal, with the file's path.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .catalog import DatasetCatalog, DatasetError, DatasetNotFoundError, MetadataCatalog

logger = logging.getLogger(__name__)

# detectron2's BoxMode values, so the dicts also work inside detectron2.
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

# The 80 COCO "thing" categories as (dataset id, name); ids have gaps (1..90).
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
COCO_THING_CLASSES: Tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)

_MAX_LISTED = 5


def coco_class_metadata() -> Dict[str, Any]:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` of COCO's 80 classes (no JSON needed)."""
    return {
        "thing_classes": list(COCO_THING_CLASSES),
        "thing_dataset_id_to_contiguous_id": {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)},
    }


def load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Read a COCO instances JSON into detectron2-format dataset dicts.

    Each dict: ``{"file_name": image_root/file_name, "height", "width", "image_id", "annotations":
    [{"bbox": [x, y, w, h] (absolute), "bbox_mode": 1 (XYWH_ABS), "category_id": contiguous 0..K-1
    (dataset ids in sorted order), "iscrowd": 0/1}]}``, images in increasing id order. With
    ``dataset_name``, its metadata gets ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``.
    See the module docstring for the validation rules. Raises :class:`DatasetError` (or
    :class:`DatasetNotFoundError` for missing files) with the file's path in the message.
    """
    label = dataset_name or json_file
    start = time.perf_counter()
    data = _read_coco_file(json_file)
    categories = _validate_categories(data["categories"], json_file)
    images = _validate_images(data["images"], json_file)
    if not images:
        raise DatasetError(f"dataset '{label}' has no images: the 'images' list of {os.path.abspath(json_file)} is empty")
    annotations = _validate_annotations(data.get("annotations") or [], json_file)

    coco_api = _index_with_pycocotools({**data, "annotations": annotations, "images": images})
    dataset_id_to_contiguous = {cat_id: i for i, cat_id in enumerate(sorted(categories))}
    thing_classes = [categories[cat_id] for cat_id in sorted(categories)]

    for ann in annotations:
        if ann["category_id"] not in dataset_id_to_contiguous:
            raise DatasetError(
                f"{os.path.abspath(json_file)}: annotation id {ann.get('id')} has category_id "
                f"{ann['category_id']!r}, which is not in 'categories' (ids: {sorted(categories)})"
            )

    image_ids = sorted(coco_api.imgs)
    known_images = set(image_ids)
    orphans = [ann for ann in annotations if ann.get("image_id") not in known_images]
    if orphans:
        logger.warning(
            "%s: dropped %d annotations whose image_id is not in 'images' (e.g. annotation id %s, image_id %s)",
            label, len(orphans), orphans[0].get("id"), orphans[0].get("image_id"),
        )

    present = _present_image_files(image_root, [coco_api.imgs[i]["file_name"] for i in image_ids], label)
    checks = _BoxChecks()
    dataset_dicts = []
    for image_id, file_present in zip(image_ids, present):
        if not file_present:
            continue
        image = coco_api.imgs[image_id]
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "height": image["height"],
            "width": image["width"],
            "image_id": image_id,
            "annotations": [],
        }
        for ann in coco_api.imgToAnns.get(image_id, []):
            bbox = checks.validated_box(ann, image["width"], image["height"])
            if bbox is None:
                continue
            record["annotations"].append(
                {
                    "bbox": bbox,
                    "bbox_mode": BOX_MODE_XYWH_ABS,
                    "category_id": dataset_id_to_contiguous[ann["category_id"]],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        dataset_dicts.append(record)
    checks.log(label)

    num_annotations = sum(len(d["annotations"]) for d in dataset_dicts)
    logger.info(
        "%s: loaded %d images with %d annotations in %d categories from %s in %.2f s",
        label, len(dataset_dicts), num_annotations, len(categories), json_file, time.perf_counter() - start,
    )
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=thing_classes, thing_dataset_id_to_contiguous_id=dataset_id_to_contiguous
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
    """Register a COCO-format dataset: its dicts load lazily from ``json_file`` when first asked for.

    Nothing is read from disk here. ``metadata`` (e.g. ``thing_classes``) is stored in advance; the
    JSON's categories must agree with it when the dataset is loaded.
    """
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
    if isinstance(data, list):
        raise DatasetError(
            f"{not_coco}: it holds a JSON list (a detection results file?); expected an object with "
            "'images', 'annotations' and 'categories'"
        )
    if not isinstance(data, dict):
        raise DatasetError(f"{not_coco}: it holds a JSON {type(data).__name__}, expected an object")
    missing = [key for key in ("images", "categories") if key not in data]
    if missing:
        raise DatasetError(f"{not_coco}: missing key(s) {missing} (found: {sorted(data)})")
    for key in ("images", "categories", "annotations"):
        if key in data and not isinstance(data[key], list):
            raise DatasetError(f"{not_coco}: '{key}' is a {type(data[key]).__name__}, expected a list")
    return data


def _validate_categories(categories: List[Any], json_file: str) -> Dict[int, str]:
    path = os.path.abspath(json_file)
    if not categories:
        raise DatasetError(f"{path}: 'categories' is empty; a detection dataset needs at least one category")
    by_id: Dict[int, str] = {}
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DatasetError(f"{path}: every category needs an integer 'id' and a string 'name', got {cat!r}")
        if cat["id"] in by_id:
            raise DatasetError(f"{path}: category id {cat['id']} appears more than once in 'categories'")
        by_id[cat["id"]] = cat["name"]
    return by_id


def _validate_images(images: List[Any], json_file: str) -> List[dict]:
    path = os.path.abspath(json_file)
    for image in images:
        if not isinstance(image, dict) or not all(key in image for key in ("id", "file_name", "height", "width")):
            raise DatasetError(f"{path}: every image needs 'id', 'file_name', 'height' and 'width', got {image!r}")
        size = (image["height"], image["width"])
        if not all(isinstance(v, int) and v > 0 for v in size):
            raise DatasetError(f"{path}: image id {image['id']} has height/width {size}; both must be positive integers")
    _check_unique_ids(images, "image", json_file)
    return images


def _validate_annotations(annotations: List[Any], json_file: str) -> List[dict]:
    for ann in annotations:
        if not isinstance(ann, dict) or not all(key in ann for key in ("id", "image_id", "category_id")):
            raise DatasetError(
                f"{os.path.abspath(json_file)}: every annotation needs 'id', 'image_id' and 'category_id', got {ann!r}"
            )
    _check_unique_ids(annotations, "annotation", json_file)
    return annotations


def _check_unique_ids(items: Sequence[dict], kind: str, json_file: str) -> None:
    counts = Counter(item.get("id") for item in items)
    repeated = [(item_id, n) for item_id, n in counts.items() if n > 1]
    if repeated:
        item_id, n = repeated[0]
        raise DatasetError(
            f"{os.path.abspath(json_file)}: {kind} ids are not unique ({len(repeated)} repeated, "
            f"e.g. id {item_id!r} appears {n} times)"
        )


def _index_with_pycocotools(data: Dict[str, Any]):
    from pycocotools.coco import COCO

    coco_api = COCO()
    coco_api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_api.createIndex()
    return coco_api


def _present_image_files(image_root: str, file_names: List[str], label: str) -> List[bool]:
    """Which image files exist. One directory listing instead of a stat per image where possible."""
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


class _BoxChecks:
    """Validates boxes one at a time and remembers what it dropped or clipped, for one log line each."""

    def __init__(self) -> None:
        self.degenerate: List[Any] = []  # annotation ids
        self.outside: List[Any] = []
        self.clipped: List[Any] = []

    def validated_box(self, ann: dict, width: int, height: int) -> Optional[List[float]]:
        """The box clipped to the image as [x, y, w, h], or None when it must be dropped."""
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            self.degenerate.append(ann.get("id"))
            return None
        x0, y0, w, h = (float(v) for v in bbox)
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x0 + w, float(width)), min(y0 + h, float(height))
        if cx1 <= cx0 or cy1 <= cy0:
            self.outside.append(ann.get("id"))
            return None
        if (cx0, cy0, cx1, cy1) != (x0, y0, x0 + w, y0 + h):
            self.clipped.append(ann.get("id"))
        return [cx0, cy0, cx1 - cx0, cy1 - cy0]

    def log(self, label: str) -> None:
        if self.degenerate:
            logger.warning(
                "%s: dropped %d annotations whose box has zero/negative width or height or is malformed "
                "(e.g. annotation id %s)", label, len(self.degenerate), self.degenerate[0],
            )
        if self.outside:
            logger.warning(
                "%s: dropped %d annotations whose box lies entirely outside its image (e.g. annotation id %s)",
                label, len(self.outside), self.outside[0],
            )
        if self.clipped:
            logger.info(
                "%s: clipped %d boxes that extended outside their image (e.g. annotation id %s)",
                label, len(self.clipped), self.clipped[0],
            )
