"""A small name -> object registry, in the spirit of detectron2's ``Registry``."""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

T = TypeVar("T")


class Registry:
    """Maps names to callables. ``@REG.register()`` registers under the function's own name."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._entries: Dict[str, Callable] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or obj.__name__
            if key in self._entries:
                raise KeyError(f"'{key}' is already registered in the {self._name} registry")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries.keys(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"unknown {self._name} '{name}'.{hint} "
            f"Valid names: {', '.join(sorted(self._entries))}"
        )

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
