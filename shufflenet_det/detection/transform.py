"""torchvision's detector transform with separate train and test sizes and an optional channel swap."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class DetectionTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose ``train()`` / ``eval()`` switch between a train and a test
    (min_size, max_size) pair (training draws a shorter side per image from ``min_size_train``, as
    detectron2's "choice" sampling). Integer images become float; ``reverse_channels`` swaps RGB <-> BGR
    before ``image_mean`` / ``image_std`` (input scale, backbone order) apply."""

    def __init__(
        self, min_size_train: Sequence[int], max_size_train: int, min_size_test: int, max_size_test: int,
        image_mean: Sequence[float], image_std: Sequence[float], reverse_channels: bool = False, **kwargs: Any,
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
            image = image[torch.tensor([2, 1, 0], device=image.device)]  # a gather, not flip(): any ONNX opset
        return super().normalize(image)
