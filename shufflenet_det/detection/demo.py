"""Run a detector on image files (and videos) and draw its boxes: the library behind ``tools/demo.py``."""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..config.loading import ConfigError
from ..data import COCO_THING_CLASSES, MetadataCatalog, UnknownDatasetError
from ..utils.io import OutputPathError, check_output_file
from ..utils.visualizer import draw_detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DemoReport:
    written: List[Path]
    failed: List[str]


class DemoInputError(ValueError):
    """Inputs or outputs the demo cannot use."""


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files as given, folders' image files and glob matches (sorted); a folder or pattern without images
    is an error (a missing plain file is reported when read)."""
    files: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matched = sorted(str(p) for p in Path(pattern).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(char in pattern for char in "*?["):
            matched = sorted(glob.glob(pattern))
        else:
            matched = [pattern]
        if not matched:
            raise DemoInputError(f"--input {pattern}: no image files ({', '.join(IMAGE_SUFFIXES)}) there")
        files.extend(matched)
    return files


def output_path(output_dir: str, input_file: str, suffix: str = ".jpg") -> Path:
    return Path(output_dir) / f"{Path(input_file).stem}{suffix}"


def check_outputs(inputs: Sequence[str], output_dir: str, suffix: str = ".jpg", overwrite: bool = False) -> None:
    """Refuse, before any work, outputs that cannot be written, would replace a file (unless ``overwrite``)
    or an input, or that two inputs would share."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DemoInputError(f"--output {output_dir} is a file, not a folder")
    claimed = {}
    for input_file in inputs:
        path = output_path(output_dir, input_file, suffix)
        if os.path.exists(input_file) and path.exists() and path.samefile(input_file):
            raise DemoInputError(f"the output for {input_file} would replace it: choose another --output folder")
        if path in claimed:
            raise DemoInputError(
                f"{claimed[path]} and {input_file} would both be drawn into {path}: run them separately"
            )
        claimed[path] = input_file
        try:
            check_output_file(path, overwrite)
        except OutputPathError as error:
            raise DemoInputError(str(error)) from None


def class_names_for(cfg: CfgNode) -> Optional[List[str]]:
    """The class names of DATASETS.TEST[0] (COCO's 80 when NUM_CLASSES is 80 and nothing is registered)."""
    for name in cfg.DATASETS.TEST[:1]:
        try:
            classes = MetadataCatalog.get(name).get("thing_classes")
        except UnknownDatasetError:
            classes = None
        if classes:
            return list(classes)
    return list(COCO_THING_CLASSES) if cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(COCO_THING_CLASSES) else None


def drawing_threshold(cfg: CfgNode, override: Optional[float] = None) -> float:
    """The score from which boxes are drawn: ``override`` (``--confidence-threshold``) or the config's."""
    value, source = (cfg.SHUFFLENET_DET.VIS_SCORE_THRESH, "SHUFFLENET_DET.VIS_SCORE_THRESH") if override is None \
        else (override, "--confidence-threshold")
    if not 0 <= value <= 1:
        raise ConfigError(f"{source} must be between 0 and 1 (a score), got {value}")
    return value


class Predictor:
    """Runs ``model`` on one BGR frame and draws the boxes scoring at least ``threshold``."""

    def __init__(self, model: nn.Module, input_format: str, class_names: Optional[Sequence[str]], threshold: float):
        self.model = model.eval()
        self.input_format = input_format
        self.class_names = class_names
        self.threshold = threshold
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def detect(self, image_bgr: np.ndarray) -> Dict[str, torch.Tensor]:
        """All of the model's detections on one BGR frame (boxes, scores, labels from 1), on the CPU."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(self.device)
        return {key: value.cpu() for key, value in self.model([tensor])[0].items()}

    def __call__(self, image_bgr: np.ndarray):
        output = self.detect(image_bgr)
        keep = output["scores"] >= self.threshold
        boxes, labels, scores = output["boxes"][keep], output["labels"][keep] - 1, output["scores"][keep]
        drawn = draw_detections(image_bgr, boxes.numpy(), labels.tolist(), scores.tolist(), self.class_names)
        return drawn, int(keep.sum())


def run_on_images(predictor: Predictor, files: Iterable[str], output_dir: str) -> DemoReport:
    """Annotate each image into ``output_dir``; unreadable files are reported and skipped."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    report = DemoReport([], [])
    for file_name in files:
        image = cv2.imread(file_name, cv2.IMREAD_COLOR) if os.path.isfile(file_name) else None
        if image is None:
            reason = "not found" if not os.path.exists(file_name) else "not an image OpenCV can read"
            logger.error("%s: %s, skipped", file_name, reason)
            report.failed.append(file_name)
            continue
        start = time.perf_counter()
        drawn, count = predictor(image)
        seconds = time.perf_counter() - start
        path = output_path(output_dir, file_name)
        cv2.imwrite(str(path), drawn)
        report.written.append(path)
        logger.info("%s: %d detection(s) in %.3f s -> %s", file_name, count, seconds, path)
    return report


def run_on_video(predictor: Predictor, video_file: str, output_dir: str) -> DemoReport:
    """Annotate every frame of a video into ``output_dir/<name>.mp4``."""
    capture = cv2.VideoCapture(video_file)
    if not capture.isOpened():
        logger.error("%s: not a video OpenCV can read, skipped", video_file)
        return DemoReport([], [video_file])
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    path = output_path(output_dir, video_file, ".mp4")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    frames = 0
    start = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        drawn, _ = predictor(frame)
        if writer is None:
            height, width = drawn.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        writer.write(drawn)
        frames += 1
    capture.release()
    if writer is None:
        logger.error("%s: no frame could be read, skipped", video_file)
        return DemoReport([], [video_file])
    writer.release()
    logger.info("%s: %d frames in %.1f s -> %s", video_file, frames, time.perf_counter() - start, path)
    return DemoReport([path], [])
