"""benchmarks/unseen_shapes.py: the independent shapes dataset is valid COCO that our loader reads."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from benchmarks import unseen_shapes
from shufflenet_det.data.coco import load_coco_json
from shufflenet_det.data.mapper import DatasetMapper

SCRIPT = Path(unseen_shapes.__file__)
SPLITS = {"train": 6, "val": 3}


def generate(root, seed=0, *extra):
    sizes = ["--num-train", str(SPLITS["train"]), "--num-val", str(SPLITS["val"])]
    return unseen_shapes.main(["--root", str(root), *sizes, "--seed", str(seed), *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen") / "data"
    assert generate(root) == 0
    return root


def annotations(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


@pytest.mark.parametrize("split", SPLITS)
def test_splits_are_valid_coco_with_tight_boxes_inside_their_images(root, split):
    coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
    assert len(coco.imgs) == SPLITS[split]
    assert sorted(coco.cats) == [7, 13, 21, 34, 55]
    assert [p.name for p in sorted((root / split).iterdir())] == sorted(img["file_name"] for img in coco.imgs.values())
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # the temp folder is gone
    for image_id, image in coco.imgs.items():
        assert 1 <= len(coco.imgToAnns[image_id]) <= 6
        assert 240 <= min(image["height"], image["width"]) <= 360
    for ann in coco.dataset["annotations"]:
        image = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert ann["category_id"] in coco.cats and ann["iscrowd"] == 0 and ann["area"] > 0
        assert ann["segmentation"]
        for polygon in ann["segmentation"]:  # outlines pixel centres: within [x, x + w - 1]
            xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
            assert len(polygon) >= 6 and xs.min() >= x and ys.min() >= y and xs.max() < x + w and ys.max() < y + h


def test_every_other_image_is_single_channel_on_disk(root):
    for image in annotations(root, "train")["images"]:
        pixels = cv2.imread(str(root / "train" / image["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels.shape[:2] == (image["height"], image["width"])
        assert pixels.ndim == (2 if image["id"] % 2 == 0 else 3)  # ids start at 1: image 1 is RGB


def test_same_seed_same_dataset_and_other_seed_another(root, tmp_path):
    assert generate(tmp_path / "same", 0) == 0
    assert generate(tmp_path / "other", 1) == 0
    for split in SPLITS:
        assert annotations(tmp_path / "same", split) == annotations(root, split)
        assert annotations(tmp_path / "other", split) != annotations(root, split)


def test_existing_dataset_is_refused_without_overwrite(root):
    before = annotations(root, "val")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), "--num-train", "1", "--num-val", "1"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert annotations(root, "val") == before


def test_overwrite_replaces_the_dataset(tmp_path):
    assert generate(tmp_path / "data", 0) == 0
    argv = ["--root", str(tmp_path / "data"), "--num-train", "2", "--num-val", "1", "--overwrite"]
    assert unseen_shapes.main(argv) == 0
    assert len(list((tmp_path / "data" / "train").iterdir())) == 2
    assert len(annotations(tmp_path / "data", "train")["images"]) == 2


def test_our_loader_reads_it_and_the_mapper_makes_grayscale_images_three_channel(root):
    dicts = load_coco_json(str(root / "annotations" / "instances_val.json"), str(root / "val"))
    assert len(dicts) == SPLITS["val"]
    assert {ann["category_id"] for d in dicts for ann in d["annotations"]} <= set(range(5))  # contiguous
    gray = dicts[1]  # image id 2
    assert cv2.imread(gray["file_name"], cv2.IMREAD_UNCHANGED).ndim == 2
    out = DatasetMapper(is_train=True, random_flip="none")(gray)
    assert tuple(out["image"].shape) == (3, gray["height"], gray["width"])
    assert len(out["instances"]["boxes"]) == len(gray["annotations"])
