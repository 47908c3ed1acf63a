"""The paper's Table 7 (Faster R-CNN box mAP[.5:.95] on COCO minival = 2017 val, shorter side 300 or 600) beside
ours: runs named after their configs, each with the ``OUTPUT_DIR/inference/results.json`` of ``COCOEvaluator``."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..utils.text_table import format_table

SIZES = (300, 600)
_MOBILENET_MFLOPS = "paper Table 5, from the MobileNet paper"
# Model, our run for 600 (+ "_300" for 300), the paper's mAP (%) at 300 and 600, the classifier's MFLOPs at 224x224
# and where that figure comes from.
TABLE7: Tuple[Tuple[str, str, float, float, float, str], ...] = (
    ("ShuffleNet 2x (g=3)", "shufflenet_2x_frcnn", 18.7, 25.0, 524.0,
     "paper Table 5; official ShuffleNetV1 code: 524.0M"),
    ("ShuffleNet 1x (g=3)", "shufflenet_1x_frcnn", 14.5, 19.8, 137.5,
     "official ShuffleNetV1 code: 137.5M (paper Table 1: 137)"),
    ("1.0 MobileNet-224 (as reported by MobileNet)", "mobilenet_v1_frcnn", 16.4, 19.8, 569.0, _MOBILENET_MFLOPS),
    ("1.0 MobileNet-224 (paper's reimplementation)", "mobilenet_v1_frcnn", 14.9, 19.3, 569.0, _MOBILENET_MFLOPS),
)

# The paper's test set, by registered name or annotation file name, as COCOEvaluator records it.
TABLE7_DATASETS = frozenset({"coco_2017_val", "coco_2014_minival", "instances_val2017", "instances_minival2014"})

RUN_NAMES: Tuple[str, ...] = tuple(dict.fromkeys(name for row in TABLE7 for name in (f"{row[1]}_300", row[1])))


def find_results_file(path: str) -> str:
    """``path`` if it is (or names) a file, else the run folder's ``inference/results.json`` (or ``results.json``
    if only that exists)."""
    if os.path.isfile(path) or path.endswith(".json"):
        return path
    default = os.path.join(path, "inference", "results.json")
    flat = os.path.join(path, "results.json")
    return flat if not os.path.isfile(default) and os.path.isfile(flat) else default


def read_box_ap(results_file: str) -> float:
    """The box mAP (percent) in a ``COCOEvaluator`` results.json; one for another dataset than Table 7's is refused."""
    try:
        with open(results_file, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"results file not found: {results_file}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {results_file}: {error}") from None
    value = data.get("bbox", {}).get("AP") if isinstance(data, dict) and isinstance(data.get("bbox"), dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{results_file} has no numeric bbox.AP (not a COCOEvaluator results.json?)")
    dataset = data.get("dataset")
    if isinstance(dataset, str) and dataset not in TABLE7_DATASETS:
        raise ValueError(f"{results_file} evaluates '{dataset}', not Table 7's COCO 2017 val / 2014 minival "
                               f"({', '.join(sorted(TABLE7_DATASETS))})")
    return float(value)


def collect_results(runs: Optional[Mapping[str, str]] = None,
                    output_root: Optional[str] = None) -> Tuple[Dict[str, float], Dict[str, str], List[str]]:
    """(AP per run name, file read per run name, problems) of the Table 7 runs: ``runs`` maps names to result
    files or run folders; ``output_root`` is searched for the others."""
    runs = dict(runs or {})
    unknown = sorted(set(runs) - set(RUN_NAMES))
    if unknown:
        raise ValueError(f"unknown run name(s) {', '.join(unknown)}; Table 7 runs are: {', '.join(RUN_NAMES)}")
    box_ap: Dict[str, float] = {}
    files: Dict[str, str] = {}
    problems = []
    for name in RUN_NAMES:
        path = runs.get(name) or (os.path.join(output_root, name) if output_root is not None else None)
        if path is None:
            continue
        results_file = find_results_file(path)
        try:
            box_ap[name] = read_box_ap(results_file)
            files[name] = results_file
        except ValueError as error:  # missing or unreadable: named in the problems
            problems.append(f"{name}: {error}")
    return box_ap, files, problems


def table7_rows(box_ap: Mapping[str, float]) -> List[Dict[str, Any]]:
    """Table 7 as records: the paper's mAP, ours (``None`` if missing) and ours - paper, per input size."""
    records = []
    for model, run, paper_300, paper_600, mflops, source in TABLE7:
        record: Dict[str, Any] = {"model": model, "backbone_mflops": mflops, "mflops_source": source}
        for size, run_name, paper in ((300, f"{run}_300", paper_300), (600, run, paper_600)):
            ours = box_ap.get(run_name)
            record.update({f"run_{size}": run_name, f"paper_{size}": paper, f"ours_{size}": ours,
                           f"diff_{size}": None if ours is None else round(ours - paper, 2)})
        records.append(record)
    return records


def format_table7(records: Sequence[Mapping[str, Any]]) -> str:
    """A text table: model, backbone MFLOPs, then paper / ours / difference for 300x and 600x."""
    columns = [(size, what) for size in SIZES for what in ("paper", "ours", "diff")]
    headers = ["model", "MFLOPs@224"] + [f"{size}x {what}" for size, what in columns]
    rows = [[r["model"], r["backbone_mflops"]] + [r[f"{what}_{size}"] for size, what in columns] for r in records]
    sources = dict.fromkeys(f"  {r['backbone_mflops']:g}: {r['mflops_source']}" for r in records)
    notes = "MFLOPs@224 = the classifier's multiply-adds at 224x224, from:\n" + "\n".join(sources)
    title = "COCO box mAP[.5:.95] on 2017 val (minival), Faster R-CNN; paper = Zhang et al. CVPR 2018 Table 7"
    return f"{title}\n{format_table(headers, rows, digits=1)}\n{notes}"
