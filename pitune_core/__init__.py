"""pitune: π-Tuning (Predict-Interpolate Tuning) for a frozen multimodal backbone.

The library is organised one concept per module:

- :mod:`pitune_core.sources` — pinned, checksummed archives from package registries
- :mod:`pitune_core.tasks` — the real task suite (language, vision, vision-language)
- :mod:`pitune_core.backbone` — the frozen unified backbone (MiniLM trunk + visual tokens)
- :mod:`pitune_core.align` — projector alignment pre-training
- :mod:`pitune_core.experts` — peft experts (LoRA, prompt tuning, IA3): train, save, load, evaluate
- :mod:`pitune_core.embeddings` — Fisher / weight / data task embeddings
- :mod:`pitune_core.similarity`, :mod:`pitune_core.graph`, :mod:`pitune_core.layout` — predict
- :mod:`pitune_core.interpolation` — interpolate-and-tune
- :mod:`pitune_core.runs` — durable run registry and executors
"""

__version__ = "0.1.0"
