"""COCO box evaluation with pycocotools, in the style of detectron2's ``COCOEvaluator``: predictions are kept per
image, gathered to rank 0, written as a COCO results file and scored on exactly the images processed."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..utils import distributed as comm
from ..utils.io import atomic_write
from ..utils.text_table import format_table
from .inference import DatasetEvaluator

logger = logging.getLogger("shufflenet_det.evaluation")

# The order of COCOeval.stats for boxes.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "results.json"


class COCOEvaluator(DatasetEvaluator):
    """Box AP on a COCO-format dataset, written to ``output_dir`` (if given) as ``coco_instances_results.json``
    and ``results.json``. ``contiguous_to_dataset_id`` maps detector label - 1 to category ids (default: the
    file's by increasing id); ``distributed`` gathers every rank's predictions to rank 0, which alone evaluates."""

    def __init__(self, json_file: str, output_dir: Optional[str] = None,
                 contiguous_to_dataset_id: Optional[Mapping[int, int]] = None,
                 class_names: Optional[Sequence[str]] = None, distributed: bool = True,
                 dataset_name: Optional[str] = None) -> None:
        self._json_file = os.fspath(json_file)
        self._output_dir = output_dir
        self._distributed = distributed
        self._dataset_name = dataset_name or os.path.splitext(os.path.basename(self._json_file))[0]
        self._coco_gt = load_coco_json(self._json_file)
        gt_category_ids = sorted(self._coco_gt.getCatIds())
        if contiguous_to_dataset_id is None:
            contiguous_to_dataset_id = dict(enumerate(gt_category_ids))
        to_dataset_id = {int(c): int(d) for c, d in sorted(contiguous_to_dataset_id.items())}
        if sorted(to_dataset_id) != list(range(len(to_dataset_id))):
            raise ValueError(f"contiguous class ids must be 0..K-1, got {sorted(to_dataset_id)}")
        unknown = sorted(set(to_dataset_id.values()) - set(gt_category_ids))
        if unknown:
            raise ValueError(f"category ids {unknown} are not categories of {self._json_file} (its ids: "
                             f"{gt_category_ids}); the dataset metadata does not match the annotation file")
        if len(set(to_dataset_id.values())) != len(to_dataset_id):
            raise ValueError(f"two contiguous class ids map to the same category of {self._json_file}: {to_dataset_id}")
        self._to_dataset_id = to_dataset_id
        if class_names is None:
            class_names = [category["name"] for category in self._coco_gt.loadCats(list(self._to_dataset_id.values()))]
        if len(class_names) != len(self._to_dataset_id):
            count = len(self._to_dataset_id)
            raise ValueError(f"{len(class_names)} class names for {count} mapped categories of {self._json_file}")
        self._class_names = list(class_names)
        self._predictions: Dict[int, List[dict]] = {}

    @classmethod
    def from_metadata(cls, metadata: Any, output_dir: Optional[str] = None, distributed: bool = True) -> COCOEvaluator:
        """An evaluator for ``MetadataCatalog.get(name)`` (ours or detectron2's): ``json_file``, ``thing_classes``
        and ``thing_dataset_id_to_contiguous_id``."""
        json_file = getattr(metadata, "json_file", None)
        if not json_file:
            name = getattr(metadata, "name", repr(metadata))
            raise ValueError(f"dataset metadata '{name}' has no json_file; COCO evaluation needs the annotation file")
        dataset_to_contiguous = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
        contiguous_to_dataset = None
        if dataset_to_contiguous is not None:
            contiguous_to_dataset = {int(c): int(d) for d, c in dataset_to_contiguous.items()}
            if len(contiguous_to_dataset) != len(dataset_to_contiguous):
                raise ValueError(f"thing_dataset_id_to_contiguous_id of {json_file} maps two categories to one id")
        return cls(json_file, output_dir, contiguous_to_dataset, getattr(metadata, "thing_classes", None), distributed,
                   getattr(metadata, "name", None))

    def reset(self) -> None:
        self._predictions = {}

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Take one batch of detector outputs (XYXY boxes, labels 1..K, scores) as COCO results."""
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(outputs)} detector outputs for a batch of {len(inputs)} images")
        for record, output in zip(inputs, outputs):
            image_id = int(record["image_id"])
            if image_id in self._predictions:
                raise ValueError(
                    f"image id {image_id} ({record.get('file_name', '?')}) was processed twice on rank "
                    f"{comm.get_rank()}; the test loader must yield every image once"
                )
            self._predictions[image_id] = self._to_coco_results(image_id, output)

    def _to_coco_results(self, image_id: int, output: Mapping[str, torch.Tensor]) -> List[dict]:
        boxes = output["boxes"].detach().float().cpu()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH
        results = []
        for box, label, score in zip(boxes.tolist(), labels, scores):
            dataset_id = self._to_dataset_id.get(int(label) - 1)
            if dataset_id is None:
                raise ValueError(f"detector label {label} on image {image_id} is outside 1..{len(self._to_dataset_id)} "
                                 "(0 is background and never an output)")
            results.append({"image_id": image_id, "category_id": dataset_id, "bbox": box, "score": score})
        return results

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        """Box metrics ``{"bbox": {...}}`` in percent on rank 0 (``{}`` on the other ranks)."""
        predictions = self._predictions
        if self._distributed:
            predictions = _merge_ranks(comm.all_gather(self._predictions))
            if not comm.is_main_process():
                return OrderedDict()
        if not predictions:
            logger.warning("COCOEvaluator received no images; nothing to evaluate for %s", self._dataset_name)
            return OrderedDict()

        image_ids = sorted(predictions)
        results = [result for image_id in image_ids for result in predictions[image_id]]
        num_dataset_images = len(self._coco_gt.getImgIds())
        if len(image_ids) < num_dataset_images:
            logger.warning("Evaluating %s on the %d of its %d images that were processed (a partial run)",
                           self._dataset_name, len(image_ids), num_dataset_images)
        else:
            logger.info("Evaluating %s on all %d images", self._dataset_name, num_dataset_images)
        if self._output_dir:
            results_path = os.path.join(self._output_dir, RESULTS_FILE)
            _write_json(results_path, results)
            logger.info("Wrote %d detections to %s", len(results), results_path)

        class_names = dict(zip(self._to_dataset_id.values(), self._class_names))
        source = f"the detections on {self._dataset_name}"
        metrics = evaluate_predictions(self._coco_gt, results, image_ids, class_names, source=source)
        log_metrics(metrics, self._dataset_name)
        if self._output_dir:
            # JSON has no NaN: metrics that do not exist are written as null.
            bbox = {name: None if math.isnan(value) else value for name, value in metrics.items()}
            _write_json(os.path.join(self._output_dir, METRICS_FILE), {
                "dataset": self._dataset_name, "json_file": self._json_file, "num_images": len(image_ids),
                "num_images_in_dataset": num_dataset_images, "bbox": bbox,
            })
        return OrderedDict(bbox=metrics)


def load_coco_json(json_file: str) -> COCO:
    """pycocotools' ``COCO`` for an annotation file, quietly, with a one-line error for a bad file."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{json_file} is not valid JSON: {error}") from None
    except (KeyError, TypeError, AssertionError) as error:
        raise ValueError(f"{json_file} is not a COCO annotation file ({type(error).__name__}: {error})") from None


def evaluate_coco_results(json_file: str, results_file: str,
                          image_ids: Optional[Iterable[int]] = None) -> Dict[str, float]:
    """Box metrics (percent) of a COCO results file on ``image_ids`` (default: all) of an annotation file."""
    coco_gt = load_coco_json(json_file)
    try:
        with open(results_file, "r", encoding="utf-8") as handle:
            results = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"detections file not found: {results_file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{results_file} is not valid JSON: {error}") from None
    if not isinstance(results, list):
        raise ValueError(f"{results_file} is not a COCO results file (expected a list of detections)")
    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    class_names = {category["id"]: category["name"] for category in coco_gt.loadCats(coco_gt.getCatIds())}
    return evaluate_predictions(coco_gt, results, ids, class_names, source=results_file)


def evaluate_predictions(coco_gt: COCO, results: List[dict], image_ids: Sequence[int], class_names: Mapping[int, str],
                         source: str = "detections") -> Dict[str, float]:
    """COCOeval box metrics on ``image_ids``, in percent: the 12 standard numbers and ``AP-<class name>`` (names by
    category id). Metrics without ground truth in these images (e.g. APs without small objects) are NaN."""
    _check_results(coco_gt, results, image_ids, source)
    if not results:
        logger.warning("No detections in %s: every AP is 0", source)
    with contextlib.redirect_stdout(io.StringIO()) as captured:
        if results:  # loadRes adds fields (area, id, segmentation) to the dicts it gets: give it copies
            coco_dt = coco_gt.loadRes([dict(result) for result in results])
        else:  # loadRes cannot take an empty list; no detections score 0 AP wherever there is ground truth
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.imgIds = list(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval summary:\n%s", captured.getvalue())

    metrics = {name: float(value * 100) if value >= 0 else math.nan
               for name, value in zip(COCO_METRICS, coco_eval.stats)}
    # precision: [IoU thresholds, recall thresholds, categories, area ranges, max dets]; -1 = no ground truth.
    precision = coco_eval.eval["precision"]
    for index, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        name = class_names.get(category_id, str(category_id))
        metrics[f"AP-{name}"] = float(np.mean(values) * 100) if values.size else math.nan
    return metrics


def log_metrics(metrics: Mapping[str, float], dataset_name: str) -> None:
    """The 12 standard numbers as one table, per-category AP as a (class, AP) table."""
    standard = format_table(COCO_METRICS, [[metrics[name] for name in COCO_METRICS]])
    logger.info("Box AP on %s (percent):\n%s", dataset_name, standard)
    pairs = [(name[len("AP-") :], value) for name, value in metrics.items() if name.startswith("AP-")]
    per_row = min(3, len(pairs)) or 1
    pairs += [("", None)] * (-len(pairs) % per_row)
    rows = [[item for pair in pairs[i : i + per_row] for item in pair] for i in range(0, len(pairs), per_row)]
    logger.info("Per-category box AP on %s:\n%s", dataset_name, format_table(["category", "AP"] * per_row, rows))


def _merge_ranks(per_rank: List[Dict[int, List[dict]]]) -> Dict[int, List[dict]]:
    rank_of: Dict[int, int] = {}
    for rank, predictions in enumerate(per_rank):
        for image_id in predictions:
            if rank_of.setdefault(image_id, rank) != rank:
                raise ValueError(f"image id {image_id} was evaluated on rank {rank_of[image_id]} and on rank {rank}; "
                                 "the test sampler must give every image to exactly one rank (no padding)")
    return {image_id: per_rank[rank][image_id] for image_id, rank in rank_of.items()}


def _check_results(coco_gt: COCO, results: List[dict], image_ids: Sequence[int], source: str) -> None:
    known_images = set(coco_gt.getImgIds())
    unknown_images = sorted(set(image_ids) - known_images)
    if unknown_images:
        raise ValueError(f"image ids {unknown_images[:10]} are not in the annotation file ({source})")
    category_ids = set(coco_gt.getCatIds())
    for result in results:
        if not isinstance(result, dict) or not {"image_id", "category_id", "bbox", "score"} <= result.keys():
            raise ValueError(f"{source}: a detection needs image_id, category_id, bbox and score; got {result!r}")
        if result["category_id"] not in category_ids:
            raise ValueError(f"{source}: category id {result['category_id']} is not a category of the annotation "
                             f"file (its ids: {sorted(category_ids)})")
        if result["image_id"] not in known_images:
            image_id = result["image_id"]
            raise ValueError(f"{source}: detection for image id {image_id}, which is not in the annotation file")


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj), encoding="utf-8"), overwrite=True)
