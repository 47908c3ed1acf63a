"""Dataset dict -> model input: read the image, flip it in training, turn annotations into targets."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import cv2
import numpy as np
import torch

from .coco import BOX_MODE_XYWH_ABS, BOX_MODE_XYXY_ABS

_FORMATS = ("BGR", "RGB")
_FLIPS = ("horizontal", "vertical", "none")


class ImageReadError(RuntimeError):
    """An image file that cannot be used: missing, not decodable, or not the size the dataset says."""

    def __init__(self, file_name: str, reason: str) -> None:
        super().__init__(file_name, reason)  # the arguments, so that it pickles (loader workers send it)
        self.file_name = file_name
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot use image {self.file_name}: {self.reason}"


def read_image(file_name: str, image_format: str = "BGR") -> np.ndarray:
    """An HxWx3 uint8 array in ``image_format`` channel order; raises :class:`ImageReadError`."""
    if image_format not in _FORMATS:
        raise ValueError(f"image format must be one of {_FORMATS}, got '{image_format}'")
    if not os.path.isfile(file_name):
        raise ImageReadError(file_name, "file not found")
    # IMREAD_COLOR applies the EXIF orientation, as COCO's annotations expect.
    image = cv2.imread(file_name, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(file_name, "OpenCV cannot decode it (corrupt or not an image)")
    return image[:, :, ::-1] if image_format == "RGB" else image


class DatasetMapper:
    """Dataset dict -> batch dict of docs/data.md (INPUT.FORMAT, INPUT.RANDOM_FLIP unless given as keywords).
    Flips draw from ``generator`` when set (the loaders set one per image), else from torch's global RNG."""

    def __init__(self, cfg: Any = None, is_train: bool = True, *, image_format: Optional[str] = None,
                 random_flip: Optional[str] = None) -> None:
        if image_format is None:
            image_format = cfg.INPUT.FORMAT if cfg is not None else "BGR"
        if random_flip is None:
            random_flip = cfg.INPUT.RANDOM_FLIP if cfg is not None else "horizontal"
        if image_format not in _FORMATS:
            raise ValueError(f"INPUT.FORMAT must be one of {_FORMATS}, got '{image_format}'")
        if random_flip not in _FLIPS:
            raise ValueError(f"INPUT.RANDOM_FLIP must be one of {_FLIPS}, got '{random_flip}'")
        self.is_train = is_train
        self.image_format = image_format
        self.random_flip = random_flip if is_train else "none"
        self.generator: Optional[torch.Generator] = None

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        file_name = dataset_dict["file_name"]
        image = read_image(file_name, self.image_format)
        height, width = image.shape[:2]
        expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
        if (height, width) != expected:
            raise ImageReadError(
                file_name, f"its size is {width}x{height} but the dataset says {expected[1]}x{expected[0]}"
            )
        flip = self.random_flip != "none" and torch.rand((), generator=self.generator).item() < 0.5
        if flip:
            image = image[:, ::-1] if self.random_flip == "horizontal" else image[::-1]
        result = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "image_id": dataset_dict["image_id"],
            "file_name": file_name,
        }
        if not self.is_train:
            return result
        kept = [ann for ann in dataset_dict.get("annotations", []) if not ann.get("iscrowd", 0)]
        boxes = torch.tensor([ann["bbox"] for ann in kept], dtype=torch.float32).reshape(-1, 4)
        modes = [ann.get("bbox_mode", BOX_MODE_XYWH_ABS) for ann in kept]
        unknown = set(modes) - {BOX_MODE_XYWH_ABS, BOX_MODE_XYXY_ABS}
        if unknown:
            raise ValueError(f"bbox_mode {sorted(unknown)} not supported; use 0 (XYXY_ABS) or 1 (XYWH_ABS)")
        xywh = torch.tensor([mode == BOX_MODE_XYWH_ABS for mode in modes], dtype=torch.bool)
        boxes[xywh, 2:] += boxes[xywh, :2]
        if flip and self.random_flip == "horizontal":
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        elif flip:
            boxes[:, [1, 3]] = height - boxes[:, [3, 1]]
        labels = torch.tensor([ann["category_id"] for ann in kept], dtype=torch.int64)
        result["instances"] = {"boxes": boxes, "labels": labels}
        return result
