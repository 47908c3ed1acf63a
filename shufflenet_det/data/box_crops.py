"""A detection dataset's boxes as a classification dataset (the paper's ImageNet pretraining in miniature):
each non-crowd box, with some context, becomes an image of its class, and windows that overlap no box
become "background", in the class-folder layout ``tools/train_cls.py`` reads (``ROOT/<split>/<class>/*.jpg``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

from .catalog import DatasetCatalog, DatasetError, MetadataCatalog
from .mapper import read_image

logger = logging.getLogger(__name__)

BACKGROUND = "background"
# Boxes this small (in pixels, either side) carry too little to classify.
MIN_BOX_SIDE = 6


def _background_windows(
    rng: np.random.Generator, boxes: np.ndarray, sides: Sequence[float], width: int, height: int, count: int
) -> List[Tuple[int, int, int, int]]:
    """Up to ``count`` square windows, sized like the image's objects, that cover under 10% of any box."""
    areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
    windows: List[Tuple[int, int, int, int]] = []
    for _ in range(count * 20):
        if len(windows) == count:
            break
        side = float(rng.choice(sides)) if len(sides) else rng.uniform(16, 96)
        side = min(side, width, height)
        x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
        window = np.array([x0, y0, x0 + side, y0 + side])
        cover_w = np.clip(np.minimum(window[2], boxes[:, 2]) - np.maximum(window[0], boxes[:, 0]), 0, None)
        cover_h = np.clip(np.minimum(window[3], boxes[:, 3]) - np.maximum(window[1], boxes[:, 1]), 0, None)
        if not len(boxes) or (cover_w * cover_h / areas).max() < 0.1:
            windows.append(tuple(int(v) for v in window.round()))
    return windows


def write_box_crops(dataset_names: Dict[str, str], root: Union[str, os.PathLike], image_size: int = 64,
                    context: float = 1.3, background_per_image: int = 1, seed: int = 0) -> Path:
    """Write ``root/<split>/<class>/*.jpg`` (``image_size`` squares) for ``{split: detection dataset name}``
    and return ``root``; built under a temporary name and renamed when complete. An existing ``root`` is
    reused as it is (delete it to regenerate)."""
    root = Path(root)
    if root.exists():
        logger.info("Box crops already at %s (delete the folder to regenerate)", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for split, name in dataset_names.items():
            counts = _write_split(staging / split, name, image_size, context, background_per_image, seed)
            logger.info("Box crops of %s -> %s/%s: %s", name, root, split, ", ".join(f"{c} {n}" for c, n in counts.items()))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _write_split(
    folder: Path, dataset_name: str, image_size: int, context: float, background_per_image: int, seed: int
) -> Dict[str, int]:
    records = DatasetCatalog.get(dataset_name)
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")  # set by loading the records
    if not classes:
        raise DatasetError(f"dataset '{dataset_name}' has no thing_classes: cannot name its box crops")
    if BACKGROUND in classes:
        raise DatasetError(f"dataset '{dataset_name}' has a class named '{BACKGROUND}', the name box crops give to empty windows")
    rng = np.random.default_rng(seed)
    counts = {name: 0 for name in list(classes) + [BACKGROUND]}
    for name in counts:
        (folder / name).mkdir(parents=True)
    for record in records:
        image = read_image(record["file_name"], "BGR")
        height, width = image.shape[:2]
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        sides = [max(b[2] - b[0], b[3] - b[1]) * context for b in boxes]
        crops = []
        for index, (annotation, box, side) in enumerate(zip(annotations, boxes, sides)):
            if min(box[2] - box[0], box[3] - box[1]) >= MIN_BOX_SIDE:  # a square of `side` around it, clipped
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
                window = (x0, y0, int(min(width, np.ceil(cx + side / 2))), int(min(height, np.ceil(cy + side / 2))))
                crops.append((classes[annotation["category_id"]], index, window))
        for index, window in enumerate(_background_windows(rng, boxes, sides, width, height, background_per_image)):
            crops.append((BACKGROUND, index, window))
        for class_name, index, (x0, y0, x1, y1) in crops:
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crop = cv2.resize(image[y0:y1, x0:x1], (image_size, image_size), interpolation=cv2.INTER_AREA)
            path = folder / class_name / f"{record['image_id']}_{index}.jpg"
            cv2.imwrite(str(path), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
            counts[class_name] += 1
    return counts
