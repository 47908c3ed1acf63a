"""Anchors with detectron2's geometry, so that both engines propose the same boxes."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator


class ExactAnchorGenerator(AnchorGenerator):
    """torchvision's generator with detectron2's cell anchors: exact, not rounded to whole pixels.

    The per-location order stays torchvision's (ratio-major; ``torchvision_to_d2_state_dict`` maps it).
    """

    def generate_anchors(self, scales: Sequence[int], aspect_ratios: Sequence[float],
                         dtype: torch.dtype = torch.float32, device: torch.device = torch.device("cpu")) -> torch.Tensor:
        corners = []
        for ratio in aspect_ratios:
            for size in scales:
                # detectron2's definition: area size**2, height / width = ratio.
                width = math.sqrt(float(size) ** 2 / float(ratio))
                height = float(ratio) * width
                corners.append([-width / 2, -height / 2, width / 2, height / 2])
        return torch.tensor(corners, dtype=dtype, device=device)
