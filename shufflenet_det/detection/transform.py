"""Resize and normalize detector inputs with separate train and test sizes."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's transform, but honoring separate train and test sizes, taking integer images and
    optionally reversing the channel order (RGB <-> BGR).

    torchvision keeps one (min_size, max_size) pair for both modes; here ``train()`` / ``eval()``
    switch between the two pairs. In training a shorter side is drawn from ``min_size_train`` for
    each image (detectron2's "choice" sampling). Images are converted to float, their channels
    reversed when ``reverse_channels`` (inputs in RGB for a backbone trained on BGR, or the other way),
    then normalized with ``image_mean`` / ``image_std``: in the input's scale, the backbone's channel
    order. Other keyword arguments (``size_divisible``, ``fixed_size``, ``_skip_resize``) are torchvision's.
    """

    def __init__(
        self,
        min_size_train: Sequence[int],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        reverse_channels: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(tuple(min_size_train), max_size_train, list(image_mean), list(image_std), **kwargs)
        self.train_sizes = (tuple(min_size_train), max_size_train)
        self.test_sizes = ((min_size_test,), max_size_test)
        self.reverse_channels = reverse_channels

    def train(self, mode: bool = True) -> "DetectionTransform":
        self.min_size, self.max_size = self.train_sizes if mode else self.test_sizes
        return super().train(mode)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            image = image.float()
        if self.reverse_channels:
            # A gather, not flip(): it exports to every ONNX opset.
            image = image[torch.tensor([2, 1, 0], device=image.device)]
        return super().normalize(image)
