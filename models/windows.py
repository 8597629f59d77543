"""Which values of a grayscale DICOM image a model sees as black and white: the window.

A CT or MR frame stores 12 to 16 bits; a model sees ``[0, 1]``. Which stored
values map to that range is part of a model's preprocessing, like its mean
and std: a chest model trained on a lung window sees anatomy another window
hides. The choice, in order:

1. the deployed model's own :class:`Window` (center and width in the units
   after the Modality LUT: Hounsfield units for CT), applied by the DICOM
   linear function (PS3.3 C.11.2.1.2.1), whatever the file says;
2. the file's first VOI LUT or window (what its modality chose for display);
3. for 8 bits or fewer, the range the stored bits can hold (such a frame is
   display-ready, and reads as a PNG of the same pixels would);
4. otherwise the image's own range after the Modality LUT, its 0.5th to
   99.5th percentile, as viewers do: the full range of 16 stored bits would
   show a CT as uniform gray.

A model may also ask for 4 always (``"image"``), ignoring the file's windows.
What was used is an :class:`AppliedWindow`, which the job records, and which
redraws the same picture for an overlay (:meth:`AppliedWindow.replay`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from krypton.models.errors import InvalidArgumentError

__all__ = ["AppliedWindow", "Window", "WindowChoice", "WindowSource", "grayscale_display"]

IMAGE_PERCENTILES = (0.5, 99.5)
"""The image's own range: these percentiles of its values, so that a few hot pixels
(or the padding outside a CT's field of view) do not set it."""
_SAMPLES = 1 << 20
"""At most this many pixels, evenly spread, give the percentiles (a 7000x7000 frame
would otherwise be copied whole to floats)."""


@dataclass(frozen=True)
class Window:
    """A linear window: ``center`` and ``width`` in the units after the Modality LUT.

    As DICOM defines it, values up to ``center - 0.5 - (width - 1) / 2`` read
    black, values above ``center - 0.5 + (width - 1) / 2`` white, and those
    between linearly in between.

    Raises:
        InvalidArgumentError: not two finite numbers, or ``width`` below 1 (DICOM's
            own bound).
    """

    center: float
    width: float

    def __post_init__(self) -> None:
        for name in ("center", "width"):
            value = getattr(self, name)
            if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(
                    value):
                raise InvalidArgumentError(f"window {name} must be a finite number, "
                                           f"got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.width < 1:
            raise InvalidArgumentError(f"window width must be at least 1, got {self.width}")

    @classmethod
    def spanning(cls, low: float, high: float) -> Window:
        """The window whose black is ``low`` and white is ``high``."""
        return cls(center=(low + high + 1) / 2, width=high - low + 1)

    @property
    def bounds(self) -> tuple[float, float]:
        """The values that read black and white."""
        low = self.center - 0.5 - (self.width - 1) / 2
        return low, low + self.width - 1

    def apply(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """``values`` (after the Modality LUT) mapped to ``[0, 1]``."""
        low, high = self.bounds
        floats: npt.NDArray[np.float64] = np.asarray(values, dtype=np.float64)
        if high <= low:  # width 1: a threshold
            return (floats > low).astype(np.float32)
        return np.clip((floats - low) / (high - low), 0.0, 1.0).astype(np.float32)


WindowChoice = Window | Literal["image"] | None
"""A model's window: its own, ``"image"`` (the image's range, ignoring the file's
windows), or ``None`` (the order in this module's docstring)."""

WindowSource = Literal["model", "file", "stored-range", "image"]


@dataclass(frozen=True)
class AppliedWindow:
    """The window that made a frame's display values, as a job records it.

    ``center`` and ``width`` are ``None`` only for a file's VOI LUT table.
    """

    source: WindowSource
    center: float | None = None
    width: float | None = None

    def replay(self) -> WindowChoice:
        """The choice that maps another decode of the same frame the same way."""
        if self.source in ("model", "image") and self.center is not None:
            assert self.width is not None
            return Window(self.center, self.width)
        return None  # the file's window and the stored range follow from the file alone


Display = Callable[[npt.NDArray[np.generic]], npt.NDArray[np.float32]]


def grayscale_display(dataset: Dataset, stored: npt.NDArray[np.generic], photometric: str,
                      choice: WindowChoice = None) -> tuple[Display, AppliedWindow]:
    """How stored values of this grayscale frame become ``[0, 1]``, band by band, and
    which window that is. MONOCHROME1 is inverted (its low values are white)."""
    if isinstance(choice, Window):
        window: Window | None = choice
        applied = AppliedWindow("model", choice.center, choice.width)
    elif choice is None and (_has_window(dataset) or "VOILUTSequence" in dataset):
        return _files_window(dataset, photometric)
    elif choice is None and int(dataset.BitsStored) <= 8:
        window = _stored_range(dataset)
        applied = AppliedWindow("stored-range", window.center, window.width)
    else:
        window = _image_range(dataset, stored)
        applied = (AppliedWindow("image") if window is None
                   else AppliedWindow("image", window.center, window.width))

    def display(band: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        if window is None:
            return np.zeros(band.shape, dtype=np.float32)
        return _inverted(window.apply(apply_modality_lut(band, dataset)), photometric)

    return display, applied


def _has_window(dataset: Dataset) -> bool:
    """A window needs both its centre and its width: a file with a centre alone has none."""
    return "WindowCenter" in dataset and "WindowWidth" in dataset


def _files_window(dataset: Dataset, photometric: str) -> tuple[Display, AppliedWindow]:
    """The file's first VOI LUT or window, through pydicom, scaled by its output range."""
    low_stored, high_stored = _stored_bounds(dataset)
    span = apply_voi_lut(apply_modality_lut(np.linspace(low_stored, high_stored, 4096),
                                            dataset), dataset, index=0)
    low, high = float(np.min(span)), float(np.max(span))

    def display(band: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        if high <= low:
            return np.zeros(band.shape, dtype=np.float32)
        values = apply_voi_lut(apply_modality_lut(band, dataset), dataset, index=0)
        scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        return _inverted(scaled.astype(np.float32), photometric)

    if not _has_window(dataset):
        return display, AppliedWindow("file")  # its VOI LUT table
    return display, AppliedWindow("file", _first(dataset.WindowCenter),
                                  _first(dataset.WindowWidth))


def _stored_range(dataset: Dataset) -> Window:
    """Every value the stored bits can hold, after the Modality LUT."""
    low, high = _stored_bounds(dataset)
    span = apply_modality_lut(np.linspace(low, high, 4096), dataset)
    return Window.spanning(float(np.min(span)), float(np.max(span)))


def _image_range(dataset: Dataset, stored: npt.NDArray[np.generic]) -> Window | None:
    """The frame's own range after the Modality LUT; ``None`` for a flat frame."""
    step = max(1, math.ceil(math.sqrt(stored.size / _SAMPLES)))
    values = np.asarray(apply_modality_lut(stored[::step, ::step], dataset), dtype=np.float64)
    low, high = (float(v) for v in np.percentile(values, IMAGE_PERCENTILES))
    if high <= low:  # mostly one value: use all of them
        low, high = float(values.min()), float(values.max())
    return Window.spanning(low, high) if high > low else None


def _stored_bounds(dataset: Dataset) -> tuple[int, int]:
    """The smallest and largest value the stored bits can hold."""
    bits = int(dataset.BitsStored)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _inverted(scaled: npt.NDArray[np.float32], photometric: str) -> npt.NDArray[np.float32]:
    return 1.0 - scaled if photometric == "MONOCHROME1" else scaled


def _first(value: object) -> float | None:
    """A window value that may hold one per window: the first, if it is a number."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
