import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from shufflenet_det.data import (
    SYNTHETIC_CLASSES,
    DatasetCatalog,
    DatasetError,
    MetadataCatalog,
    SyntheticParams,
    ensure_synthetic_dataset,
    generate_synthetic_coco,
    register_builtin_datasets,
    verify_synthetic_dataset,
)
from shufflenet_det.data import synthetic
from shufflenet_det.data.synthetic import MANIFEST_NAME, size_range

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "datasets"))
import make_synthetic  # noqa: E402

TINY = dict(num_train=6, num_val=4, seed=3)


def all_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    generate_synthetic_coco(tmp_path / "a", **TINY)
    generate_synthetic_coco(tmp_path / "b", **TINY)
    generate_synthetic_coco(tmp_path / "c", **{**TINY, "seed": 4})
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) == 6 + 4 + 2 + 1  # images, two JSON files, manifest
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_modest_generation_covers_size_ranges_categories_empty_and_crowd(tmp_path):
    generate_synthetic_coco(tmp_path, num_train=30, num_val=12, seed=0, empty_fraction=0.1, crowd_fraction=0.1)
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "annotations" / f"instances_{split}.json"))  # pycocotools reads it
        anns = coco.loadAnns(coco.getAnnIds())
        objects = [a for a in anns if not a["iscrowd"]]
        assert set(Counter(size_range(a["area"]) for a in objects)) == {"small", "medium", "large"}, split
        with_objects = {a["image_id"] for a in objects}
        assert len(coco.getImgIds()) - len(with_objects) >= 1, f"{split} has no image without objects"
        assert any(a["iscrowd"] for a in anns), f"{split} has no crowd annotation"
        for ann in anns:
            image = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
            assert 0 < ann["area"] <= w * h
        if split == "train":
            assert {coco.cats[a["category_id"]]["name"] for a in objects} == set(SYNTHETIC_CLASSES)
        sizes = {(i["width"], i["height"]) for i in coco.imgs.values()}
        assert all(200 <= min(s) <= 320 and 0.6 <= s[0] / s[1] <= 1.7 for s in sizes)
        assert len({round(s[0] / s[1], 1) for s in sizes}) > 3  # varied aspect ratios


def test_boxes_and_areas_match_the_painted_pixels(monkeypatch):
    # Paint every object in its own flat color on a flat background: each object's visible pixels are
    # then known exactly, and its box and area must be their extent and count (occlusion included).
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0)]
    painted = []

    def paint(rng, image, mask, difficulty):
        image[mask] = colors[len(painted)]
        painted.append(1)

    monkeypatch.setattr(synthetic, "_background", lambda rng, h, w, clutter: np.full((h, w, 3), 128, np.float32))
    monkeypatch.setattr(synthetic, "_draw_distractors", lambda rng, image, clutter: None)
    monkeypatch.setattr(synthetic, "_paint", paint)
    params = SyntheticParams(clutter=0.0, difficulty=1.0)
    checked = 0
    for seed in range(6):
        painted.clear()
        image, objects = synthetic._render_image(np.random.default_rng(seed), params, False, False, None)
        assert len(painted) >= len(objects) >= 1
        if len(painted) != len(objects):
            continue  # an object hidden below the minimum visible size was dropped: colors no longer line up
        for order, obj in enumerate(objects):
            ys, xs = np.nonzero((np.abs(image.astype(int) - colors[order]) < 25).all(axis=2))
            assert obj.area == len(xs)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            checked += 1
    assert checked >= 10


def test_ensure_generates_once_then_verifies(tmp_path):
    root = tmp_path / "synthetic"
    params = SyntheticParams(**TINY)
    first = ensure_synthetic_dataset(root, params)
    mtime = (root / MANIFEST_NAME).stat().st_mtime_ns
    assert ensure_synthetic_dataset(root) == first  # accepts the existing one without params
    assert ensure_synthetic_dataset(root, params) == first
    assert (root / MANIFEST_NAME).stat().st_mtime_ns == mtime  # not regenerated
    with pytest.raises(DatasetError, match="other parameters.*seed: 3 vs 9"):
        ensure_synthetic_dataset(root, SyntheticParams(**{**TINY, "seed": 9}))


def test_damaged_incomplete_or_foreign_folders_are_reported(tmp_path):
    root = tmp_path / "synthetic"
    generate_synthetic_coco(root, **TINY)
    image = root / "train" / "0000002.jpg"
    original = image.read_bytes()
    image.write_bytes(original[:-10])
    with pytest.raises(DatasetError, match="damaged: train/0000002.jpg"):
        verify_synthetic_dataset(root)
    image.unlink()
    with pytest.raises(DatasetError, match="incomplete: train/0000002.jpg is missing"):
        ensure_synthetic_dataset(root)
    image.write_bytes(original)
    verify_synthetic_dataset(root)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        ensure_synthetic_dataset(foreign)
    with pytest.raises(DatasetError, match="refusing to replace"):
        generate_synthetic_coco(foreign, **TINY, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_only_with_permission(tmp_path):
    root = tmp_path / "synthetic"
    generate_synthetic_coco(root, **TINY)
    with pytest.raises(DatasetError, match="already exists"):
        generate_synthetic_coco(root, **{**TINY, "seed": 5})
    assert json.loads((root / MANIFEST_NAME).read_text())["params"]["seed"] == 3
    generate_synthetic_coco(root, **{**TINY, "seed": 5}, overwrite=True)
    assert verify_synthetic_dataset(root)["params"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_invalid_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="difficulty must lie in"):
        generate_synthetic_coco(tmp_path / "x", **TINY, difficulty=1.5)
    with pytest.raises(TypeError):
        generate_synthetic_coco(tmp_path / "x", **TINY, colour=1)
    assert not (tmp_path / "x").exists()


def test_builtin_synthetic_names_load_from_datasets_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    generate_synthetic_coco(tmp_path / "synthetic", **TINY)
    register_builtin_datasets()
    try:
        train = DatasetCatalog.get("synthetic_train")
        val = DatasetCatalog.get("synthetic_val")
        assert len(train) == 6 and len(val) == 4
        assert train[0]["file_name"] == os.path.join(str(tmp_path), "synthetic", "train", "0000001.jpg")
        assert {d["image_id"] for d in train}.isdisjoint(d["image_id"] for d in val)
        meta = MetadataCatalog.get("synthetic_val")
        assert meta.thing_classes == list(SYNTHETIC_CLASSES)
        assert meta.json_file == os.path.join(str(tmp_path), "synthetic", "annotations", "instances_val.json")
    finally:
        monkeypatch.undo()
        register_builtin_datasets()


def test_make_synthetic_script(tmp_path, capsys):
    root = str(tmp_path / "synthetic")
    args = ["--root", root, "--num-train", "4", "--num-val", "2"]
    assert make_synthetic.main(args) == 0
    assert "train: 4 images" in capsys.readouterr().out
    assert make_synthetic.main(args) == 0  # present and verified, kept
    assert make_synthetic.main(args + ["--seed", "7"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert make_synthetic.main(args + ["--seed", "7", "--overwrite"]) == 0
    assert verify_synthetic_dataset(root)["params"]["seed"] == 7
    assert make_synthetic.main(["--root", root, "--clutter", "2", "--overwrite"]) == 1
    assert "clutter must lie in [0, 1]" in capsys.readouterr().err
