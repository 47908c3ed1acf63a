"""Load a config by name or path: ``_BASE_`` inheritance, ``KEY VALUE`` overrides, one-line errors."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence

import yaml
from fvcore.common.config import CfgNode

from ..utils.text_table import first_line
from .defaults import get_cfg


class ConfigError(ValueError):
    """A config that cannot be used: missing file, unknown key, bad value. The message is one line."""


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """A one-line ``ConfigError`` for a config value that is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"unknown {key} '{value}': expected one of {', '.join(choices)}")


def config_dir() -> Path:
    """The repository's ``configs/`` folder (found beside the package, else under the current directory)."""
    beside_package = Path(__file__).resolve().parents[2] / "configs"
    return beside_package if beside_package.is_dir() else Path.cwd() / "configs"


def list_configs() -> List[str]:
    return sorted(path.stem for path in config_dir().glob("*.yaml"))  # none if the folder is missing


def split_trailing_overrides(values: Sequence[str]) -> tuple:
    """``(values, overrides)`` of a list option (``--input a.jpg b.jpg``) that swallowed the ``KEY VALUE`` pairs
    typed after it: they start at the first item that is not an existing path and names a config key (top-level,
    or under a section, misspelled or not, so that loading the config names it)."""
    defaults = get_cfg()
    sections = {key for key, value in defaults.items() if isinstance(value, CfgNode)}
    for index, value in enumerate(values):
        text = str(value)
        if os.path.exists(text):
            continue
        head, dot, _ = text.partition(".")
        if (dot and head in sections) or (not dot and text in defaults and head not in sections):
            return list(values[:index]), list(values[index:])
    return list(values), []


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """An existing file as given, else a bare name (with or without ``.yaml``) under ``config_dir()``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.parent == Path("."):
        for candidate in (config_dir() / path.name, config_dir() / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    available = ", ".join(list_configs()) or f"none (no configs in {config_dir()})"
    raise ConfigError(f"config '{name_or_path}' not found; available configs: {available}")


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[Any] = ()) -> CfgNode:
    """The defaults merged with a YAML config (and its ``_BASE_`` chain), then ``overrides`` (detectron2's flat
    ``["SOLVER.BASE_LR", "0.01", ...]``, values parsed as Python literals); frozen."""
    path = resolve_config_path(name_or_path)
    overrides = list(overrides)
    check_no_options(overrides)
    cfg = get_cfg()
    try:
        loaded = CfgNode.load_yaml_with_base(str(path), allow_unsafe=False) if path.read_text().strip() else None
    except Exception as error:  # yaml and fvcore raise many types for a broken file
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"cannot read config {path}: {first_line(error)}{where}") from None
    if loaded is None:
        raise ConfigError(f"config {path} is empty")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} is not a mapping of keys to values")
    _check_keys(cfg, _flat_keys(loaded), f"in {path}")
    checked_merge(lambda: cfg.merge_from_other_cfg(CfgNode(loaded)), f"in {path}")
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; '{overrides[-1]}' has no value")
    _check_keys(cfg, map(str, overrides[0::2]), "in the overrides")
    checked_merge(lambda: cfg.merge_from_list(overrides), "in the overrides")
    cfg.freeze()
    return cfg


def check_no_options(overrides: Sequence[Any]) -> None:
    """argparse hands everything after the first KEY to the overrides, options included."""
    for token in overrides:
        if isinstance(token, str) and token.startswith("--"):
            raise ConfigError(
                f"'{token}' came after the KEY VALUE overrides, where it is not read as an option: "
                "put options first, then the overrides (e.g. --config NAME --num-gpus 2 SOLVER.BASE_LR 0.01)"
            )


def checked_merge(merge: Callable[[], None], where: str) -> None:
    """Run a yacs merge; its errors (unknown key, type mismatch, bad YAML) become one-line ConfigErrors."""
    try:
        merge()
    except (ValueError, KeyError, AssertionError, yaml.YAMLError) as error:
        raise ConfigError(f"{first_line(error)} ({where})") from None


def _flat_keys(tree: Dict[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")


def _check_keys(cfg: CfgNode, full_keys: Iterable[str], where: str) -> None:
    valid = list(_flat_keys(cfg))
    for key in full_keys:
        if key not in valid:
            raise ConfigError(f"unknown config key '{key}' {where}; nearest valid key: {nearest_key(valid, key)}")


def nearest_key(keys: List[str], full_key: str) -> str:
    """The key of ``keys`` most like ``full_key``: by full name, else by last component (BASE_LR -> SOLVER.BASE_LR)."""
    close = difflib.get_close_matches(full_key, keys, n=1, cutoff=0.75)
    if close:
        return close[0]
    by_leaf: Dict[str, str] = {}
    for key in keys:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], key)
    close = difflib.get_close_matches(full_key.rsplit(".", 1)[-1], list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[close[0]] if close else difflib.get_close_matches(full_key, keys, n=1, cutoff=0.0)[0]
