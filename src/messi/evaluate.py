"""Training-free quality: zero-shot STS-B with the model's own sentence embeddings.

The Spearman correlation between the cosine similarity of two sentences' embeddings and the
gold similarity score, over the STS-B pairs, is deterministic (no training, no seed) and
takes seconds: the cleanest measure of what compressing a sentence-embedding model costs.
Sentence embeddings are pooled as the model's sentence-transformers settings say (its
modules.json and pooling config); a plain Hugging Face folder gets mean pooling over the
attention mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from . import checks
from .datasets import read_split
from .errors import MessiError
from .models import load_pretrained, load_tokenizer, resolve_model
from .pooling import Pooling, pool, read_pooling

__all__ = ["Pooling", "pool", "read_pooling", "encode", "sts_pairs", "sts_score", "eval_sts"]

@torch.inference_mode()
def encode(model, tokenizer, texts: list[str], pooling: Pooling = Pooling(), batch_size: int = 64,
           progress: bool = False) -> torch.Tensor:
    """Sentence embeddings (len(texts), d) of ``texts``, in the input order.

    Texts are batched in length order (less padding); the result does not depend on it beyond
    rounding.
    """
    model.eval()
    device = next(model.parameters()).device
    max_length = min(pooling.max_length, getattr(tokenizer, "model_max_length", 512) or 512)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [None] * len(texts)
    for start in tqdm(range(0, len(texts), batch_size), desc="encoding", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], pooling.mode).float()
        if pooling.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        for i, v in zip(idx, vectors.cpu()):
            out[i] = v
    return torch.stack(out)


def sts_pairs(split: str = "dev", data_dir=None, limit: int | None = None):
    """STS-B pairs of ``split`` ("dev" or "train"): (sentences1, sentences2, gold scores 0..5)."""
    if split not in ("dev", "train"):
        raise MessiError(f"--split must be dev or train, got {split!r}")
    if limit is not None:
        checks.integer("limit", limit, 1)
    rows = read_split("stsb", split, data_dir)
    if limit is not None:
        rows = rows[:limit]
    return [r.text_a for r in rows], [r.text_b for r in rows], [float(r.label) for r in rows]


def sts_score(model, tokenizer, pooling: Pooling, pairs, batch_size: int = 64, progress: bool = False) -> dict:
    """Spearman and Pearson (x 100) of cosine similarity against the gold scores of ``pairs``."""
    a, b, gold = pairs
    if len(gold) < 3:
        raise MessiError(f"need at least 3 STS pairs to correlate, got {len(gold)}")
    emb = encode(model, tokenizer, list(a) + list(b), pooling, batch_size, progress)
    cos = torch.nn.functional.cosine_similarity(emb[: len(a)], emb[len(a):], dim=-1).double().numpy()
    if not np.isfinite(cos).all():
        raise MessiError("the model gives NaN or infinite sentence embeddings; its weights are damaged "
                         "(re-run `messi compress`, or check the original model)")
    return {"spearman": 100 * float(stats.spearmanr(cos, gold).statistic),
            "pearson": 100 * float(stats.pearsonr(cos, gold).statistic), "pairs": len(gold)}


def eval_sts(model_ref=None, data_dir=None, split: str = "dev", batch_size: int = 64, limit: int | None = None,
             progress: bool = False) -> dict:
    """Zero-shot STS-B of a model given by built-in name, Hugging Face folder or compressed folder.

    Returns ``{"spearman", "pearson", "pairs", "split", "pooling", "model"}``; correlations x 100.
    """
    pairs = sts_pairs(split, data_dir, limit)
    folder = Path(model_ref) if model_ref is not None and Path(model_ref).is_dir() else resolve_model(model_ref)
    pooling = read_pooling(folder)
    tokenizer = load_tokenizer(model_ref)
    if tokenizer is None:
        raise MessiError(f"no tokenizer files in {folder}; save the tokenizer with the model")
    result = sts_score(load_pretrained(model_ref), tokenizer, pooling, pairs, batch_size, progress)
    return {**result, "split": split, "pooling": pooling.mode + ("+normalize" if pooling.normalize else ""),
            "model": str(model_ref if model_ref is not None else "minilm")}
