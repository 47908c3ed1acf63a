"""Known ImageNet weights (``megvii:1.0x_g3``, ``pytorchcv:shufflenet_g3_w1``, ``timm:mobilenetv1_100``), each
with its source, preprocessing and reported accuracy. pytorchcv and timm weights download into the torch hub
cache with those packages' helpers; megvii's are on OneDrive/BaiduYun only, so their entries say how to get them."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..utils.io import CheckpointError
from ..utils.text_table import first_line

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation input pipeline: resize the short side to ``resize_size`` with ``interpolation``, center
    crop ``crop_size``, channels in ``input_format`` order, then ``(x - pixel_mean) / pixel_std`` on 0-255."""

    input_format: str
    pixel_mean: Tuple[float, float, float]
    pixel_std: Tuple[float, float, float]
    interpolation: str
    resize_size: int = 256
    crop_size: int = 224

    def meta(self) -> Dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


# The official code feeds BGR 0-255 floats with no normalization (OpenCV bilinear resize).
MEGVII_PREPROCESSING = Preprocessing("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
IMAGENET_PREPROCESSING = Preprocessing("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "bilinear")
# timm's pretrained cfg for mobilenetv1_100.ra4_e3600_r224_in1k: mean = std = 0.5, bicubic, crop 0.875.
TIMM_MOBILENETV1_PREPROCESSING = Preprocessing("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "bicubic")
SOURCE_PREPROCESSING = {"megvii": MEGVII_PREPROCESSING, "pytorchcv": IMAGENET_PREPROCESSING,
                        "timm": TIMM_MOBILENETV1_PREPROCESSING}

MEGVII_DOWNLOAD = (
    "OneDrive https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo or BaiduYun "
    "https://pan.baidu.com/s/1EUQVoFPb74yZm0JWHKjFOw (extract code mc24), folder ShuffleNetV1"
)


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of published weights. ``params`` and ``mflops`` describe our converted model
    (MFLOPs = conv + linear multiply-adds at 224x224, as in the paper)."""

    name: str
    arch: str
    source: str
    url: str
    preprocessing: Preprocessing
    top1_error: Optional[float]
    top5_error: Optional[float]
    params: int
    mflops: float
    metrics_from: str
    remote_name: str = ""  # pytorchcv model name / Hugging Face repo id
    file_name: str = ""
    manual_download: Optional[str] = None

    def meta(self) -> Dict[str, Any]:
        """The plain-type metadata a checkpoint converted from these weights carries."""
        return {"source": self.source, "arch": self.arch, "weights": self.name, **self.preprocessing.meta(),
                "top1_error": self.top1_error, "top5_error": self.top5_error, "params": self.params,
                "mflops": self.mflops, "metrics_from": self.metrics_from, "url": self.url}


_CATALOG: Dict[str, PretrainedWeights] = {}

_MEGVII_URL = "https://github.com/megvii-model/ShuffleNet-Series/tree/master/ShuffleNetV1"
# Official ShuffleNetV1 (megvii-model/ShuffleNet-Series): size, groups, top-1/top-5 error (%), our params, MFLOPs.
for _size, _groups, _top1, _top5, _params, _mflops in (
    ("0.5x", 3, 42.7, 20.0, 718_324, 37.6),
    ("1.0x", 3, 32.2, 12.3, 1_865_728, 137.5),
    ("1.5x", 3, 28.4, 9.8, 3_442_168, 292.4),
    ("2.0x", 3, 25.9, 8.6, 5_450_776, 524.0),
    ("0.5x", 8, 41.2, 19.0, 1_011_448, 40.5),
    ("1.0x", 8, 32.0, 13.6, 2_434_768, 138.4),
    ("1.5x", 8, 29.0, 10.4, 4_269_952, 290.2),
    ("2.0x", 8, 27.1, 9.2, 6_522_232, 521.9),
):
    _arch = f"shufflenet_v1_x{_size[:-1].replace('.', '_')}_g{_groups}"
    _manual = (
        f"the official {_size} g={_groups} weights are not downloadable automatically: get the ShuffleNetV1 "
        f"{_size} group={_groups} checkpoint from {MEGVII_DOWNLOAD}, then run "
        f"python tools/convert_weights.py FILE {_arch}.pth --from megvii --arch {_arch}"
    )
    _CATALOG[f"megvii:{_size}_g{_groups}"] = PretrainedWeights(
        f"megvii:{_size}_g{_groups}", _arch, "megvii", _MEGVII_URL,
        MEGVII_PREPROCESSING, _top1, _top5, _params, _mflops, "megvii-model/ShuffleNet-Series ShuffleNetV1/README.md",
        manual_download=_manual,
    )

_PYTORCHCV_RELEASES = "https://github.com/osmr/imgclsmob/releases/download"
# pytorchcv (osmr/imgclsmob): name, our arch, top-1/top-5 error (%), params, MFLOPs, release tag, SHA-1 prefix.
for _name, _arch, _top1, _top5, _params, _mflops, _tag, _sha in (
    ("shufflenet_g1_w1", "shufflenet_v1_x1_0_g1", 34.93, 13.89, 1_531_936, 143.1, "v0.0.223", "4cfb65a3"),
    ("shufflenet_g2_w1", "shufflenet_v1_x1_0_g2", 34.25, 13.63, 1_733_848, 140.8, "v0.0.241", "07256203"),
    ("shufflenet_g3_w1", "shufflenet_v1_x1_0_g3", 34.39, 13.48, 1_865_728, 137.5, "v0.0.244", "ce54f64e"),
    ("shufflenet_g4_w1", "shufflenet_v1_x1_0_g4", 34.19, 13.35, 1_968_344, 134.3, "v0.0.245", "e2415f82"),
    ("shufflenet_g8_w1", "shufflenet_v1_x1_0_g8", 34.06, 13.42, 2_434_768, 138.4, "v0.0.250", "9a979b36"),
    ("shufflenet_g1_w3d4", "shufflenet_v1_x0_75_g1", 39.58, 17.11, 975_214, 82.5, "v0.0.218", "161cd24a"),
    ("shufflenet_g3_w3d4", "shufflenet_v1_x0_75_g3", 38.20, 16.50, 1_238_266, 79.7, "v0.0.219", "3f3b0aef"),
    ("shufflenet_g1_wd2", "shufflenet_v1_x0_5_g1", 46.59, 22.61, 534_484, 38.5, "v0.0.174", "dae4bdad"),
    ("shufflenet_g3_wd2", "shufflenet_v1_x0_5_g3", 44.16, 20.80, 718_324, 37.6, "v0.0.167", "ccaacfc8"),
    ("shufflenet_g1_wd4", "shufflenet_v1_x0_25_g1", 62.44, 37.29, 209_746, 11.0, "v0.0.134", "47dbd0f2"),
    ("shufflenet_g3_wd4", "shufflenet_v1_x0_25_g3", 61.74, 36.53, 305_902, 11.0, "v0.0.135", "6abdd65e"),
):
    _file = f"{_name}-{round(_top5 * 100):04d}-{_sha}.pth"  # pytorchcv's naming: top-5 error, SHA-1
    _CATALOG[f"pytorchcv:{_name}"] = PretrainedWeights(
        f"pytorchcv:{_name}", _arch, "pytorchcv", f"{_PYTORCHCV_RELEASES}/{_tag}/{_file}.zip",
        IMAGENET_PREPROCESSING, _top1, _top5, _params, _mflops, "osmr/imgclsmob pytorch/README.md", _name, _file,
    )

_CATALOG["timm:mobilenetv1_100"] = PretrainedWeights(
    "timm:mobilenetv1_100", "mobilenet_v1_x1_0", "timm",
    "https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
    TIMM_MOBILENETV1_PREPROCESSING, 24.618, 7.688, 4_231_976, 568.7,
    "huggingface/pytorch-image-models README (224x224, crop 0.875)", "timm/mobilenetv1_100.ra4_e3600_r224_in1k",
    "model.safetensors",
)


def list_pretrained(arch: Optional[str] = None, source: Optional[str] = None) -> List[str]:
    """Names of the known weights, optionally only those for one architecture and/or source."""
    return sorted(name for name, entry in _CATALOG.items()
                  if (arch is None or entry.arch == arch) and (source is None or entry.source == source))


def get_pretrained(name: str) -> PretrainedWeights:
    if name not in _CATALOG:
        raise KeyError(f"unknown pretrained weights '{name}'. Known: {', '.join(list_pretrained())}")
    return _CATALOG[name]


def find_pretrained(source: str, arch: Optional[str]) -> Optional[PretrainedWeights]:
    """The catalog entry for weights of ``source`` and ``arch``, if it has exactly one."""
    matches = [entry for entry in _CATALOG.values() if entry.source == source and entry.arch == arch]
    return matches[0] if len(matches) == 1 else None


def download_weights(name: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Download known weights (once) into ``cache_dir`` (default ``torch.hub.get_dir()/checkpoints``)."""
    entry = get_pretrained(name)
    if entry.manual_download:
        raise CheckpointError(f"{name}: {entry.manual_download}")
    directory = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    try:
        if entry.source == "pytorchcv":
            from pytorchcv.models.common import model_store  # its helper checks the file's SHA-1

            cache = str(directory / "pytorchcv")
            path = model_store.get_model_file(entry.remote_name, local_model_store_dir_path=cache)
        else:
            import huggingface_hub

            cache = str(directory / "huggingface")
            path = huggingface_hub.hf_hub_download(entry.remote_name, entry.file_name, cache_dir=cache)
    except ImportError as error:
        package = error.name
        raise CheckpointError(f"downloading {name} needs the '{package}' package: pip install {package}") from None
    except Exception as error:  # network and hub libraries raise many types
        raise CheckpointError(
            f"could not download {name} from {entry.url} ({type(error).__name__}: {first_line(error)}); "
            f"without internet, download that file by hand and pass its path instead"
        ) from None
    logger.info("weights %s at %s", name, path)
    return Path(path)
