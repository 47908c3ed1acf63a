"""Resize and normalize detector inputs with separate train and test sizes."""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform, but honoring INPUT.MIN/MAX_SIZE_TRAIN and _TEST and taking 0-255 integers.

    torchvision keeps one (min_size, max_size) pair for both modes; here ``train()`` / ``eval()``
    switch between the two pairs. In training a shorter side is drawn from ``min_size_train`` for
    each image (detectron2's "choice" sampling). ``pixel_mean`` / ``pixel_std`` are in the scale of
    the input (0-255) and its channel order; integer images are converted to float first.
    """

    def __init__(
        self,
        min_size_train: Sequence[int],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisible: int = 32,
    ) -> None:
        super().__init__(
            tuple(min_size_train), max_size_train, list(pixel_mean), list(pixel_std), size_divisible=size_divisible
        )
        self.train_sizes = (tuple(min_size_train), max_size_train)
        self.test_sizes = ((min_size_test,), max_size_test)

    def train(self, mode: bool = True) -> "DetectionTransform":
        self.min_size, self.max_size = self.train_sizes if mode else self.test_sizes
        return super().train(mode)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            image = image.float()
        return super().normalize(image)
