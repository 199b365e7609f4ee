"""pitune's spec: the vocabulary and the run settings, each fact with one owner.

Imports neither torch nor numpy nor anything else of the project (an import-linter contract and
``tests/test_spec.py`` check it), so every layer, the CLI's parsers and the dashboard's first page
can read it for free:

- :mod:`.vocab` -- expert types, modalities, embeddings, predictors, approaches (records with their
  properties), run statuses, file names, the defaults of shots and k;
- :mod:`.env` -- the environment variables, each with its one parser;
- :mod:`.parse` -- the parsers of outside values (shots, sources, task names, ...);
- :mod:`.weights` -- the mixing weights' parser;
- :mod:`.configs` -- the run settings (:class:`TransferConfig`, :class:`TrainExpertConfig`,
  :class:`PlaceConfig`): frozen, validated once, with help text beside each default.
"""

from pitune_core.spec.configs import PlaceConfig, Settings, TrainExpertConfig, TransferConfig  # noqa: F401
from pitune_core.spec.vocab import (APPROACH_RECORDS, APPROACHES, DEFAULT_K, DEFAULT_SHOTS, EMBEDDINGS,  # noqa: F401
                                    EXPERT_META_FILE, EXPERT_TYPES, MODALITIES, NEIGHBORS_FILE, PREDICTOR_NAMES,
                                    RUN_STATUSES, Approach)
