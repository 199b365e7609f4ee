"""The side of a study that reads one: what the dashboard, ``pitune report`` and the run helpers show.

:mod:`~pitune_core.study.read.reader` (the :class:`~pitune_core.study.read.reader.Study` view of a study
folder), :mod:`~pitune_core.study.read.groundtruth_files` (its ground-truth files, bounded and validated),
:mod:`~pitune_core.study.read.evidence` (the pre-registered protocol's results, summarised),
:mod:`~pitune_core.study.read.results` (the results CSV format, read and written), :mod:`~pitune_core.study.read.stats`
(paired differences and bootstrap CIs), :mod:`~pitune_core.study.read.crossmodal` (same- vs cross-modality gains)
and :mod:`~pitune_core.study.read.placed` (user tasks placed on a study). None of them imports torch or the
side that writes a study (``pipeline``, ``protocol``, ``transfer``, ``groundtruth``, ``place`` ...): the
import-linter contract ``study-read`` checks it.
"""
