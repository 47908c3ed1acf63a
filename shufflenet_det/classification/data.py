"""ImageNet-style data: class-folder datasets, the paper's transforms, a resumable sampler, loaders. Workers
yield uint8 tensors in the model's channel order, ``Normalizer`` normalizes on the device (a quarter of the copy)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from fvcore.common.config import CfgNode
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.transforms import v2

from ..config.loading import ConfigError
from ..data.box_crops import write_box_crops
from ..data.catalog import DatasetError, UnknownDatasetError
from ..data.samplers import InferenceSampler, mix_seed
from ..engine.errors import EngineError, SetupError
from ..utils.data_workers import SignalSafeDataLoader
from ..utils.distributed import get_rank, get_world_size
from ..weights import Preprocessing

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("RGB", "BGR")
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
IMAGENET_HELP = (
    "get ImageNet-1k (ILSVRC2012, https://image-net.org/download-images.php, free registration), extract "
    "its train and val archives into ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (val sorted into "
    "class folders), then set CLASSIFICATION.DATASET_ROOT ROOT or IMAGENET=ROOT"
)
MAX_CORRUPT_IN_A_ROW = 16  # more unreadable files in a row mean a broken dataset, not a few damaged images
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # PIL's, for bad files


class DatasetMissingError(SetupError):
    """The dataset folder (or one of its splits) does not exist or holds no class folders."""


class CorruptDatasetError(EngineError):
    """Too many unreadable images in a row."""

    def __init__(self, message: str) -> None:
        # Re-raised by the DataLoader from a worker, the message holds the worker's traceback: keep its last line.
        marker = f"{type(self).__name__}: "
        if "\n" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


@dataclass(frozen=True)
class ImagePreprocessing(Preprocessing):
    """How pixels reach the model: the weights metadata's ``Preprocessing`` (channel order, 0-255 mean/std,
    evaluation resize and crop) with the configs' defaults, checked."""

    input_format: str = "BGR"
    pixel_mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"INPUT.FORMAT must be one of {', '.join(INPUT_FORMATS)}, got '{self.input_format}'")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"CLASSIFICATION.INTERPOLATION must be one of {', '.join(INTERPOLATIONS)}, got '{self.interpolation}'"
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ConfigError(
                f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need 3 values each (std > 0), got "
                f"{list(self.pixel_mean)} and {list(self.pixel_std)}"
            )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "ImagePreprocessing":
        return cls(
            input_format=cfg.INPUT.FORMAT.upper(),
            pixel_mean=tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
            pixel_std=tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
            interpolation=cfg.CLASSIFICATION.INTERPOLATION,
            resize_size=cfg.CLASSIFICATION.TEST_RESIZE_SIZE,
            crop_size=cfg.CLASSIFICATION.TEST_CROP_SIZE,
        )

    def with_metadata(self, meta: Optional[Mapping[str, Any]]) -> Tuple["ImagePreprocessing", List[str]]:
        """These settings, those that weights metadata states replacing them, and one message per changed
        setting ("pixel_mean: config [0.0, 0.0, 0.0], weights [123.675, ...]")."""
        changes: Dict[str, Any] = {}
        messages = []
        for name, current in self.meta().items():
            wanted = (meta or {}).get(name)
            if wanted is None:
                continue
            if isinstance(current, list):
                wanted = [float(v) for v in wanted]
                differs = len(wanted) != len(current) or any(abs(a - b) > 1e-3 for a, b in zip(wanted, current))
            else:
                wanted = type(current)(wanted.upper() if name == "input_format" else wanted)
                differs = wanted != current
            if differs:
                changes[name] = tuple(wanted) if isinstance(wanted, list) else wanted
                messages.append(f"{name}: config {current}, weights {wanted}")
        return replace(self, **changes), messages


def _rgb_to_bgr(image: torch.Tensor) -> torch.Tensor:
    return image.flip(0)


def _to_uint8(input_format: str) -> List[Callable]:
    return [v2.PILToTensor()] + ([v2.Lambda(_rgb_to_bgr)] if input_format == "BGR" else [])


def build_train_transform(crop_size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                          ratio: Sequence[float] = (3 / 4, 4 / 3), color_jitter: Sequence[float] = (0.4, 0.4, 0.4),
                          flip: str = "horizontal", input_format: str = "BGR",
                          interpolation: str = "bilinear") -> v2.Compose:
    """The official ShuffleNet training augmentation: RandomResizedCrop, ColorJitter (brightness, contrast,
    saturation), a random flip ("horizontal", "vertical" or "none"), to uint8 in ``input_format``."""
    if flip not in ("horizontal", "vertical", "none"):
        raise ConfigError(f"INPUT.RANDOM_FLIP must be one of horizontal, vertical, none; got '{flip}'")
    mode = INTERPOLATIONS[interpolation]
    crop = v2.RandomResizedCrop(crop_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=mode, antialias=True)
    steps = [crop]
    if any(color_jitter):
        brightness, contrast, saturation = color_jitter
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation))
    if flip != "none":
        steps.append(v2.RandomHorizontalFlip(0.5) if flip == "horizontal" else v2.RandomVerticalFlip(0.5))
    return v2.Compose(steps + _to_uint8(input_format))


def build_test_transform(preprocessing: ImagePreprocessing) -> v2.Compose:
    """Resize the shorter side to ``resize_size``, center crop ``crop_size``, to uint8 in the input format."""
    mode = INTERPOLATIONS[preprocessing.interpolation]
    resize = v2.Resize(preprocessing.resize_size, interpolation=mode, antialias=True)
    return v2.Compose([resize, v2.CenterCrop(preprocessing.crop_size)] + _to_uint8(preprocessing.input_format))


class Normalizer:
    """uint8 image batch [N, 3, H, W] (any device) -> float ``(x - mean) / std``, optionally channels_last."""

    def __init__(self, preprocessing: ImagePreprocessing, channels_last: bool = False) -> None:
        self.mean = torch.tensor(preprocessing.pixel_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.pixel_std).view(1, 3, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        images = (images.float() - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


class ImageFolderDataset(datasets.ImageFolder):
    """``ROOT/<class>/<image>`` (empty class folders allowed) as ``{"image", "label", "skipped"}``: an unreadable
    image is logged and replaced by the next readable one (``"skipped"`` counts them). Indexed by ``(index, seed)``,
    the augmentation is drawn from a generator seeded with ``seed``, whatever the worker process."""

    def __init__(self, root: Union[str, os.PathLike], transform: Callable) -> None:
        super().__init__(str(root), transform=transform, allow_empty=True)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        for skipped in range(MAX_CORRUPT_IN_A_ROW):
            path, label = self.samples[(index + skipped) % len(self)]
            try:
                with open(path, "rb") as handle:
                    image = Image.open(handle).convert("RGB")  # decodes now, inside the try
                break
            except _DECODE_ERRORS as error:
                logger.warning("Skipping unreadable image %s: %s", path, " ".join(str(error).split())[:200])
        else:
            raise CorruptDatasetError(
                f"{MAX_CORRUPT_IN_A_ROW} unreadable images in a row from {self.samples[index][0]} on: "
                f"is the dataset at {self.root} damaged?"
            )
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return {"image": self.transform(image), "label": label, "skipped": skipped}


def dataset_root(cfg: CfgNode) -> Path:
    """CLASSIFICATION.DATASET_ROOT, else $IMAGENET; a one-line ``DatasetMissingError`` if neither is set."""
    configured = cfg.CLASSIFICATION.DATASET_ROOT or os.environ.get("IMAGENET", "")
    if not configured:
        raise DatasetMissingError(
            f"no dataset: CLASSIFICATION.DATASET_ROOT is empty and $IMAGENET is not set; {IMAGENET_HELP}"
        )
    return Path(os.path.expandvars(os.path.expanduser(configured)))


def ensure_box_crops(cfg: CfgNode) -> None:
    """With CLASSIFICATION.BOX_CROPS_OF, write the detection datasets' box crops to DATASET_ROOT unless there."""
    options = cfg.CLASSIFICATION
    sources, splits = list(options.BOX_CROPS_OF), [options.TRAIN_SPLIT, options.VAL_SPLIT]
    if not sources:
        return
    if len(sources) != len(splits):
        raise ConfigError(
            f"CLASSIFICATION.BOX_CROPS_OF needs two detection datasets (for {splits[0]} and {splits[1]}), got {sources}"
        )
    if not options.DATASET_ROOT:
        raise ConfigError(
            "CLASSIFICATION.BOX_CROPS_OF needs CLASSIFICATION.DATASET_ROOT: the folder to write the crops to"
        )
    try:
        write_box_crops(dict(zip(splits, sources)), dataset_root(cfg), seed=max(int(cfg.SEED), 0))
    except (DatasetError, UnknownDatasetError) as error:
        raise ConfigError(f"CLASSIFICATION.BOX_CROPS_OF: {error}") from None


def build_dataset(cfg: CfgNode, split: str, transform: Callable) -> ImageFolderDataset:
    """The ``split`` folder of the configured dataset, checked against CLASSIFICATION.NUM_CLASSES."""
    ensure_box_crops(cfg)
    folder = dataset_root(cfg) / split
    if not folder.is_dir():
        raise DatasetMissingError(f"dataset split not found: {folder} does not exist; {IMAGENET_HELP}")
    if not any(entry.is_dir() for entry in folder.iterdir()):
        raise DatasetMissingError(f"dataset split {folder} has no class folders; {IMAGENET_HELP}")
    try:
        dataset = ImageFolderDataset(folder, transform)
    except OSError as error:  # e.g. a folder without read permission
        raise DatasetMissingError(f"cannot read dataset split {folder}: {' '.join(str(error).split())[:200]}") from None
    if len(dataset) == 0:
        raise DatasetMissingError(f"dataset split {folder} has class folders but no images in them; {IMAGENET_HELP}")
    if len(dataset.classes) != cfg.CLASSIFICATION.NUM_CLASSES:
        raise SetupError(
            f"{folder} has {len(dataset.classes)} class folders but CLASSIFICATION.NUM_CLASSES is "
            f"{cfg.CLASSIFICATION.NUM_CLASSES}: set CLASSIFICATION.NUM_CLASSES {len(dataset.classes)} "
            "(or point CLASSIFICATION.DATASET_ROOT elsewhere)"
        )
    logger.info("Dataset %s: %d images, %d classes", folder, len(dataset), len(dataset.classes))
    return dataset


_PERMUTATION, _AUGMENTATION = 1, 2  # what a derived seed is for


class ResumableSampler(Sampler):
    """An endless stream of ``(index, augmentation seed)`` for one process from iteration ``start_iter``: global
    batch ``i`` is positions ``i*B .. i*B+B-1`` of per-epoch permutations seeded by ``(seed, epoch)`` (rank ``r``
    takes its slice), each with a seed from ``(seed, position)``; so resumes are exact at any number of processes."""

    def __init__(
        self, size: int, global_batch: int, seed: int, start_iter: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not split over {world_size} processes")
        self.size, self.global_batch, self.per_rank = size, global_batch, global_batch // world_size
        self.seed, self.start_iter, self.rank = seed, start_iter, rank

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        iteration, epoch = self.start_iter, -1
        while True:
            first = iteration * self.global_batch + self.rank * self.per_rank
            for position in range(first, first + self.per_rank):
                position_epoch, offset = divmod(position, self.size)
                if position_epoch != epoch:
                    epoch = position_epoch
                    generator = torch.Generator().manual_seed(mix_seed(self.seed, _PERMUTATION, epoch))
                    permutation = torch.randperm(self.size, generator=generator)
                yield int(permutation[offset]), mix_seed(self.seed, _AUGMENTATION, position)
            iteration += 1


def build_train_loader(cfg: CfgNode, dataset: Dataset, batch_size: int, seed: int, start_iter: int = 0) -> DataLoader:
    """Endless batches of ``batch_size`` (this process's share of SOLVER.IMS_PER_BATCH) for iterations
    ``start_iter, start_iter + 1, ...``, from a ``ResumableSampler``."""
    sampler = ResumableSampler(len(dataset), cfg.SOLVER.IMS_PER_BATCH, seed, start_iter, get_rank(), get_world_size())
    workers = cfg.DATALOADER.NUM_WORKERS
    return SignalSafeDataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=torch.cuda.is_available(),
        drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )  # fmt: skip


def build_test_loader(cfg: CfgNode, dataset: Dataset) -> DataLoader:
    """This process's contiguous share of ``dataset`` (``InferenceSampler``: every image once over all processes)."""
    batch_size = max(1, cfg.CLASSIFICATION.TEST_IMS_PER_BATCH // get_world_size())
    return SignalSafeDataLoader(dataset, batch_size, sampler=InferenceSampler(len(dataset)),
                                num_workers=cfg.DATALOADER.NUM_WORKERS, pin_memory=torch.cuda.is_available())
