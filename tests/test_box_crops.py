"""Box crops: a detection dataset's objects as an ImageNet-layout classification dataset."""

import json

import cv2
import numpy as np
import pytest

from shufflenet_det.classification.data import ensure_box_crops
from shufflenet_det.classification.train import load_classification_config as load_config
from shufflenet_det.config.loading import ConfigError
from shufflenet_det.data import DatasetCatalog, MetadataCatalog, register_coco_datasets
from shufflenet_det.data.box_crops import BACKGROUND, MIN_BOX_SIDE, write_box_crops
from shufflenet_det.data.synthetic import generate_synthetic_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic_coco(root, num_train=6, num_val=2, seed=3, short_side=(160, 192))
    names = {}
    for split in ("train", "val"):
        name = f"box_crops_test_{split}"
        if name not in DatasetCatalog.list():
            register_coco_datasets([(name, str(root / "annotations" / f"instances_{split}.json"), str(root / split))])
        names[split] = name
    return root, names


def test_every_usable_box_becomes_one_crop_of_its_class(shapes, tmp_path):
    root, names = shapes
    out = write_box_crops({"train": names["train"]}, tmp_path / "crops", image_size=32, background_per_image=2)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    id_to_name = {c["id"]: c["name"] for c in coco["categories"]}
    expected = {name: 0 for name in id_to_name.values()}
    for ann in coco["annotations"]:
        if not ann["iscrowd"] and min(ann["bbox"][2:]) >= MIN_BOX_SIDE:
            expected[id_to_name[ann["category_id"]]] += 1
    found = {d.name: len(list(d.glob("*.jpg"))) for d in (out / "train").iterdir()}
    assert sorted(found) == sorted(list(expected) + [BACKGROUND])
    assert {k: v for k, v in found.items() if k != BACKGROUND} == expected
    assert 0 < found[BACKGROUND] <= 2 * len(coco["images"])
    image = cv2.imread(str(next((out / "train" / "circle").glob("*.jpg"))))
    assert image.shape == (32, 32, 3)


def test_a_crop_shows_its_object_and_background_windows_avoid_objects(shapes, tmp_path):
    root, names = shapes
    out = write_box_crops({"train": names["train"]}, tmp_path / "crops", image_size=48, context=1.0)
    records = {str(r["image_id"]): r for r in DatasetCatalog.get(names["train"])}
    # A tight crop of a box is mostly that object: it differs from a background window of the same image.
    crop_path = next((out / "train" / "rectangle").glob("*.jpg"))
    image_id, index = crop_path.stem.split("_")
    record = records[image_id]
    annotation = [a for a in record["annotations"] if not a.get("iscrowd", 0)][int(index)]
    x, y, w, h = annotation["bbox"]
    image = cv2.imread(record["file_name"])
    # context 1.0: the square around the box, as wide as its longer side, clipped to the image.
    half, cx, cy = max(w, h) / 2, x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(image.shape[1], np.ceil(cx + half))), int(min(image.shape[0], np.ceil(cy + half)))
    expected = cv2.resize(image[y0:y1, x0:x1], (48, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
    crop = cv2.imread(str(crop_path)).astype(np.float32)
    assert np.abs(crop - expected).mean() < 8
    # Background windows cover under 10% of every object: none of them looks like that object's crop.
    backgrounds = [cv2.imread(str(p)).astype(np.float32) for p in (out / "train" / BACKGROUND).glob(f"{image_id}_*.jpg")]
    assert all(np.abs(b - crop).mean() > 8 for b in backgrounds)


def test_existing_folder_is_kept_and_config_errors_are_one_line(shapes, tmp_path):
    _, names = shapes
    target = tmp_path / "crops"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    assert write_box_crops({"train": names["train"]}, target) == target
    assert (target / "mine.txt").read_text() == "keep"
    cfg = load_config("quickstart_crops", ["CLASSIFICATION.BOX_CROPS_OF", f"('{names['train']}',)"])
    with pytest.raises(ConfigError, match="needs two detection datasets"):
        ensure_box_crops(cfg)
    cfg = load_config(
        "quickstart_crops",
        ["CLASSIFICATION.BOX_CROPS_OF", "('no_such_dataset', 'synthetic_val')", "CLASSIFICATION.DATASET_ROOT", str(tmp_path / "x")],
    )
    with pytest.raises(ConfigError, match="no_such_dataset"):
        ensure_box_crops(cfg)
    assert not (tmp_path / "x").exists()
    assert MetadataCatalog.get(names["train"]).get("thing_classes")
