"""COCO box evaluation (pycocotools), the inference loop, and the Table 7 comparison."""

from .coco_evaluation import COCO_METRICS, COCOEvaluator, evaluate_coco_results, evaluate_predictions, load_coco_json
from .inference import DatasetEvaluator, inference_on_dataset
from .table7 import TABLE7, collect_results, format_table7, table7_rows

__all__ = [
    "COCO_METRICS", "COCOEvaluator", "DatasetEvaluator", "TABLE7", "collect_results", "evaluate_coco_results",
    "evaluate_predictions", "format_table7", "inference_on_dataset", "load_coco_json", "table7_rows",
]
