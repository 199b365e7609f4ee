"""The mixing weights of an interpolation: the one parser and the one rule for where a run starts (owned by the spec: torch- and numpy-free).

The CLI (``--weights``), the run registry's configs, the study reader and the dashboard all accept
weights, and :class:`~pitune_core.tune.interpolation.InterpolatedExperts` turns them into its
initial mixing logits. Each used to re-implement the checks; this module owns them, so
``"1e308,1e308,1"`` or ``"a,b"`` mean (or fail) the same everywhere. Plain :mod:`math`, no torch,
no numpy: the dashboard imports it.

- :func:`parse_weights` -- ``"uniform"`` / ``"auto"`` / k finite non-negative numbers, not all zero;
- :func:`normalise_weights` -- numbers scaled to sum to 1, exactly, even near the float limit
  (they are divided by their maximum first, so ``1e308 + 1e308`` never overflows);
- :func:`initial_logits` -- the logits ``InterpolatedExperts`` starts from;
- :func:`initial_weights` -- their softmax, i.e. the weights a run starts from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: weights below this fraction of the total start at this floor (log of 0 is not a logit)
MIN_WEIGHT = 1e-12
#: predicted similarities below this are clipped for ``weights="auto"``
MIN_SIMILARITY = 1e-6
MODES = ("uniform", "auto")


class InterpolationError(ValueError):
    """Bad sources, weights or k for an interpolation."""


def _numbers(spec, k: int | None) -> list[float]:
    want = f"{k} " if k is not None else ""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
    else:
        try:
            parts = list(spec)
        except TypeError:
            raise InterpolationError(f"weights must be 'uniform', 'auto' or {want}comma-separated numbers, "
                                     f"got {spec!r}") from None
    values = []
    for p in parts:
        if isinstance(p, bool):
            raise InterpolationError(f"weights must be numbers, got {p!r}")
        try:
            values.append(float(p))
        except (TypeError, ValueError, OverflowError):
            raise InterpolationError(f"weights must be 'uniform', 'auto' or {want}comma-separated numbers, "
                                     f"got {spec!r}") from None
    return values


def check_values(values: Sequence[float], k: int | None = None) -> list[float]:
    """Validated weight values (finite, non-negative, not all zero, one per source)."""
    values = _numbers(values, k)
    if not values:
        raise InterpolationError("no weights: choose at least one source")
    if k is not None and len(values) != k:
        raise InterpolationError(f"got {len(values)} weights for {k} sources; give exactly one weight per source")
    if not all(math.isfinite(v) for v in values):
        raise InterpolationError(f"weights must be finite numbers, got {values}")
    if any(v < 0 for v in values):
        raise InterpolationError(f"weights must be non-negative, got {values}")
    if max(values) <= 0:
        raise InterpolationError("weights must not all be zero")
    return values


def parse_weights(spec: str | Sequence[float] | None, k: int) -> str | list[float]:
    """``uniform`` / ``auto`` / explicit numbers (``"0.5,0.3,0.2"``), validated against ``k``.

    Numbers are returned as given (not normalised); :func:`normalise_weights` scales them.
    """
    if spec is None:
        return "uniform"
    if isinstance(spec, str) and spec.strip().lower() in MODES:
        return spec.strip().lower()
    return check_values(spec, k)


def normalise_weights(weights: Sequence[float]) -> list[float]:
    """Non-negative weights scaled to sum to 1 (what π-Tuning uses for fixed weights).

    Divides by the largest weight first, so the sum cannot overflow: ``[1e308, 1e308, 1]`` gives
    ``[0.5, 0.5, 5e-309]``, not NaN or a silent uniform split.
    """
    w = check_values(weights)
    top = max(w)
    scaled = [x / top for x in w]
    total = math.fsum(scaled)
    return [x / total for x in scaled]


def initial_logits(mode: str | Sequence[float], similarities: Sequence[float] | None, k: int) -> list[float]:
    """The mixing logits a run starts from (softmax of them = :func:`initial_weights`)."""
    w = parse_weights(mode, k)
    if w == "uniform":
        return [0.0] * k
    if w == "auto":
        if similarities is None or len(similarities) != k:
            raise InterpolationError("weights='auto' needs one predicted similarity per source")
        s = [float(x) for x in similarities]
        if not all(math.isfinite(x) for x in s):
            raise InterpolationError(f"predicted similarities must be finite numbers, got {s}")
        s = [max(x, MIN_SIMILARITY) for x in s]
        total = math.fsum(s)
        return [math.log(x / total) for x in s]
    return [math.log(max(x, MIN_WEIGHT)) for x in normalise_weights(w)]


def initial_weights(mode: str | Sequence[float], similarities: Sequence[float]) -> list[float]:
    """The mixing weights a run starts from, exactly as ``InterpolatedExperts`` initialises them.

    ``"uniform"``: 1/k each; ``"auto"``: similarities clipped at 1e-6 and normalised; a list:
    the hand-set weights normalised (weights under 1e-12 of the total start at that floor).
    """
    k = len(similarities)
    if isinstance(mode, str):
        if mode.strip().lower() not in MODES:
            raise InterpolationError(f"weights must be 'uniform', 'auto' or a list of numbers, got {mode!r}")
        if k == 0:
            return []
    if not isinstance(mode, str):
        w = normalise_weights(check_values(mode, k))
        if min(w) >= MIN_WEIGHT:
            return w  # exact (softmax of their logs, up to rounding)
    logits = initial_logits(mode, similarities, k)
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    total = math.fsum(e)
    return [x / total for x in e]
