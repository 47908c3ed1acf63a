"""Drawing detections on images with OpenCV: one color per class, labels with class name and score."""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np


def class_color(class_index: int) -> Tuple[int, int, int]:
    """A stable, well-separated BGR color for a class (golden-ratio hue steps)."""
    hue = (class_index * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(blue * 255), int(green * 255), int(red * 255)


def draw_detections(image_bgr: np.ndarray, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                    class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.0) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3 uint8) with the boxes (XYXY pixels) above ``score_threshold`` drawn;
    ``labels`` are contiguous class indices (0..K-1) into ``class_names``."""
    canvas = np.ascontiguousarray(image_bgr).copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    font_scale = max(0.35, min(canvas.shape[:2]) / 1000)
    for box, label, score in sorted(zip(boxes, labels, scores), key=lambda item: item[2]):
        if score < score_threshold:
            continue
        label = int(label)
        color = class_color(label)
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness, cv2.LINE_AA)
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Above the box, moved inside the image where it would be cut off at an edge.
        top = max(y0 - height - baseline - 2, 0)
        left = max(min(x0, canvas.shape[1] - width - 2), 0)
        cv2.rectangle(canvas, (left, top), (left + width + 2, top + height + baseline + 2), color, cv2.FILLED)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(canvas, text, (left + 1, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color, 1,
                    cv2.LINE_AA)
    return canvas
