"""Someone else's script: LoRA adapters trained with plain transformers + peft, no pitune code.

The producing side of the library tests (``tests/test_library_import.py`` checks, by reading this
file, that it imports nothing of pitune). It trains a LoRA per task on any BERT-like ``AutoModel``
folder by label-as-text matching (mean-pooled, normalised embeddings of a text and of its label's
words) and saves it with ``save_pretrained``, the way a user's own script would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _embed(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tok = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    out = model(**tok).last_hidden_state
    m = tok["attention_mask"].unsqueeze(-1).float()
    return F.normalize((out * m).sum(1) / m.sum(1), dim=-1)


def train_adapter(base_dir: str, texts: list[str], labels: list[int], label_words: list[str], out: str,
                  r: int = 2, alpha: int = 4, steps: int = 6, lr: float = 3e-3, seed: int = 0,
                  target_modules=("query", "value"), **extra) -> str:
    """Train one LoRA adapter for ``steps`` steps (batch 8) and ``save_pretrained`` it to ``out``;
    ``extra`` goes into peft's ``LoraConfig`` as is (e.g. ``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModel.from_pretrained(base_dir),
                           LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.05,
                                      **extra))
    model.eval()  # no dropout: a deterministic few steps
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    y_all = torch.tensor(labels)
    for _ in range(steps):
        idx = torch.randperm(len(texts), generator=g)[:8].tolist()
        x = _embed(model, tokenizer, [texts[i] for i in idx])
        w = _embed(model, tokenizer, list(label_words))
        loss = F.cross_entropy(20.0 * x @ w.T, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    return out
