"""Scalars recorded during training, each kept in an fvcore ``HistoryBuffer`` that writers smooth over."""

from __future__ import annotations

from typing import Dict, Tuple

from fvcore.common.history_buffer import HistoryBuffer

# Values kept per scalar: writers look back one log period; fvcore's default (a million) would hold a
# whole run's scalars in memory.
HISTORY_LENGTH = 10000


class EventStorage:
    """Scalars put by the trainer and hooks, keyed by name, stamped with the current ``iter``.

    ``iter`` is the 1-based number of the iteration in progress (equal to the number of iterations
    completed once it ends), the same number checkpoints and metrics files use.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._histories: Dict[str, HistoryBuffer] = {}
        self._smoothing: Dict[str, bool] = {}

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        """Record ``value``; writers report the median over their window when ``smoothing_hint``."""
        self._histories.setdefault(name, HistoryBuffer(HISTORY_LENGTH)).update(float(value), self.iter)
        self._smoothing[name] = smoothing_hint

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

    def latest_smoothed(self, window: int) -> Dict[str, Tuple[float, int]]:
        """``{name: (value, iteration it was put at)}`` of each scalar's latest put: for smoothed scalars
        the value is the median over the last ``window`` values."""
        latest = {}
        for name, buffer in self._histories.items():
            value, iteration = buffer.values()[-1]
            if self._smoothing[name]:
                value = float(buffer.median(window))
            latest[name] = (value, iteration)
        return latest
