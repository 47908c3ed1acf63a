"""A small, deterministic COCO-format dataset of drawn shapes (docs/data.md), with a MANIFEST.json (params,
stats, size and sha256 of every file). Same parameters, same bytes; built in a temporary sibling folder."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from .catalog import DatasetError

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: Tuple[str, ...] = ("circle", "rectangle", "triangle", "cross", "ring")
# (JSON category id, name), as COCO_CATEGORIES: the one place that numbers the classes from 1.
SYNTHETIC_CATEGORIES: Tuple[Tuple[int, str], ...] = tuple(enumerate(SYNTHETIC_CLASSES, start=1))
MANIFEST_NAME = "MANIFEST.json"
_FORMAT = "shufflenet-det synthetic shapes"
_GENERATOR_VERSION = 1
_VAL_ID_OFFSET = 1_000_000  # val image ids never collide with train ids

# Target sqrt(area) ranges per COCO size range, kept clear of the 32 / 96 borders.
_SIZE_RANGES = {"small": (14.0, 29.0), "medium": (38.0, 86.0), "large": (106.0, 165.0)}
_SIZE_PROBS = {"small": 0.3, "medium": 0.45, "large": 0.25}
_MAX_LARGE_PER_IMAGE = 2
_MIN_VISIBLE_PIXELS = 80

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SyntheticParams:
    """Everything that determines a generated dataset. ``difficulty`` (in [0, 1]) lowers the color contrast and
    raises texture, rotation and occlusion; ``clutter`` (in [0, 1]) raises distractors, blotches and noise."""

    num_train: int = 240
    num_val: int = 60
    seed: int = 0
    difficulty: float = 0.5
    clutter: float = 0.5
    max_objects: int = 6
    short_side: Tuple[int, int] = (200, 320)
    aspect_ratio: Tuple[float, float] = (0.6, 1.7)  # width / height
    empty_fraction: float = 0.04
    crowd_fraction: float = 0.03
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {self.num_train} and {self.num_val}")
        for name in ("difficulty", "clutter", "empty_fraction", "crowd_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.max_objects < 3:
            raise ValueError(f"max_objects must be >= 3 (one object per size range), got {self.max_objects}")
        if not 64 <= self.short_side[0] <= self.short_side[1]:
            raise ValueError(f"short_side must be an increasing pair >= 64, got {self.short_side}")
        if not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must be an increasing positive pair, got {self.aspect_ratio}")

    def to_json(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in asdict(self).items()}


def size_range(area: float) -> str:
    """COCO's size range of an object of ``area`` pixels: "small", "medium" or "large"."""
    return "small" if area < 32**2 else ("medium" if area < 96**2 else "large")


def generate_synthetic_coco(root: PathLike, num_train: int = 240, num_val: int = 60, seed: int = 0, *,
                            overwrite: bool = False, **options: Any) -> Dict[str, Any]:
    """Generate the dataset into ``root`` and return its manifest. An existing ``root`` is only replaced with
    ``overwrite`` and when it has our manifest: a mistyped path never deletes unrelated files."""
    params = SyntheticParams(num_train=num_train, num_val=num_val, seed=seed, **options)
    return _generate(Path(root), params, overwrite=overwrite)


def ensure_synthetic_dataset(root: PathLike, params: Optional[SyntheticParams] = None) -> Dict[str, Any]:
    """The manifest of the dataset in ``root``: generated when missing, else verified file by file and against
    ``params`` when given. An incomplete, damaged or foreign folder is a :class:`DatasetError`."""
    root = Path(root)
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        logger.info("generating the synthetic dataset in %s", root.resolve())
        return _generate(root, params or SyntheticParams(), overwrite=False, race_ok=True)
    manifest = verify_synthetic_dataset(root)
    old = manifest["params"]
    new = old if params is None else params.to_json()
    diff = ", ".join(f"{key}: {old[key]} vs {new[key]}" for key in old if old[key] != new[key])
    if diff:
        raise DatasetError(
            f"{root.resolve()} holds a synthetic dataset generated with other parameters ({diff}); "
            f"regenerate it with `python datasets/make_synthetic.py --root {root} --overwrite` plus your options"
        )
    return manifest


def verify_synthetic_dataset(root: PathLike) -> Dict[str, Any]:
    """The manifest of the synthetic dataset in ``root``, after checking size and sha256 of every file."""
    root = Path(root)
    manifest = _read_manifest(root)
    regenerate = f"remove it or regenerate with `python datasets/make_synthetic.py --root {root} --overwrite`"
    if manifest is None:
        raise DatasetError(f"{root.resolve()} exists but is not a synthetic dataset (no valid {MANIFEST_NAME}); {regenerate}")
    if manifest.get("generator_version") != _GENERATOR_VERSION:
        raise DatasetError(
            f"{root.resolve()} was made by synthetic generator version {manifest.get('generator_version')}, "
            f"this code writes version {_GENERATOR_VERSION}; {regenerate}"
        )
    for relative, expected in manifest["files"].items():
        path = root / relative
        if not path.is_file():
            raise DatasetError(f"synthetic dataset {root.resolve()} is incomplete: {relative} is missing; {regenerate}")
        data = path.read_bytes()
        if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise DatasetError(f"synthetic dataset {root.resolve()} is damaged: {relative} differs from the manifest; {regenerate}")
    return manifest


def _generate(root: Path, params: SyntheticParams, overwrite: bool, race_ok: bool = False) -> Dict[str, Any]:
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root.resolve()} is a file, not a folder for the synthetic dataset")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DatasetError(f"{root.resolve()} already exists; pass overwrite=True (--overwrite) to replace it")
        if _read_manifest(root) is None:
            raise DatasetError(f"refusing to replace {root.resolve()}: it is not a synthetic dataset (no {MANIFEST_NAME})")
    start = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset should be readable like any folder
    try:
        manifest = _write_dataset(tmp, params)
        if overwrite and root.exists() and any(root.iterdir()):
            old = tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent)
            os.replace(root, old)  # onto the empty folder
            os.rename(tmp, root)
            shutil.rmtree(old)
        else:
            try:
                os.rename(tmp, root)  # also replaces an empty folder
            except OSError:
                # Another process (e.g. a second training rank) installed it first; same parameters give
                # the same bytes, so use theirs after checking it.
                if not (race_ok and root.is_dir()):
                    raise
                manifest = verify_synthetic_dataset(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    stats = manifest["stats"]
    logger.info(
        "synthetic dataset in %s: %d train / %d val images, %d / %d objects, made in %.1f s",
        root.resolve(), stats["train"]["images"], stats["val"]["images"],
        stats["train"]["annotations"], stats["val"]["annotations"], time.perf_counter() - start,
    )
    return manifest


def _read_manifest(root: Path) -> Optional[Dict[str, Any]]:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or "files" not in manifest:
        return None
    return manifest


def _write_dataset(out: Path, params: SyntheticParams) -> Dict[str, Any]:
    files: Dict[str, Dict[str, Any]] = {}

    def write(relative: str, data: bytes) -> None:
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[relative] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    categories = [{"id": cat_id, "name": name, "supercategory": "shape"} for cat_id, name in SYNTHETIC_CATEGORIES]
    info = {"description": _FORMAT, "version": str(_GENERATOR_VERSION), "params": params.to_json()}
    stats = {}
    for split_index, split in enumerate(("train", "val")):
        rng = np.random.default_rng([params.seed, split_index])
        num_images = params.num_val if split_index else params.num_train
        id_offset = _VAL_ID_OFFSET if split_index else 0
        images, annotations = [], []
        for index in range(num_images):
            image_id = id_offset + index + 1
            empty = _every_nth(index, params.empty_fraction) and index > 0
            # Counted from the other end, so crowd images do not coincide with empty ones.
            crowd = not empty and _every_nth(num_images - 1 - index, params.crowd_fraction) and index > 0
            # The first image of each split holds one object of every size range, so any split covers all three.
            forced = ("small", "medium", "large") if index == 0 else None
            pixels, objects = _render_image(rng, params, empty=empty, crowd=crowd, forced_sizes=forced)
            ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode a JPEG image")
            file_name = f"{image_id:07d}.jpg"
            write(f"{split}/{file_name}", jpeg.tobytes())
            images.append({"id": image_id, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]})
            for obj in objects:
                annotations.append(
                    {"id": len(annotations) + 1 + id_offset, "image_id": image_id, "category_id": SYNTHETIC_CATEGORIES[obj.category][0],
                     "bbox": [float(v) for v in obj.bbox], "area": float(obj.area), "iscrowd": int(obj.crowd)}
                )
        coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        write(f"annotations/instances_{split}.json", _dumps(coco).encode("utf-8"))
        stats[split] = _split_stats(coco)
    manifest = {
        "format": _FORMAT,
        "generator_version": _GENERATOR_VERSION,
        "params": params.to_json(),
        "classes": list(SYNTHETIC_CLASSES),
        "stats": stats,
        "files": dict(sorted(files.items())),
    }
    (out / MANIFEST_NAME).write_text(_dumps(manifest), encoding="utf-8")  # last: marks the folder complete
    return manifest


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=None, separators=(",", ":"), ensure_ascii=True) + "\n"


def _split_stats(coco: Dict[str, Any]) -> Dict[str, Any]:
    objects = [ann for ann in coco["annotations"] if not ann["iscrowd"]]
    with_objects = {ann["image_id"] for ann in objects}
    per_category = Counter(ann["category_id"] for ann in objects)
    return {
        "images": len(coco["images"]),
        "annotations": len(objects),
        "crowd_annotations": len(coco["annotations"]) - len(objects),
        "images_without_objects": len(coco["images"]) - len(with_objects),
        "per_category": {name: per_category[cat_id] for cat_id, name in SYNTHETIC_CATEGORIES if per_category[cat_id]},
        "per_size": {k: v for k, v in sorted(Counter(size_range(ann["area"]) for ann in objects).items())},
    }


def _every_nth(index: int, fraction: float) -> bool:
    """True for floor(n * fraction) of the first n indices, evenly spread."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


@dataclass
class _Object:
    category: int
    area: int = 0
    bbox: Tuple[int, int, int, int] = (0, 0, 0, 0)
    crowd: bool = False
    drawn_area: int = 0


def _render_image(
    rng: np.random.Generator, params: SyntheticParams, empty: bool, crowd: bool, forced_sizes: Optional[Tuple[str, ...]]
) -> Tuple[np.ndarray, List[_Object]]:
    """One image (uint8 HxWx3) and its objects with visible-pixel boxes and areas."""
    short = int(rng.integers(params.short_side[0], params.short_side[1] + 1))
    aspect = float(math.exp(rng.uniform(math.log(params.aspect_ratio[0]), math.log(params.aspect_ratio[1]))))
    height, width = (short, int(round(short * aspect))) if aspect >= 1.0 else (int(round(short / aspect)), short)
    image = _background(rng, height, width, params.clutter)
    _draw_distractors(rng, image, params.clutter)
    owner = np.full((height, width), -1, dtype=np.int16)  # which object each pixel shows
    objects: List[_Object] = []
    if crowd:
        _place_crowd(rng, image, owner, objects, params)
    if not empty:
        if forced_sizes is not None:
            sizes = list(forced_sizes)
        else:
            count = int(rng.integers(1, params.max_objects + 1))
            sizes = list(rng.choice(list(_SIZE_PROBS), size=count, p=list(_SIZE_PROBS.values())))
            while sizes.count("large") > _MAX_LARGE_PER_IMAGE:
                sizes[sizes.index("large")] = "medium"
        for size in sorted(sizes, key=["large", "medium", "small"].index):
            low, high = _SIZE_RANGES[size]
            side = float(rng.uniform(low, min(high, 0.7 * min(height, width))))
            category = int(rng.integers(len(SYNTHETIC_CLASSES)))
            strict = forced_sizes is not None  # no occlusion or border cut, so the size range holds
            _place_object(rng, image, owner, objects, params, category, side**2, strict=strict)

    image += rng.standard_normal(size=image.shape, dtype=np.float32) * (3.0 + 7.0 * params.clutter)
    image = np.clip(image, 0, 255).astype(np.uint8)
    kept = []
    for index, obj in enumerate(objects):
        ys, xs = np.nonzero(owner == index)
        if len(xs) < _MIN_VISIBLE_PIXELS // (4 if obj.crowd else 1):
            continue
        obj.area = int(len(xs))
        obj.bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        kept.append(obj)
    return image, kept


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int, clutter: float) -> np.ndarray:
    start, end = _random_color(rng), _random_color(rng)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
    image = start + (end - start) * ramp[..., None]
    # Smooth blotches: coarse noise upsampled, so they have no edges an object detector could latch onto.
    coarse = rng.normal(0.0, 8.0 + 22.0 * clutter, size=(max(2, height // 40), max(2, width // 40), 3)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return image


def _draw_distractors(rng: np.random.Generator, image: np.ndarray, clutter: float) -> None:
    """Thin lines, thin arcs and soft blobs: structure that is not an object of any category."""
    height, width = image.shape[:2]
    for _ in range(int(rng.poisson(12.0 * clutter))):
        kind = rng.choice(["line", "arc", "blob"])
        color = tuple(float(c) for c in _random_color(rng))
        if kind == "line":
            p1 = (int(rng.integers(width)), int(rng.integers(height)))
            p2 = (int(rng.integers(width)), int(rng.integers(height)))
            cv2.line(image, p1, p2, color, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == "arc":
            center = (int(rng.integers(width)), int(rng.integers(height)))
            axes = (int(rng.integers(20, 80)), int(rng.integers(20, 80)))
            begin = float(rng.uniform(0, 360))
            cv2.ellipse(image, center, axes, 0.0, begin, begin + float(rng.uniform(40, 200)), color, 1, cv2.LINE_AA)
        else:
            sigma = float(rng.uniform(8, 30))
            cx, cy = int(rng.integers(width)), int(rng.integers(height))
            reach = int(3 * sigma)
            x0, x1, y0, y1 = max(cx - reach, 0), min(cx + reach, width), max(cy - reach, 0), min(cy + reach, height)
            ys, xs = np.ogrid[y0:y1, x0:x1]
            weight = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)).astype(np.float32)
            window = image[y0:y1, x0:x1]
            window += weight[..., None] * (np.asarray(color, np.float32) - window) * 0.5


def _shape_mask(rng: np.random.Generator, category: int, area: float, center: Tuple[float, float], difficulty: float,
                height: int, width: int) -> np.ndarray:
    """A boolean mask of one shape of ``category`` with about ``area`` pixels around ``center``."""
    mask = np.zeros((height, width), dtype=np.uint8)
    cx, cy = center
    name = SYNTHETIC_CLASSES[category]
    if name in ("circle", "ring"):
        hole = float(rng.uniform(0.45, 0.62)) if name == "ring" else 0.0
        stretch = float(rng.uniform(1.0, 1.0 + 0.3 * difficulty))
        radius = math.sqrt(area / (math.pi * (1.0 - hole**2)))
        axes = (max(1, round(radius * math.sqrt(stretch))), max(1, round(radius / math.sqrt(stretch))))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, angle, 0, 360, 1, -1)
        if hole:
            inner = (max(1, round(axes[0] * hole)), max(1, round(axes[1] * hole)))
            cv2.ellipse(mask, (round(cx), round(cy)), inner, angle, 0, 360, 0, -1)
        return mask.astype(bool)
    if name == "rectangle":
        aspect = float(math.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        half_w, half_h = math.sqrt(area * aspect) / 2, math.sqrt(area / aspect) / 2
        corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        rotation = rng.uniform(-20, 20) * difficulty
    elif name == "triangle":
        ratio = float(rng.uniform(0.75, 1.3))  # height / base
        base = math.sqrt(2 * area / ratio)
        tri_height = ratio * base
        corners = [(-base / 2, tri_height / 3), (base / 2, tri_height / 3), (0.0, -2 * tri_height / 3)]
        rotation = rng.uniform(0, 360)
    else:  # cross
        arm = float(rng.uniform(0.28, 0.38))  # arm thickness / span
        span = math.sqrt(area / (2 * arm - arm**2))
        s, t = span / 2, span * arm / 2
        corners = [(-t, -s), (t, -s), (t, -t), (s, -t), (s, t), (t, t), (t, s), (-t, s), (-t, t), (-s, t), (-s, -t), (-t, -t)]
        rotation = rng.uniform(-30, 30) * difficulty
    theta = math.radians(float(rotation))
    cos, sin = math.cos(theta), math.sin(theta)
    points = np.array([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners])
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _place_object(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, objects: List[_Object],
                  params: SyntheticParams, category: int, area: float, strict: bool) -> None:
    """Try positions until the shape fits the occlusion and border rules, then paint it (else give up)."""
    height, width = owner.shape
    max_occlusion = 0.0 if strict else 0.15 + 0.25 * params.difficulty
    margin = math.sqrt(area) * 0.8
    for _ in range(60 if strict else 25):
        inside = strict or rng.random() > 0.12
        if inside and min(width, height) > 2 * margin:
            center = (rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
        else:
            center = (rng.uniform(0, width), rng.uniform(0, height))
        mask = _shape_mask(rng, category, area, center, params.difficulty, height, width)
        drawn = int(mask.sum())
        if drawn < (0.97 if strict else 0.55) * area or drawn < 8:
            continue  # mostly outside the image
        covered = owner[mask]
        hidden = np.bincount(covered[covered >= 0], minlength=len(objects))  # pixels of each object it would hide
        if any(pixels and (obj.crowd or pixels > max_occlusion * obj.drawn_area) for obj, pixels in zip(objects, hidden)):
            continue
        _paint(rng, image, mask, params.difficulty)
        owner[mask] = len(objects)
        objects.append(_Object(category=category, drawn_area=drawn))
        return


def _place_crowd(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray, objects: List[_Object],
                 params: SyntheticParams) -> None:
    """A cluster of tiny shapes of one category, annotated once as a crowd region."""
    height, width = owner.shape
    category = int(rng.integers(len(SYNTHETIC_CLASSES)))
    region_w, region_h = int(rng.integers(50, 110)), int(rng.integers(40, 90))
    x0, y0 = int(rng.integers(0, max(1, width - region_w))), int(rng.integers(0, max(1, height - region_h)))
    crowd_mask = np.zeros_like(owner, dtype=bool)
    for _ in range(int(rng.integers(6, 14))):
        side = float(rng.uniform(7, 12))
        center = (x0 + rng.uniform(0, region_w), y0 + rng.uniform(0, region_h))
        mask = _shape_mask(rng, category, side**2, center, params.difficulty, height, width)
        if mask.any():
            _paint(rng, image, mask, params.difficulty)
            crowd_mask |= mask
    if crowd_mask.any():
        owner[crowd_mask] = len(objects)
        objects.append(_Object(category=category, crowd=True, drawn_area=int(crowd_mask.sum())))


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, difficulty: float) -> None:
    """Fill ``mask`` with a color that stands out from the background there, in a random texture."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    local = mask[y0:y1, x0:x1]
    patch = image[y0:y1, x0:x1]
    background = patch[local].mean(axis=0)
    min_contrast = 110.0 - 60.0 * difficulty
    best = _random_color(rng)
    for _ in range(20):
        if np.linalg.norm(best - background) >= min_contrast:
            break
        candidate = _random_color(rng)
        if np.linalg.norm(candidate - background) > np.linalg.norm(best - background):
            best = candidate
    texture_roll = rng.random()
    textured = 0.3 + 0.4 * difficulty
    fill = np.broadcast_to(best, patch.shape).copy()
    if texture_roll < textured / 2:  # stripes of the color and a darker or lighter shade of it
        period = float(rng.uniform(4, 10))
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        stripes = np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / (period / 2)) % 2 == 1
        shade = np.clip(best * float(rng.choice([0.45, 1.6])), 0, 255)
        fill[stripes] = shade
    elif texture_roll < textured:  # grain
        fill += rng.standard_normal(size=fill.shape, dtype=np.float32) * 20.0
    patch[local] = fill[local]
