import contextlib
import io
import json
import logging
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from shufflenet_det.evaluation import (
    COCO_METRICS,
    COCOEvaluator,
    evaluate_coco_results,
    inference_on_dataset,
)
from shufflenet_det.evaluation.table7 import RUN_NAMES
from shufflenet_det.utils import distributed
from shufflenet_det.utils.text_table import format_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import compare  # noqa: E402

# Non-contiguous dataset ids, as in COCO: contiguous 0/1/2 <-> dataset 1/5/9 <-> detector labels 1/2/3.
CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 9, "name": "triangle"}]
CONTIGUOUS_TO_DATASET = {0: 1, 1: 5, 2: 9}
DATASET_TO_LABEL = {1: 1, 5: 2, 9: 3}
# image id -> (width, height, [(category id, XYWH box, iscrowd)]); areas: small < 32^2 < medium < 96^2 < large.
IMAGES = {
    11: (200, 200, [(1, [10, 10, 20, 20], 0), (5, [50, 50, 60, 50], 0), (9, [80, 60, 110, 120], 0)]),
    23: (200, 160, [(5, [20, 30, 40, 40], 0), (1, [100, 20, 90, 120], 1), (1, [5, 100, 25, 20], 0)]),
    37: (180, 200, [(9, [30, 30, 100, 100], 0), (1, [140, 150, 20, 25], 0)]),
    42: (200, 200, []),
    58: (160, 160, [(5, [10, 10, 50, 60], 0), (9, [60, 40, 98, 110], 0)]),
}


@pytest.fixture
def gt_json(tmp_path):
    images, annotations = [], []
    for image_id, (width, height, boxes) in IMAGES.items():
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:06d}.jpg"})
        for category_id, box, iscrowd in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": iscrowd,
                }
            )
    path = tmp_path / "instances_tiny.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return str(path)


def batch_record(image_id):
    width, height, _ = IMAGES[image_id]
    return {"image_id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.jpg"}


def perfect_output(image_id, include_crowd=False, shift=0.0, score=1.0):
    """The image's ground truth as detector output; a crowd region, if included, gets half the score
    (with a tie, it could take the single detection AR1 counts)."""
    boxes, labels, scores = [], [], []
    for category_id, (x, y, w, h), iscrowd in IMAGES[image_id][2]:
        if iscrowd and not include_crowd:
            continue
        dx = shift * w
        boxes.append([x + dx, y, x + dx + w, y + h])
        labels.append(DATASET_TO_LABEL[category_id])
        scores.append(score / 2 if iscrowd else score)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def make_evaluator(gt_json, output_dir=None, mapping=CONTIGUOUS_TO_DATASET, **kwargs):
    return COCOEvaluator(
        gt_json,
        output_dir=output_dir,
        contiguous_to_dataset_id=mapping,
        class_names=["circle", "square", "triangle"],
        **kwargs,
    )


def run_evaluator(evaluator, outputs_by_image):
    evaluator.reset()
    for image_id, output in outputs_by_image.items():
        evaluator.process([batch_record(image_id)], [output])
    return evaluator.evaluate()


def pycocotools_stats(gt_json, results_file, image_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_json)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results_file), "bbox")
        coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.mark.parametrize("include_crowd", [False, True])
def test_perfect_predictions_score_100_and_crowd_is_ignored(gt_json, tmp_path, include_crowd):
    evaluator = make_evaluator(gt_json, output_dir=str(tmp_path / "inference"))
    bbox = run_evaluator(evaluator, {i: perfect_output(i, include_crowd) for i in IMAGES})["bbox"]
    for name in COCO_METRICS:
        assert bbox[name] == pytest.approx(100.0), name
    assert [bbox["AP-circle"], bbox["AP-square"], bbox["AP-triangle"]] == pytest.approx([100.0] * 3)

    written = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert len(written) == 9 + include_crowd
    first = next(r for r in written if r["image_id"] == 11 and r["category_id"] == 5)
    assert first["bbox"] == pytest.approx([50, 50, 60, 50])  # XYWH, original category id
    summary = json.loads((tmp_path / "inference" / "results.json").read_text())
    assert summary["num_images"] == summary["num_images_in_dataset"] == 5
    assert summary["dataset"] == "instances_tiny"
    assert summary["bbox"]["AP"] == pytest.approx(100.0)


def test_shifted_boxes_only_pass_iou_half(gt_json):
    # A horizontal shift of 0.3 w gives IoU 0.7 / 1.3 = 0.54: a hit at IoU 0.5 only, one of 10 thresholds.
    bbox = run_evaluator(make_evaluator(gt_json), {i: perfect_output(i, shift=0.3) for i in IMAGES})["bbox"]
    assert bbox["AP50"] == pytest.approx(100.0)
    assert bbox["AP75"] == pytest.approx(0.0)
    assert bbox["AP"] == pytest.approx(10.0)


def test_labels_map_back_to_original_category_ids(gt_json, tmp_path):
    outputs = {i: perfect_output(i) for i in IMAGES}
    swapped = make_evaluator(gt_json, output_dir=str(tmp_path), mapping={0: 5, 1: 1, 2: 9})
    bbox = run_evaluator(swapped, outputs)["bbox"]
    assert bbox["AP"] < 40  # circles and squares land in each other's category: only triangles score
    assert bbox["AP-triangle"] == pytest.approx(100.0)
    assert bbox["AP-circle"] == pytest.approx(0.0)
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in written} == {1, 5, 9}


def test_default_mapping_numbers_categories_by_increasing_id(gt_json):
    evaluator = COCOEvaluator(gt_json)
    bbox = run_evaluator(evaluator, {i: perfect_output(i) for i in IMAGES})["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)
    assert "AP-square" in bbox


def test_reported_ap_equals_pycocotools(gt_json, tmp_path):
    generator = torch.Generator().manual_seed(0)
    outputs = {}
    for image_id in IMAGES:
        clean = perfect_output(image_id)
        n = len(clean["labels"])
        noise = torch.randn(n, 4, generator=generator) * 4
        false_positives = torch.rand(3, 2, generator=generator) * 100
        outputs[image_id] = {
            "boxes": torch.cat([clean["boxes"] + noise, torch.cat([false_positives, false_positives + 30], 1)]),
            "labels": torch.cat([clean["labels"], torch.randint(1, 4, (3,), generator=generator)]),
            "scores": torch.rand(n + 3, generator=generator),
        }
    bbox = run_evaluator(make_evaluator(gt_json, output_dir=str(tmp_path)), outputs)["bbox"]
    results_file = str(tmp_path / "coco_instances_results.json")
    stats = pycocotools_stats(gt_json, results_file, IMAGES)
    assert 5 < bbox["AP"] < 95
    for name, value in zip(COCO_METRICS, stats):
        assert bbox[name] == pytest.approx(value * 100, abs=1e-9), name
    direct = evaluate_coco_results(gt_json, results_file)
    assert {k: direct[k] for k in COCO_METRICS} == pytest.approx({k: bbox[k] for k in COCO_METRICS})


def test_no_detections_give_zero_ap_with_a_warning(gt_json, tmp_path, caplog):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    with caplog.at_level(logging.WARNING, logger="shufflenet_det.evaluation"):
        bbox = run_evaluator(make_evaluator(gt_json, output_dir=str(tmp_path)), {i: empty for i in IMAGES})["bbox"]
    assert bbox["AP"] == 0.0 and bbox["AR100"] == 0.0 and bbox["AP-circle"] == 0.0
    assert "No detections" in caplog.text
    results_file = tmp_path / "coco_instances_results.json"
    assert json.loads(results_file.read_text()) == []
    assert evaluate_coco_results(gt_json, str(results_file))["AP"] == 0.0


def test_partial_run_evaluates_the_processed_images_only(gt_json, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="shufflenet_det.evaluation"):
        result = run_evaluator(make_evaluator(gt_json, output_dir=str(tmp_path)), {58: perfect_output(58)})
    bbox = result["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)
    assert math.isnan(bbox["APs"]) and math.isnan(bbox["AP-circle"])  # no small objects, no circles in image 58
    assert "1 of its 5 images" in caplog.text
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["num_images"] == 1 and summary["bbox"]["APs"] is None  # NaN is written as null
    # The same detections scored on the whole dataset miss every other image's objects.
    assert evaluate_coco_results(gt_json, str(tmp_path / "coco_instances_results.json"))["AR100"] < 50
    assert evaluate_coco_results(gt_json, str(tmp_path / "coco_instances_results.json"), [58])["AP"] == pytest.approx(
        100.0
    )


def fake_ranks(monkeypatch, shards, rank):
    """Pretend to be ``rank`` of len(shards) processes whose evaluators hold ``shards``."""
    monkeypatch.setattr(distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed, "get_world_size", lambda: len(shards))
    monkeypatch.setattr(
        distributed,
        "all_gather",
        lambda obj: [obj if r == rank else shard._predictions for r, shard in enumerate(shards)],
    )


def test_distributed_gather_writes_each_image_once(gt_json, tmp_path, monkeypatch):
    shards = [make_evaluator(gt_json, output_dir=str(tmp_path / f"rank{r}")) for r in range(2)]
    for rank, image_ids in enumerate([[11, 37, 58], [23, 42]]):
        for image_id in image_ids:
            shards[rank].process([batch_record(image_id)], [perfect_output(image_id)])

    fake_ranks(monkeypatch, shards, rank=1)
    assert shards[1].evaluate() == {}
    assert not (tmp_path / "rank1").exists()

    fake_ranks(monkeypatch, shards, rank=0)
    bbox = shards[0].evaluate()["bbox"]
    assert bbox["AP"] == pytest.approx(100.0)
    written = json.loads((tmp_path / "rank0" / "coco_instances_results.json").read_text())
    assert sorted({r["image_id"] for r in written}) == [11, 23, 37, 58]
    assert len(written) == 9
    assert json.loads((tmp_path / "rank0" / "results.json").read_text())["num_images"] == 5


def test_an_image_from_two_ranks_is_an_error(gt_json, monkeypatch):
    shards = [make_evaluator(gt_json) for _ in range(2)]
    shards[0].process([batch_record(11)], [perfect_output(11)])
    shards[1].process([batch_record(11), batch_record(23)], [perfect_output(11), perfect_output(23)])
    fake_ranks(monkeypatch, shards, rank=0)
    with pytest.raises(ValueError, match="image id 11 was evaluated on rank 0 and on rank 1"):
        shards[0].evaluate()


def test_bad_inputs_get_clear_errors(gt_json, tmp_path):
    evaluator = make_evaluator(gt_json)
    evaluator.process([batch_record(11)], [perfect_output(11)])
    with pytest.raises(ValueError, match="processed twice"):
        evaluator.process([batch_record(11)], [perfect_output(11)])
    background = {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([0]), "scores": torch.tensor([1.0])}
    with pytest.raises(ValueError, match="label 0 .* outside 1..3"):
        evaluator.process([batch_record(23)], [background])
    with pytest.raises(ValueError, match=r"category ids \[7\] are not categories"):
        make_evaluator(gt_json, mapping={0: 1, 1: 7, 2: 9})
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        COCOEvaluator(str(tmp_path / "missing.json"))

    results_file = tmp_path / "dets.json"
    results_file.write_text(json.dumps([{"image_id": 11, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    with pytest.raises(ValueError, match="category id 3 is not a category"):
        evaluate_coco_results(gt_json, str(results_file))
    results_file.write_text("{not json")
    with pytest.raises(ValueError, match="dets.json is not valid JSON"):
        evaluate_coco_results(gt_json, str(results_file))


def test_from_metadata_reads_the_catalog_attributes(gt_json, tmp_path):
    metadata = SimpleNamespace(
        name="tiny_val",
        json_file=gt_json,
        thing_classes=["c", "s", "t"],
        thing_dataset_id_to_contiguous_id={1: 0, 5: 1, 9: 2},
    )
    evaluator = COCOEvaluator.from_metadata(metadata, output_dir=str(tmp_path))
    bbox = run_evaluator(evaluator, {i: perfect_output(i) for i in IMAGES})["bbox"]
    assert bbox["AP-s"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "tiny_val"
    with pytest.raises(ValueError, match="has no json_file"):
        COCOEvaluator.from_metadata(SimpleNamespace(name="x"))


class FixedBoxDetector(nn.Module):
    """Returns the ground truth of the image whose id is written in its pixels; records how it was called."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 2)
        self.calls = []

    def forward(self, images):
        autocast = torch.is_autocast_enabled("cpu")
        self.calls.append(
            {
                "grad": torch.is_grad_enabled(),
                "training": self.training,
                "autocast": autocast,
                "types": [type(image) for image in images],
            }
        )
        outputs = []
        for image in images:
            output = perfect_output(int(image[0, 0, 0]))
            if autocast:  # what a detector under autocast hands back
                output["boxes"] = output["boxes"].to(torch.get_autocast_dtype("cpu"))
            outputs.append(output)
        return outputs


def image_batches(batch_size=2):
    records = []
    for image_id, (width, height, _) in IMAGES.items():
        records.append(dict(batch_record(image_id), image=torch.full((3, height, width), image_id, dtype=torch.uint8)))
    return [records[i : i + batch_size] for i in range(0, len(records), batch_size)]


def test_inference_on_dataset_runs_the_model_and_restores_its_mode(gt_json, caplog):
    model = FixedBoxDetector().train()
    model.head.eval()  # a submodule's own mode must come back too
    with caplog.at_level(logging.INFO, logger="shufflenet_det.evaluation"):
        results = inference_on_dataset(model, image_batches(), make_evaluator(gt_json), log_period_s=0.0, num_warmup=1)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert len(model.calls) == 3
    assert all(call["grad"] is False and call["training"] is False for call in model.calls)
    assert model.calls[0]["types"] == [torch.Tensor, torch.Tensor]
    assert model.training and not model.head.training
    assert torch.is_grad_enabled()
    assert "ETA=" in caplog.text and "Inference on 5 images (3 batches) done" in caplog.text


def test_inference_on_dataset_with_a_generator_and_autocast(gt_json):
    model = FixedBoxDetector().eval()
    batches = (batch for batch in image_batches(batch_size=3))  # no len()
    results = inference_on_dataset(model, batches, make_evaluator(gt_json), amp_dtype="bfloat16")
    assert results["bbox"]["AP"] == pytest.approx(100.0)  # bfloat16 boxes are scored like float32 ones
    assert all(call["autocast"] for call in model.calls)
    assert not model.training
    with pytest.raises(ValueError, match="unknown AMP dtype 'fp8'"):
        inference_on_dataset(model, [], make_evaluator(gt_json), amp_dtype="fp8")


def test_format_table_aligns_and_marks_missing_values():
    table = format_table(["name", "AP"], [["a", 12.3456], ["long name", None]], digits=1).splitlines()
    assert table[0] == "| name      |   AP |"
    assert table[2] == "| a         | 12.3 |"
    assert table[3] == "| long name |    - |"


def write_results(root, run, ap):
    folder = root / run / "inference"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"dataset": "coco_2017_val", "bbox": {"AP": ap}}))


def test_compare_prints_table7_beside_our_numbers(tmp_path, capsys):
    write_results(tmp_path, "shufflenet_2x_frcnn", 24.34)
    write_results(tmp_path, "shufflenet_1x_frcnn_300", 13.0)
    write_results(tmp_path, "mobilenet_v1_frcnn", 20.1)
    (tmp_path / "shufflenet_1x_frcnn" / "inference").mkdir(parents=True)
    (tmp_path / "shufflenet_1x_frcnn" / "inference" / "results.json").write_text("{broken")

    assert compare.main(["--output-root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = {line.split("|")[1].strip(): line for line in captured.out.splitlines() if line.startswith("| ")}
    cells = lambda model: [c.strip() for c in lines[model].split("|")[2:-1]]  # noqa: E731
    assert cells("ShuffleNet 2x (g=3)") == ["524.0", "18.7", "-", "-", "25.0", "24.3", "-0.7"]
    assert cells("ShuffleNet 1x (g=3)") == ["137.5", "14.5", "13.0", "-1.5", "19.8", "-", "-"]
    assert cells("1.0 MobileNet-224 (as reported by MobileNet)")[4:] == ["19.8", "20.1", "0.3"]
    assert cells("1.0 MobileNet-224 (paper's reimplementation)")[4:] == ["19.3", "20.1", "0.8"]
    assert "shufflenet_1x_frcnn/inference/results.json" in captured.err  # the unreadable file is named
    assert "results file not found" in captured.err and "mobilenet_v1_frcnn_300" in captured.err

    # --run overrides the scanned folder; --json is machine-readable.
    override = tmp_path / "other.json"
    override.write_text(json.dumps({"bbox": {"AP": 26.0}}))
    assert compare.main(["--output-root", str(tmp_path), "--run", f"shufflenet_2x_frcnn={override}", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["rows"][0]
    assert first["ours_600"] == 26.0 and first["diff_600"] == 1.0 and first["ours_300"] is None
    assert data["results_files"]["shufflenet_2x_frcnn"] == str(override)


def test_compare_errors(tmp_path, capsys):
    assert compare.main(["--output-root", str(tmp_path)]) == 1
    assert "no results file could be read" in capsys.readouterr().err
    # An evaluation on another dataset is not a Table 7 figure.
    other = tmp_path / "synthetic.json"
    other.write_text(json.dumps({"dataset": "synthetic_val", "bbox": {"AP": 1.0}}))
    assert compare.main(["--run", f"shufflenet_1x_frcnn={other}"]) == 1
    assert "evaluates 'synthetic_val', not Table 7's COCO 2017 val" in capsys.readouterr().err
    assert compare.main(["--run", "resnet50=x.json"]) == 2
    assert "unknown run name(s) resnet50" in capsys.readouterr().err
    assert compare.main(["--output-root", str(tmp_path / "nope")]) == 2
    assert len(RUN_NAMES) == 6


def test_compare_script_runs_from_a_clone(tmp_path):
    write_results(tmp_path, "mobilenet_v1_frcnn_300", 15.5)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "compare.py"), "--output-root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "15.5" in completed.stdout and "16.4" in completed.stdout


def _gloo_worker(rank, world_size, init_file, gt_json, output_dir, shards):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        evaluator = make_evaluator(gt_json, output_dir=output_dir)
        for image_id in shards[rank]:
            evaluator.process([batch_record(image_id)], [perfect_output(image_id)])
        result = evaluator.evaluate()
        assert (result["bbox"]["AP"] == pytest.approx(100.0)) if rank == 0 else result == {}
    finally:
        torch.distributed.destroy_process_group()


def test_real_two_process_gather(gt_json, tmp_path):
    output_dir = str(tmp_path / "inference")
    torch.multiprocessing.spawn(
        _gloo_worker, args=(2, str(tmp_path / "init"), gt_json, output_dir, [[11, 23, 42], [37, 58]]), nprocs=2
    )
    written = json.loads((tmp_path / "inference" / "coco_instances_results.json").read_text())
    assert sorted({r["image_id"] for r in written}) == [11, 23, 37, 58] and len(written) == 9
