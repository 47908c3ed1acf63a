"""Detection data loaders: datasets from the catalog -> mapped dicts -> batches (lists of dicts). Unreadable
images are logged, counted in ``loader.num_failed`` and left out; a training batch keeps its size."""

from __future__ import annotations

import itertools
import logging
import pickle
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..config.loading import ConfigError
from ..utils.data_workers import SignalSafeDataLoader
from ..utils.distributed import get_rank, get_world_size
from .catalog import DatasetCatalog, DatasetError, MetadataCatalog
from .mapper import DatasetMapper, ImageReadError
from .samplers import InferenceSampler, TrainingSampler, aspect_ratio_group, batch_stream, mix_seed, shared_random_seed

logger = logging.getLogger(__name__)

_LOGGED_FAILURES = 20  # failures logged one by one; after that, every _FAILURE_LOG_PERIOD-th
_FAILURE_LOG_PERIOD = 1000


def get_detection_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = True) -> List[dict]:
    """The dicts of one or more registered datasets (with equal ``thing_classes``), concatenated.
    ``filter_empty`` drops images without non-crowd annotations; nothing left is an error."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DatasetError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    dataset_dicts: List[dict] = []
    first = None  # (name, thing_classes) of the first dataset with classes
    for name in names:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise DatasetError(f"dataset '{name}' has no images")
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and first is None:
            first = (name, classes)
        if classes is not None and classes != first[1]:
            raise DatasetError(
                f"datasets '{first[0]}' and '{name}' have different classes and cannot be combined: {first[1]} vs {classes}"
            )
        dataset_dicts.extend(dicts)
    if filter_empty:
        kept = [d for d in dataset_dicts if any(not ann.get("iscrowd", 0) for ann in d.get("annotations", []))]
        if not kept:
            raise DatasetError(
                f"dataset(s) {', '.join(names)}: none of the {len(dataset_dicts)} images has a (non-crowd) "
                "annotation, so there is nothing to train on"
            )
        if len(kept) < len(dataset_dicts):
            logger.info(
                "%s: removed %d images without (non-crowd) annotations; %d remain",
                "+".join(names), len(dataset_dicts) - len(kept), len(kept),
            )
        dataset_dicts = kept
    return dataset_dicts


def per_device_batch_size(cfg: Any) -> int:
    """``SOLVER.IMS_PER_BATCH`` (the global batch) divided by the number of processes."""
    total, world_size = cfg.SOLVER.IMS_PER_BATCH, get_world_size()
    if total <= 0 or total % world_size != 0:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={total} (the global batch) must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    return total // world_size


def build_detection_train_loader(cfg: Any, mapper: Optional[Callable[[dict], dict]] = None, start_iter: int = 0) -> "TrainLoader":
    """Endless batches of ``per_device_batch_size(cfg)`` dicts. With SEED >= 0 each image's flip is seeded by
    (SEED, its stream position), so runs repeat for any number of workers, and ``start_iter`` resumes with
    the very batches an uninterrupted run yields."""
    batch_size = per_device_batch_size(cfg)
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ConfigError(f"DATALOADER.SAMPLER_TRAIN '{cfg.DATALOADER.SAMPLER_TRAIN}' is not supported; use TrainingSampler")
    dataset_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    seed = int(cfg.SEED) if cfg.SEED >= 0 else None
    # Drawn once: the resume position below must be computed on the same order.
    sampler_seed = seed if seed is not None else shared_random_seed()
    mapper = DatasetMapper(cfg, is_train=True) if mapper is None else mapper
    group_key = aspect_ratio_group if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    start, waiting = resume_position(dataset_dicts, sampler_seed, batch_size, group_key, start_iter)
    sampler = TrainingSampler(len(dataset_dicts), shuffle=True, seed=sampler_seed, start=start)
    return TrainLoader(
        cfg, _MappedStream(_MappedList(dataset_dicts, mapper), waiting, sampler, seed), len(dataset_dicts), batch_size,
        group_key, generator=None if seed is None else torch.Generator().manual_seed(mix_seed(seed, get_rank(), 1)),
    )


def resume_position(dataset_dicts: Sequence[dict], seed: int, batch_size: int, group_key: Optional[Callable[[dict], int]],
                    start_iter: int) -> Tuple[int, List[Tuple[int, int]]]:
    """After ``start_iter`` batches: how many items this rank has taken from its sample stream, and the
    ``(position, index)`` of those still waiting in a bucket. Grouping is replayed on the dicts' width and
    height, assuming every image was readable (a run that skipped some resumes correctly, not bit for bit)."""
    if start_iter <= 0 or group_key is None:
        return start_iter * batch_size, []
    if any("width" not in d or "height" not in d for d in dataset_dicts):
        logger.warning(
            "Some dataset dicts have no width/height: the aspect-ratio groups are formed anew from "
            "iteration %d on (a correct, but not bit-identical, continuation)", start_iter,
        )
        return start_iter * batch_size, []
    waiting: Dict[int, int] = {}  # position -> index of the items taken but not yet batched

    def shapes() -> Iterator[dict]:
        for position, index in TrainingSampler(len(dataset_dicts), seed=seed).with_positions():
            waiting[position] = index
            yield {"width": dataset_dicts[index]["width"], "height": dataset_dicts[index]["height"], "position": position}

    for batch in itertools.islice(batch_stream(shapes(), batch_size, group_key), start_iter):
        for item in batch:
            del waiting[item["position"]]
    return start_iter * batch_size + len(waiting), sorted(waiting.items())


def build_detection_test_loader(cfg: Any, dataset_name: str, mapper: Optional[Callable[[dict], dict]] = None) -> "TestLoader":
    """Batches of one dict per image of ``dataset_name``, this rank's contiguous share (InferenceSampler)."""
    dataset_dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
    mapper = DatasetMapper(cfg, is_train=False) if mapper is None else mapper
    return TestLoader(cfg, _MappedList(dataset_dicts, mapper), sampler=InferenceSampler(len(dataset_dicts)))


class _SkippingLoader:
    """Mapped dicts from a DataLoader over ``dataset``; unreadable images are logged without flooding the
    log, counted in ``num_failed`` and left out."""

    def __init__(self, cfg: Any, dataset: Dataset, **loader_kwargs: Any) -> None:
        # Items travel one by one (batch_size=None); the main process groups them into batches.
        self.loader = SignalSafeDataLoader(dataset, batch_size=None, num_workers=cfg.DATALOADER.NUM_WORKERS,
                                           collate_fn=_identity, pin_memory=torch.cuda.is_available(), **loader_kwargs)
        self.num_failed = 0

    def _readable(self) -> Iterator[dict]:
        consecutive = 0
        for item in self.loader:
            if not isinstance(item, ImageReadError):
                consecutive = 0
                yield item
                continue
            self.num_failed += 1
            consecutive += 1
            if self.num_failed <= _LOGGED_FAILURES or self.num_failed % _FAILURE_LOG_PERIOD == 0:
                logger.warning(
                    "skipping unreadable image %s: %s (%d skipped so far%s)", item.file_name, item.reason, self.num_failed,
                    "; further ones are only counted, see num_failed" if self.num_failed == _LOGGED_FAILURES else "",
                )
            self._failed_in_a_row(consecutive, item)

    def _failed_in_a_row(self, consecutive: int, error: ImageReadError) -> None:
        """Called after each unreadable image; a finite pass needs no limit, it ends by itself."""


class TrainLoader(_SkippingLoader):
    """Endless batches of ``batch_size`` mapped dicts (grouped by ``group_key`` when given); gives up when so
    many images in a row are unreadable that nothing is."""

    def __init__(self, cfg: Any, dataset: Dataset, num_images: int, batch_size: int,
                 group_key: Optional[Callable[[dict], int]], **loader_kwargs: Any) -> None:
        super().__init__(cfg, dataset, **loader_kwargs)
        self.batch_size = batch_size
        self.group_key = group_key
        # Consecutive failures that mean "nothing is readable" rather than "a few bad files".
        self._give_up_after = min(max(2 * num_images, 20), 1000)

    def __iter__(self) -> Iterator[List[dict]]:
        return batch_stream(self._readable(), self.batch_size, self.group_key)

    def _failed_in_a_row(self, consecutive: int, error: ImageReadError) -> None:
        if consecutive >= self._give_up_after:
            raise DatasetError(
                f"the last {consecutive} training images could not be read "
                f"(e.g. {error.file_name}: {error.reason}); check the dataset's image folder"
            )


class TestLoader(_SkippingLoader):
    """One-image batches, each image of the sampler's share once; unreadable images are left out."""

    def __iter__(self) -> Iterator[List[dict]]:
        return ([item] for item in self._readable())

    def __len__(self) -> int:
        return len(self.loader)  # the sampler's share, unreadable images included


class _MappedStream(IterableDataset):
    """``waiting`` then the sampler's ``(position, index)`` pairs, mapped; worker w of n maps every n-th item
    from the w-th, and the DataLoader reads the workers in turn, so items arrive in stream order."""

    def __init__(self, dataset: "_MappedList", waiting: Sequence[Tuple[int, int]], sampler: TrainingSampler,
                 seed: Optional[int]) -> None:
        self.dataset = dataset
        self.waiting = list(waiting)
        self.sampler = sampler
        self.seed = seed

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        seeded = self.seed is not None and hasattr(self.dataset.mapper, "generator")
        stream = itertools.chain(self.waiting, self.sampler.with_positions())
        for position, index in itertools.islice(stream, worker_id, None, num_workers):
            if seeded:
                self.dataset.mapper.generator = torch.Generator().manual_seed(mix_seed(self.seed, position))
            yield self.dataset[index]


class _MappedList(Dataset):
    """Dicts kept as one pickled byte buffer, mapped on access; an unreadable image gives its ImageReadError.
    Workers read the buffer without touching Python object refcounts, so forked workers share its pages
    instead of copying a list of 100k+ dicts each."""

    def __init__(self, items: List[dict], mapper: Callable[[dict], dict]) -> None:
        blobs = [np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for item in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        begin = int(self._ends[index - 1]) if index > 0 else 0
        try:
            return self.mapper(pickle.loads(self._buffer[begin : int(self._ends[index])].tobytes()))
        except ImageReadError as error:
            return error.with_traceback(None)  # the loader counts and skips it in the main process


def _identity(item: Any) -> Any:
    return item
