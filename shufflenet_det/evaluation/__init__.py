"""COCO box evaluation (pycocotools), the inference loop, and the Table 7 comparison; the names imported here
are the API."""

from .coco_evaluation import COCO_METRICS, COCOEvaluator, evaluate_coco_results, evaluate_predictions, load_coco_json
from .inference import DatasetEvaluator, inference_on_dataset
from .table7 import TABLE7, collect_results, format_table7, table7_rows
