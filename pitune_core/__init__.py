"""pitune: π-Tuning (Predict-Interpolate Tuning) for a frozen multimodal backbone.

The library is organised one concept per module:

- :mod:`pitune_core.data.sources` — pinned, checksummed archives from package registries
- :mod:`pitune_core.data.tasks` — the task catalogue; :mod:`pitune_core.data.suite`, the real task suite
- :mod:`pitune_core.model.backbone` — the frozen unified backbone (MiniLM trunk + visual tokens)
- :mod:`pitune_core.model.align` — projector alignment pre-training
- :mod:`pitune_core.model.experts` — peft experts (LoRA, prompt tuning, IA3): train, save, load, evaluate
- :mod:`pitune_core.predict.embeddings` — Fisher / weight / data task embeddings
- :mod:`pitune_core.predict.similarity`, :mod:`pitune_core.predict.graph`, :mod:`pitune_core.predict.layout` — predict
- :mod:`pitune_core.tune.interpolation` — interpolate-and-tune
- :mod:`pitune_core.runs` — durable run registry and executors
"""

__version__ = "0.1.0"
