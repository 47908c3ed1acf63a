"""Scalars recorded during training, with the history writers smooth over."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Deque, Dict, Tuple


class HistoryBuffer:
    """The last ``max_length`` (value, iteration) pairs of one scalar."""

    def __init__(self, max_length: int = 10000) -> None:
        self._data: Deque[Tuple[float, int]] = deque(maxlen=max_length)

    def update(self, value: float, iteration: int) -> None:
        self._data.append((value, iteration))

    def latest(self) -> float:
        return self._data[-1][0]

    def median(self, window: int) -> float:
        return statistics.median(value for value, _ in list(self._data)[-window:])


class EventStorage:
    """Scalars put by the trainer and hooks, keyed by name, stamped with the current ``iter``.

    ``iter`` is the 1-based number of the iteration in progress (equal to the number of iterations
    completed once it ends), the same number checkpoints and metrics files use.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._histories: Dict[str, HistoryBuffer] = {}
        self._smoothing: Dict[str, bool] = {}
        self._latest_iter: Dict[str, int] = {}

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        """Record ``value``; writers report the median over their window when ``smoothing_hint``."""
        self._histories.setdefault(name, HistoryBuffer()).update(float(value), self.iter)
        self._smoothing[name] = smoothing_hint
        self._latest_iter[name] = self.iter

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars: float) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._histories:
            raise KeyError(
                f"no scalar named '{name}' recorded yet (have: {', '.join(sorted(self._histories))})"
            )
        return self._histories[name]

    def has(self, name: str) -> bool:
        return name in self._histories

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``{name: (latest value, iteration it was put at)}``."""
        return {name: (buf.latest(), self._latest_iter[name]) for name, buf in self._histories.items()}

    def latest_smoothed(self, window: int) -> Dict[str, Tuple[float, int]]:
        """Like ``latest`` but the median over the last ``window`` values for smoothed scalars."""
        return {
            name: (buf.median(window) if self._smoothing[name] else buf.latest(), self._latest_iter[name])
            for name, buf in self._histories.items()
        }
