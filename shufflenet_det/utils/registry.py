"""fvcore's name -> object ``Registry``, with an error for unknown names that lists the valid ones."""

from __future__ import annotations

import difflib
from typing import Any, List

from fvcore.common.registry import Registry as _FvcoreRegistry


class Registry(_FvcoreRegistry):
    """``@REG.register()`` registers under the object's own name; ``get`` of an unknown name raises a
    KeyError with ``unknown_message`` (close matches, then every valid name) instead of fvcore's."""

    def get(self, name: str) -> Any:
        if name not in self:
            raise KeyError(self.unknown_message(name))
        return super().get(name)

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"unknown {self._name} '{name}'.{hint} Valid names: {', '.join(self.names())}"

    def names(self) -> List[str]:
        return sorted(name for name, _ in self)
