"""Robustness test sets (issue 28, item 3): shifted test sets from a task's family, corrupted copies of its own.

Torch-free (numpy and Pillow): the sets as :class:`~pitune_core.data.tasks.Split` objects; scoring a
tuned model on them is :mod:`pitune_core.tune.robustness`.

**Shifted sets.** A target's shift sources are the other members of its group in :data:`SHIFT_GROUPS`
(the rule, :data:`SHIFT_RULE`): tasks of one family and one modality whose label lists mean the same
thing index for index, so a model tuned on the target scores a source's examples with the target's
own label texts and no remapping. Only the source's **test** split is read, never its training split,
and an example whose image or text is in the *target's* training split is dropped
(:func:`pitune_core.data.dedup.seen_in_train`, the project's dedup rule). Every source is its own
shifted set; a target outside every group has none (:func:`no_shift_reason` says why) and gets no
shifted score.

**Corruptions.** :data:`CORRUPTION_LEVELS` holds each corruption's parameter per severity (1 = mildest)
and what it does; they are seeded and deterministic (the same split, corruption, severity and seed
give the same bytes), never change labels, and apply to the part of an example they are defined for
(a vision-language pair gets image corruptions on its image and text corruptions on its text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pitune_core.data.tasks import Split, TaskData, get_task
from pitune_core.spec.vocab import CORRUPTIONS, IMAGE_CORRUPTIONS, SEVERITIES, TEXT_CORRUPTIONS
from pitune_core.data.dedup import seen_in_train

# ----------------------------------------------------------------------------- shifted sets

#: groups of suite tasks that share one label set (same family, same modality, labels meaning the same
#: thing index for index); a target's shift sources are the other members of its group
SHIFT_GROUPS: dict[str, tuple[str, ...]] = {
    "digit images": ("mnist", "opencv_digits", "sklearn_digits", "printed_digits"),  # labels 0..9
    "digit questions": ("mnist_digit_question", "opencv_digit_question", "printed_digit_question"),  # no / yes
    # label 0 negative, 1 positive; rt_polarity's "rotten" / "fresh" are the same two classes in that order
    "review and tweet polarity": ("movie_sentiment", "amazon_sentiment", "tweet_sentiment", "nyt_sentiment",
                                  "rt_polarity"),
}
SHIFT_RULE = ("a target's shifted test sets are the test splits of the other tasks of its group (same family, "
              "same modality, the same labels index for index), each scored on its own, with every example "
              "whose image or text is in the target's training split dropped")
#: why a family's tasks have no shifted set (families whose tasks share no label set)
NO_SHIFT_FAMILIES = {
    "clothing": "every clothing task is its own slice of Fashion-MNIST with its own label set (10 garments, 4 coarse "
                "classes, 3 shoes, a yes/no question): none shares fashion_mnist's 10 classes",
    "topics": "the topic tasks' label sets differ (newsgroups, science groups, Reuters R8, BBC sections)",
    "icons": "the icon tasks' label sets differ (Unicode groups vs Tux Paint categories)",
    "control": "the control tasks have no designed relation to one another",
    "user": "a user's own task has no family",
}


def _group_of(target: str) -> str | None:
    return next((g for g, members in SHIFT_GROUPS.items() if target in members), None)


def shift_sources(target: str) -> tuple[str, ...]:
    """The tasks whose test splits are ``target``'s shifted sets (:data:`SHIFT_RULE`); () when none."""
    g = _group_of(target)
    return () if g is None else tuple(t for t in SHIFT_GROUPS[g] if t != target)


def no_shift_reason(target: str) -> str | None:
    """One line saying why ``target`` has no shifted set (None when it has one)."""
    if shift_sources(target):
        return None
    fam = get_task(target).family
    why = NO_SHIFT_FAMILIES.get(fam, f"no other {fam} task of its modality shares its label set")
    return f"{target}: no shifted test set ({why}); no shifted score"


@dataclass
class ShiftedSet:
    """A source's test split as a shifted set of a target: ``split`` (labels in the target's order),
    ``indices`` of the kept examples in the source's test split, ``dropped`` the examples removed
    because the target's training split holds them."""

    target: str
    source: str
    split: Split
    indices: np.ndarray
    dropped: int


def shifted_set(target: str, source: str, target_data: TaskData | None = None,
                source_data: TaskData | None = None) -> ShiftedSet:
    """``source``'s test split as a shifted set of ``target`` (see the module docstring)."""
    if source not in shift_sources(target):
        raise ValueError(no_shift_reason(target) or f"{source} is not a shift source of {target}; "
                         f"its shift sources are {', '.join(shift_sources(target))}")
    ts, ss = get_task(target), get_task(source)
    if (ts.modality, len(ts.labels), ts.family, ts.concepts) != (ss.modality, len(ss.labels), ss.family, ss.concepts):
        raise ValueError(f"{source} no longer shares {target}'s labels and modality: update SHIFT_GROUPS")
    target_data = target_data if target_data is not None else ts.load()
    source_data = source_data if source_data is not None else ss.load()
    test = source_data.test
    seen = seen_in_train(test, ss.modality, target_data.train, ts.modality)
    keep = np.flatnonzero(~seen)
    return ShiftedSet(target, source, test.subset(keep), keep, int(seen.sum()))


# ----------------------------------------------------------------------------- corruptions

#: every corruption: (its parameter, the parameter's value at severities 1..5, what it does)
CORRUPTION_LEVELS: dict[str, tuple[str, tuple[float, ...], str]] = {
    "gaussian_noise": ("sigma", (0.08, 0.12, 0.18, 0.26, 0.38),
                       "adds Gaussian noise of standard deviation sigma (pixel values scaled to [0, 1]; ImageNet-C's "
                       "levels), clipped to [0, 1]"),
    "blur": ("radius", (0.02, 0.035, 0.05, 0.07, 0.1),
             "Pillow's GaussianBlur with a radius of this fraction of the image's larger side (in pixels)"),
    "contrast": ("factor", (0.4, 0.3, 0.2, 0.1, 0.05),
                 "scales each image's pixels towards its mean value by this factor (ImageNet-C's levels)"),
    "typos": ("rate", (0.02, 0.05, 0.08, 0.12, 0.16),
              "each letter or digit is, with this probability, swapped with the next character or dropped "
              "(even odds)"),
    "casing": ("fraction", (0.2, 0.4, 0.6, 0.8, 1.0),
               "this fraction of the words (drawn at random) is upper-cased, or lower-cased where it already is "
               "upper case. The shipped MiniLM's tokenizer is uncased, so for it this is a control: scores must "
               "not move"),
}
assert tuple(CORRUPTION_LEVELS) == CORRUPTIONS and all(len(v[1]) == len(SEVERITIES) for v in CORRUPTION_LEVELS.values())


def corruptions_for(split: Split) -> tuple[str, ...]:
    """The corruptions that apply to a split: image ones where it has images, text ones where it has texts."""
    return (IMAGE_CORRUPTIONS if split.images is not None else ()) + (TEXT_CORRUPTIONS if split.texts is not None else ())


def corruption_level(corruption: str, severity: int) -> float:
    """The parameter of ``corruption`` at ``severity`` (:data:`CORRUPTION_LEVELS`); a clear error otherwise."""
    if corruption not in CORRUPTION_LEVELS:
        raise ValueError(f"unknown corruption {corruption!r}; choose one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES or isinstance(severity, bool):
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, got {severity!r}")
    return CORRUPTION_LEVELS[corruption][1][SEVERITIES.index(severity)]


def _rng(corruption: str, severity: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), CORRUPTIONS.index(corruption), int(severity)])


def _images(images: np.ndarray, corruption: str, level: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageFilter

    x = images.astype(np.float64) / 255.0
    if corruption == "gaussian_noise":
        x = np.clip(x + rng.normal(scale=level, size=x.shape), 0.0, 1.0)
    elif corruption == "contrast":
        m = x.mean(axis=(1, 2, 3), keepdims=True)
        x = np.clip((x - m) * level + m, 0.0, 1.0)
    else:  # blur
        radius = level * max(images.shape[1:3])
        return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)
                         for im in np.ascontiguousarray(images, dtype=np.uint8)])
    return np.rint(x * 255.0).astype(np.uint8)


def _typos(text: str, rate: float, rng: np.random.Generator) -> str:
    chars, out, i = list(text), [], 0
    while i < len(chars):
        c = chars[i]
        if c.isalnum() and rng.random() < rate:
            if rng.random() < 0.5 and i + 1 < len(chars):
                out += [chars[i + 1], c]  # swap with the next character
                i += 2
                continue
            i += 1  # drop
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _casing(text: str, fraction: float, rng: np.random.Generator) -> str:
    words = text.split(" ")
    pick = rng.random(len(words)) < fraction
    return " ".join((w.lower() if w.isupper() else w.upper()) if p else w for w, p in zip(words, pick))


def corrupt(split: Split, corruption: str, severity: int, seed: int = 0) -> Split:
    """A corrupted copy of ``split`` (labels and order unchanged); deterministic in (split, corruption,
    severity, seed). A corruption that does not apply to the split (text corruptions of an image task,
    or the reverse) is refused."""
    level = corruption_level(corruption, severity)
    if corruption not in corruptions_for(split):
        kind = "images" if corruption in IMAGE_CORRUPTIONS else "texts"
        raise ValueError(f"{corruption} corrupts {kind}, and this split has none")
    rng = _rng(corruption, severity, seed)
    images, texts = split.images, split.texts
    if corruption in IMAGE_CORRUPTIONS:
        images = _images(split.images, corruption, level, rng)
    else:
        fn = _typos if corruption == "typos" else _casing
        texts = [fn(t, level, rng) for t in split.texts]
    return Split(labels=split.labels.copy(), texts=texts, images=images)
