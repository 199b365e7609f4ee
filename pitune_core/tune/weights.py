"""The mixing weights' parser and rules now live in :mod:`pitune_core.spec.weights` (torch- and
numpy-free, so the spec's run settings validate weights themselves); re-exported here for the callers
that import them from ``tune``."""

from pitune_core.spec.weights import (MIN_SIMILARITY, MIN_WEIGHT, MODES, InterpolationError,  # noqa: F401
                                      check_values, initial_logits, initial_weights, normalise_weights,
                                      parse_weights)
