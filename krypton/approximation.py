"""How far an approximate run may depart from the exact heatmap: one value, every rule.

Two independent approximations (docs/design.md, "Approximate inference"):

* Projective-field thresholding: ``tau`` caps each layer's recomputed region
  at that fraction of the layer's side, centred on the region. Cells beyond
  the cap keep their original activations. ``tau = 1`` is exact.
* Adaptive drill-down: a coarse heatmap at ``coarse_stride`` first; then the
  requested stride only at the ``drilldown_ratio`` of positions where the
  coarse map, interpolated, shows the largest probability drop; or, with a
  ``drilldown_tolerance``, wherever bisection finds the interpolation off by
  more than that share of the map's range, at most ``drilldown_ratio`` of the
  positions. The other positions keep the interpolated coarse value.

A request's knobs, a tuned dataset config, a run's statistics, the command
line and the tuner all hold an :class:`Approximation`, so a rule is checked
here once and every one of them refuses a bad combination with the same
message. This module imports nothing (no torch): the API validates with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Approximation", "ApproximationError", "quality_target"]


class ApproximationError(ValueError):
    """Knobs that break a rule of approximate inference; the message says which."""


def _fraction(name: str, value: object, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApproximationError(f"{name} must be a number, got {value!r}")
    inside = 0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0
    if not inside:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ApproximationError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def quality_target(target_ssim: object) -> float:
    """The SSIM a tuning must reach on its images, checked once for the library's tuner
    and the service's tuning requests alike.

    Raises:
        ApproximationError: not a number in (0, 1].
    """
    return _fraction("target_ssim", target_ssim, low_open=True)


@dataclass(frozen=True)
class Approximation:
    """The four knobs of approximate inference, checked together when made: a knob out
    of range, or knobs that do not go together, are refused (ApproximationError, whose
    message says which rule). The default is exact."""

    __pydantic_config__ = {"use_attribute_docstrings": True}  # the API's schema shows these

    tau: float = 1.0
    """Projective-field threshold, 0 < tau <= 1; 1 is exact."""
    drilldown_ratio: float | None = None
    """Fraction r of fine positions recomputed after the coarse stage, 0 < r <= 1; none
    runs no drill-down."""
    coarse_stride: int | None = None
    """Stride of the drill-down's coarse stage in input pixels, a positive integer;
    required with drilldown_ratio."""
    drilldown_tolerance: float | None = None
    """Refine by bisection to this share of the coarse map's range, in [0, 1],
    drilldown_ratio being the cap; none refines the ratio with the largest drop."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", _fraction("tau", self.tau, low_open=True))
        if (self.drilldown_ratio is None) != (self.coarse_stride is None):
            raise ApproximationError(
                "drill-down needs both drilldown_ratio and coarse_stride, or neither")
        if self.drilldown_tolerance is not None and self.drilldown_ratio is None:
            raise ApproximationError(
                "drilldown_tolerance needs drilldown_ratio (its cap) and coarse_stride")
        if self.drilldown_ratio is not None:
            object.__setattr__(self, "drilldown_ratio",
                               _fraction("drilldown_ratio", self.drilldown_ratio, low_open=True))
            stride = self.coarse_stride
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
                raise ApproximationError(
                    f"coarse_stride must be a positive integer, got {stride!r}")
        if self.drilldown_tolerance is not None:
            object.__setattr__(self, "drilldown_tolerance", _fraction(
                "drilldown_tolerance", self.drilldown_tolerance, low_open=False))

    @classmethod
    def of(cls, tau: float | None = None, drilldown_ratio: float | None = None,
           coarse_stride: int | None = None, drilldown_tolerance: float | None = None
           ) -> Approximation:
        """The value of knobs given as options, where an unset ``tau`` means 1."""
        return cls(1.0 if tau is None else tau, drilldown_ratio, coarse_stride,
                   drilldown_tolerance)

    @classmethod
    def from_text(cls, text: str) -> Approximation:
        """``TAU/R/COARSE[/TOLERANCE]``, ``-`` for a knob not set: ``1/0.05/16``,
        ``0.5/-/-``, ``1/0.5/16/0.1`` (bisection), as benchmarks take settings.

        Raises:
            ApproximationError: not that form, or bad values.
        """
        fields = text.split("/")
        if len(fields) not in (3, 4):
            raise ApproximationError(
                f"a setting is TAU/R/COARSE[/TOLERANCE], e.g. 1/0.05/16 or 0.5/-/-, got {text!r}")
        try:
            tau, ratio, coarse, tolerance = (*fields, "-")[:4]
            return cls(float(tau), None if ratio == "-" else float(ratio),
                       None if coarse == "-" else int(coarse),
                       None if tolerance == "-" else float(tolerance))
        except ValueError as exc:
            raise ApproximationError(f"bad setting {text!r}: {exc}") from exc

    def for_stride(self, stride: int) -> Approximation:
        """This value, checked for a heatmap at ``stride``: bisection halves cells of the
        coarse lattice down to the fine grid, so its coarse stride must be on that grid.

        Raises:
            ApproximationError: a tolerance with a coarse stride off the fine grid.
        """
        if (self.drilldown_tolerance is not None and self.coarse_stride is not None
                and self.coarse_stride % stride):
            raise ApproximationError(
                f"drilldown_tolerance needs a coarse_stride that is a multiple of the stride "
                f"{stride}, got {self.coarse_stride}")
        return self

    @property
    def drills_down(self) -> bool:
        return self.drilldown_ratio is not None

    @property
    def is_exact(self) -> bool:
        return self.tau == 1.0 and not self.drills_down

    def knobs(self) -> dict[str, Any]:
        """The four knobs by name, as requests and dataset configs spell them."""
        return {"tau": self.tau, "drilldown_ratio": self.drilldown_ratio,
                "coarse_stride": self.coarse_stride,
                "drilldown_tolerance": self.drilldown_tolerance}

    def describe(self) -> str:
        """One line for people: ``tau 0.50, drill-down r 0.05 coarse stride 16``."""
        text = f"tau {self.tau:.2f}"
        if self.drills_down:
            text += f", drill-down r {self.drilldown_ratio:.2f} coarse stride {self.coarse_stride}"
        if self.drilldown_tolerance is not None:
            text += f", bisection tolerance {self.drilldown_tolerance:.2f}"
        return text
