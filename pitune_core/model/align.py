"""Alignment pre-training of the projector (the only part of the backbone pitune trains).

Both encoders stay frozen; the projector learns to place EfficientNet feature cells where the
MiniLM trunk reads them like words. Objective: contrastive (InfoNCE) between the pooled embedding
of an image's visual tokens and the trunk's embedding of its text, against the other texts of the
batch.

Alignment must never see an evaluation target, or zero-shot and transfer on that target are not
what they claim. The default corpus is therefore disjoint from every task of the suite: public
domain clip art from Debian's ``openclipart-png`` (:data:`OPENCLIPART`), each image paired with a
caption made from its category directory ("a clip art picture of an animal", or of its sub-directory where that names a kind of thing:
"a clip art picture of a bird"). Images that are
exact or near duplicates (same 64-bit difference hash up to :data:`NEAR_DUP_BITS` bits) of any
image in any suite task are dropped from the corpus; :func:`check_disjoint` proves, for a list of
targets, that no alignment image shares a content hash or a near-duplicate hash with their
evaluation splits; the shipped study's projector (``precomputed/backbone``) is aligned this way.
The first study's projector (``studies/v1/backbone``) predates this rule: it was aligned on the
training splits of :data:`ALIGN_TASKS` (``corpus="tasks"`` reproduces it), three of which were
targets of that study's comparison.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitune_core.model.backbone import (Inputs, UnifiedBackbone, VisionConfig, VisionEncoder, save_projector,
                                        task_features)
from pitune_core.model.device import default_device, seed_everything
from pitune_core.model.experts import evaluate, prepare_task
from pitune_core.common import progress
from pitune_core.data.dedup import image_hash
from pitune_core.data.sources import Source, fetch, iter_members
from pitune_core.data.suite import _png_to_rgb
from pitune_core.data.tasks import DATA_VERSION, SPLITS, TASKS, TaskSpec, get_task, list_tasks, load_raw_task_data
from pitune_core.paths import cache_dir


# LEGACY (the first study's projector, studies/v1/backbone): image tasks whose *training* splits it
# was aligned on. Any of them evaluated as a target is not zero-shot; new projectors use clip art instead.
ALIGN_TASKS = ("fashion_mnist", "emoji_group", "tux_category", "tux_caption_match", "tux_category_question",
               "emoji_name_match", "flag_country_match")


#: the default alignment corpus: Debian's public-domain clip art (pinned like every data source)
OPENCLIPART = Source("openclipart-png", "1:0.18+dfsg-19", "deb", "openclipart-png_1:0.18+dfsg-19_all.deb",
                     "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02", 130.9, "public domain")
#: category directories used, and the phrase of their captions ("a clip art picture of ...");
#: the mixed bags (shapes, special, unsorted, logos, buttons, ...) are left out
CLIPART_CATEGORIES = {
    "animals": "an animal", "buildings": "a building", "computer": "a computer or network device",
    "education": "books and school things", "electronics": "an electronic component", "food": "food",
    "geography": "a map", "office": "an office object", "people": "people", "plants": "a plant",
    "recreation": "a leisure activity", "signs_and_symbols": "a sign or symbol", "tools": "a tool",
    "transportation": "a vehicle or transport",
}
#: finer captions from the first sub-directory, where it names a kind of thing ("a clip art picture
#: of a bird"); sub-directories that name a style or a mixed bag fall back to the category phrase.
#: Flags keep a generic caption: country names would teach the flag->country concept of a task.
CLIPART_SUBCATEGORIES = {
    "animals/birds": "a bird", "animals/bugs": "an insect", "animals/dinosaurs": "a dinosaur",
    "animals/fish": "a fish", "animals/mammals": "a mammal", "buildings/furniture": "furniture",
    "buildings/homes": "a house", "computer/buttons": "a button", "computer/hardware": "computer hardware",
    "computer/icons": "a computer icon", "education/books": "a book", "electronics/bulb": "a light bulb",
    "food/beverages": "a drink", "food/breads_and_carbs": "bread", "food/desserts": "a dessert",
    "food/fruit": "a fruit", "food/meats_and_eggs": "meat or eggs", "food/vegetables": "a vegetable",
    "geography/astronomy": "the sky, stars or planets", "office/telephone": "a telephone",
    "people/bodypart": "a part of the body", "people/clothing": "clothing", "people/smilies": "a face",
    "people/stickmen": "a stick figure", "plants/flowers": "a flower", "plants/trees": "a tree",
    "recreation/games": "a game or playing card", "recreation/holiday": "a holiday decoration",
    "recreation/music": "a musical instrument", "recreation/party": "a party", "recreation/sports": "sport",
    "recreation/toys": "a toy", "signs_and_symbols/clocks": "a clock", "signs_and_symbols/flags": "a flag",
    "signs_and_symbols/map_symbols": "a map symbol", "signs_and_symbols/weather": "a weather symbol",
    "tools/weapons": "a weapon", "transportation/boating": "a boat", "transportation/roadsigns": "a road sign",
    "transportation/vehicles": "a vehicle",
}
CLIPART_CAPTIONS = ("subcategory", "category")
CLIPART_SIZE = 96
CLIPART_PER_CATEGORY = 400  # images decoded per category (a seeded sample of the sorted file list)
CLIPART_MAX_PIXELS = 4096 * 4096
NEAR_DUP_BITS = 4  # difference hashes this close (of 64 bits) count as the same picture
CORPORA = ("openclipart", "tasks")


@dataclass
class AlignConfig:
    pairs_per_task: int = 400  # pairs per task (corpus "tasks") or per clip-art category (corpus "openclipart")
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    temperature: float = 0.05
    corpus: str = "openclipart"
    captions: str = "subcategory"  # clip-art captions: "subcategory" (41 finer phrases) or "category" (14)


def clipart_caption(path: str, captions: str = "subcategory") -> str:
    """The caption of a clip-art file, from its directories (``animals/birds/owl.png`` -> a bird)."""
    if captions not in CLIPART_CAPTIONS:
        raise ValueError(f"unknown caption scheme {captions!r}; choose one of {', '.join(CLIPART_CAPTIONS)}")
    parts = path.split("/")
    sub = "/".join(parts[:2]) if len(parts) >= 3 else None
    phrase = CLIPART_SUBCATEGORIES.get(sub) if captions == "subcategory" else None
    return f"a clip art picture of {phrase or CLIPART_CATEGORIES[parts[0]]}"


# ----------------------------------------------------------------------------- the clip-art corpus

def dhash(images: np.ndarray) -> np.ndarray:
    """64-bit difference hash per image (grey, 9x8, left<right), as uint64 (n,)."""
    from PIL import Image

    out = np.zeros(len(images), dtype=np.uint64)
    for i, im in enumerate(images):
        g = np.asarray(Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)).convert("L")
                       .resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
        bits = (g[:, 1:] > g[:, :-1]).ravel()
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def near_duplicates(a: np.ndarray, b: np.ndarray, bits: int = NEAR_DUP_BITS, chunk: int = 512) -> np.ndarray:
    """For each hash in ``a``: does ``b`` hold one within ``bits`` bits? (bool (len(a),))"""
    hit = np.zeros(len(a), dtype=bool)
    if len(a) == 0 or len(b) == 0:
        return hit
    for i in range(0, len(a), chunk):
        d = _popcount(np.bitwise_xor(a[i:i + chunk, None], b[None, :]))
        hit[i:i + chunk] = (d <= bits).any(1)
    return hit


def suite_images() -> dict[str, dict[str, np.ndarray]]:
    """Every image of every suite task, per task and split (raw splits: a superset of what is served)."""
    out = {}
    for spec in TASKS.values():
        if spec.modality == "language":
            continue
        data = load_raw_task_data(spec)
        out[spec.name] = {s: data.split(s).images for s in SPLITS}
    return out


def clipart_corpus(per_category: int = CLIPART_PER_CATEGORY, size: int = CLIPART_SIZE) -> dict:
    """The clip-art alignment corpus, decoded, deduplicated against the suite, cached.

    Returns ``{"images": uint8 (n,size,size,3), "records": [{"path", "category", "caption"}],
    "dropped": [{"path", "reason"}]}``.
    """
    import json

    from safetensors.numpy import load_file, save_file

    import io
    import warnings

    from PIL import Image

    base = cache_dir() / "align" / f"openclipart-{OPENCLIPART.version.replace(':', '_')}-s{size}-n{per_category}-d{DATA_VERSION}"
    if (base / "records.json").exists() and (base / "images.safetensors").exists():
        meta = json.loads((base / "records.json").read_text())
        return {"images": load_file(str(base / "images.safetensors"))["images"], **meta}
    deb = fetch(OPENCLIPART)
    prefix = "usr/share/openclipart/png/"
    names: dict[str, list[str]] = {c: [] for c in CLIPART_CATEGORIES}
    for name, _ in iter_members(deb, lambda n: n.startswith(prefix) and n.endswith(".png")
                                and n[len(prefix):].split("/")[0] in CLIPART_CATEGORIES and n.count("/") >= 5):
        names[name[len(prefix):].split("/")[0]].append(name)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are checked below
    rng = np.random.default_rng(0)
    wanted = {n for c in sorted(names) for n in rng.permutation(sorted(names[c]))[:per_category].tolist()}
    records, images, dropped = [], [], []
    for name, data in sorted(iter_members(deb, lambda n: n in wanted)):
        rel = name[len(prefix):]
        try:
            with Image.open(io.BytesIO(data)) as probe:
                pixels = probe.size[0] * probe.size[1]
            if pixels > CLIPART_MAX_PIXELS:  # a few posters are 10^8 pixels: slow, and not needed at 96 px
                dropped.append({"path": rel, "reason": f"too large ({pixels} pixels)"})
                continue
            img = _png_to_rgb(data, size)
        except Exception as e:  # a file Pillow cannot read: leave it out, say so
            dropped.append({"path": rel, "reason": f"unreadable ({type(e).__name__})"})
            continue
        cat = rel.split("/")[0]
        records.append({"path": rel, "category": cat, "caption": clipart_caption(rel, "category")})
        images.append(img)
    images = np.stack(images)
    # drop exact and near duplicates of any suite image (any task, any split), and within the corpus
    suite = suite_images()
    suite_exact = {image_hash(im) for t in suite.values() for ims in t.values() for im in ims}
    suite_dh = np.concatenate([dhash(ims) for t in suite.values() for ims in t.values()])
    own = dhash(images)
    near = near_duplicates(own, suite_dh)
    keep, seen = [], set()
    for i, r in enumerate(records):
        h = image_hash(images[i])
        if h in suite_exact:
            dropped.append({"path": r["path"], "reason": "exact duplicate of a suite image"})
        elif near[i]:
            dropped.append({"path": r["path"], "reason": "near duplicate of a suite image"})
        elif h in seen:
            dropped.append({"path": r["path"], "reason": "duplicate within the corpus"})
        else:
            seen.add(h)
            keep.append(i)
    meta = {"records": [records[i] for i in keep], "dropped": dropped, "source": OPENCLIPART.pin,
            "licence": OPENCLIPART.licence, "near_dup_bits": NEAR_DUP_BITS}
    base.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(images[keep])}, str(base / "images.safetensors"))
    (base / "records.json").write_text(json.dumps(meta))
    return {"images": images[keep], **meta}


def check_disjoint(align_images: np.ndarray, targets: list[str], bits: int = NEAR_DUP_BITS) -> dict[str, dict[str, int]]:
    """Per target and evaluation split: alignment images equal to (``exact``) or within ``bits`` of
    (``near``) one of its images. All zeros means the alignment never saw an evaluation target."""
    mine = {image_hash(im) for im in align_images}
    mine_dh = dhash(align_images)
    out = {}
    for t in targets:
        data = get_task(t).load()
        for s in ("val", "test"):
            ims = data.split(s).images
            if ims is None:
                out[f"{t}/{s}"] = {"exact": 0, "near": 0}
                continue
            exact = sum(image_hash(im) in mine for im in ims)
            near = int(near_duplicates(dhash(ims), mine_dh, bits).sum())
            out[f"{t}/{s}"] = {"exact": exact, "near": near}
    return out


def clipart_pairs(cfg: "AlignConfig", vision: VisionConfig):
    """(visual features, texts) of the clip-art corpus: ``pairs_per_task`` per category, seeded."""
    corpus = clipart_corpus()
    rng = np.random.default_rng(cfg.seed)
    cats = np.array([r["category"] for r in corpus["records"]])
    idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(cats == c))[: cfg.pairs_per_task]
                                  for c in sorted(set(cats))]))
    feats = VisionEncoder(vision).features(corpus["images"][idx], desc="clip-art features")
    return feats, [clipart_caption(corpus["records"][i]["path"], cfg.captions) for i in idx]


def alignment_pairs(tasks: list[TaskSpec], cfg: AlignConfig, vision: VisionConfig):
    """(visual features, texts) from the training splits of image tasks."""
    rng = np.random.default_rng(cfg.seed)
    feats, texts = [], []
    for spec in tasks:
        data = spec.load()
        f = task_features(data, config=vision)
        if f is None:
            continue
        tr = data.train
        if spec.modality == "vision":
            idx = np.arange(len(tr))
            txt = [spec.verbalizers[y] for y in tr.labels]
        else:  # vision-language: only true pairs (label "yes") carry a caption of the image
            idx = np.flatnonzero(tr.labels == 1)
            txt = list(tr.texts)
        idx = rng.permutation(idx)[: cfg.pairs_per_task]
        feats.append(f["train"][torch.as_tensor(idx)])
        texts.extend(txt[i] for i in idx)
    if not feats:
        raise ValueError("no image tasks given: alignment needs vision or vision-language tasks")
    return torch.cat(feats), texts


def train_projector(tasks: list[str] | None = None, out: str | Path | None = None, cfg: AlignConfig = AlignConfig(),
                    device: torch.device | None = None, on_step=None) -> dict:
    """Train and save the projector; returns its metrics (zero-shot val accuracy per image task).

    ``cfg.corpus="openclipart"`` (default) aligns on the clip-art corpus, disjoint from every task;
    naming ``tasks`` (or ``corpus="tasks"``) aligns on those tasks' training splits instead, which
    then can no longer be zero-shot targets.
    """
    if tasks:
        cfg = replace(cfg, corpus="tasks")
    if cfg.corpus not in CORPORA:
        raise ValueError(f"unknown alignment corpus {cfg.corpus!r}; choose one of {', '.join(CORPORA)}")
    specs = [get_task(t) for t in (tasks or ALIGN_TASKS)] if cfg.corpus == "tasks" else []
    held_out = [t for t in list_tasks() if t.modality != "language" and t.name not in {s.name for s in specs}]
    device = device or default_device()
    seed_everything(cfg.seed)
    bb = UnifiedBackbone(device=device)  # fresh projector
    if cfg.corpus == "tasks":
        vis, texts = alignment_pairs(specs, cfg, bb.vision)
    else:
        vis, texts = clipart_pairs(cfg, bb.vision)
    uniq = sorted(set(texts))
    tindex = {t: i for i, t in enumerate(uniq)}
    target = torch.tensor([tindex[t] for t in texts])
    with torch.no_grad():
        text_emb = torch.cat([bb.encode_texts(uniq[i:i + 128]) for i in range(0, len(uniq), 128)])
    params = list(bb.projector.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(texts) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    t0, losses = time.time(), []
    bar = progress(range(total), desc="align projector")
    order = torch.randperm(len(texts), generator=g)
    for step in bar:
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(texts), generator=g)
        idx = order[(step % steps_per_epoch) * cfg.batch_size:][: cfg.batch_size]
        img = bb.encode(Inputs(None, vis[idx], len(idx)))
        # contrast against the distinct texts of this batch (several images may share a label)
        batch_t = torch.unique(target[idx])
        logits = img @ text_emb[batch_t].to(device).T / cfg.temperature
        y = torch.searchsorted(batch_t, target[idx]).to(device)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step({"stage": "align", "step": step + 1, "total": total, "loss": losses[-1]})
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bb.projector.eval()
    metrics = {"pairs": len(texts), "distinct_texts": len(uniq), "steps": total, "final_loss": float(np.mean(losses[-20:])),
               "train_time_s": round(time.time() - t0, 1), "zero_shot_val": {}}
    for spec in specs + held_out:  # zero-shot on validation splits: how usable the visual tokens are
        _, tensors = prepare_task(spec, bb)
        metrics["zero_shot_val"][spec.name] = evaluate(bb, None, tensors["val"], spec)[spec.metric]
    meta = {"format": "pitune-projector/1", "trunk": "all-MiniLM-L6-v2", "vision": bb.vision.id,
            "image_size": bb.vision.image_size, "grid": bb.vision.grid, "hidden": bb.trunk.config.hidden_size,
            "corpus": cfg.corpus if cfg.corpus == "tasks" else OPENCLIPART.pin,
            "tasks": [s.name for s in specs], "held_out": [s.name for s in held_out], "config": asdict(cfg), "metrics": metrics,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if out is not None:
        save_projector(bb.projector, Path(out), meta)
    return meta
