"""Dataset and metadata catalogs with detectron2's names and behaviour, without depending on detectron2:
a dataset name maps to a function returning its dataset dicts, run only when asked for."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List


class DatasetError(RuntimeError):
    """A dataset that cannot be used as it is: malformed annotations, no images, mismatched classes."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A registered dataset whose files are not where they were expected."""


class UnknownDatasetError(KeyError):
    """A dataset name that was never registered. Prints its message plainly (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Catalog:
    """Name -> entry. Not a Mapping: as in detectron2, ``get`` loads a dataset or creates its metadata."""

    def __init__(self) -> None:
        self._entries: Dict[str, Any] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def list(self) -> List[str]:
        return sorted(self._entries)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)


class _DatasetCatalog(_Catalog):
    """Name -> function returning ``List[dict]`` (detectron2's standard dataset dicts)."""

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a function, got {type(func).__name__}")
        if name in self:
            raise KeyError(f"dataset '{name}' is already registered; DatasetCatalog.remove('{name}') first")
        self._entries[name] = func

    __setitem__ = register  # ``DatasetCatalog[name] = func`` gets the same checks

    def get(self, name: str) -> List[dict]:
        """Load and return the dataset dicts of ``name`` (runs its loading function every call)."""
        if name not in self:
            close = difflib.get_close_matches(name, self.list(), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            listed = ", ".join(self.list()) or "(none)"
            raise UnknownDatasetError(f"dataset '{name}' is not registered.{hint} Registered names: {listed}")
        return self._entries[name]()


class Metadata:
    """Attributes of one dataset (``thing_classes``, ``json_file``, ...). A key, once set, may only be set
    again to an equal value: two sources that disagree about a dataset's classes are an error."""

    def __init__(self, name: str) -> None:
        self.__dict__["name"] = name

    def __getattr__(self, key: str) -> Any:
        # Only called for attributes that are not set.
        known = ", ".join(sorted(self.__dict__))
        raise AttributeError(f"metadata of dataset '{self.__dict__.get('name')}' has no '{key}' (it has: {known})")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != value:
            raise DatasetError(
                f"metadata '{key}' of dataset '{self.name}' is already {self.__dict__[key]!r}; "
                f"refusing to change it to {value!r}"
            )
        self.__dict__[key] = value

    def set(self, **kwargs: Any) -> "Metadata":
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "thing_dataset_id_to_contiguous_id")
        return f"Metadata({items})"


class _MetadataCatalog(_Catalog):
    def __setitem__(self, name: str, value: Any) -> None:
        raise TypeError(f"set metadata with MetadataCatalog.get('{name}').set(...), not by item assignment")

    def get(self, name: str) -> Metadata:
        """The metadata of ``name``, created empty if it does not exist yet (detectron2 behaviour)."""
        if name not in self._entries:
            self._entries[name] = Metadata(name)
        return self._entries[name]


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
