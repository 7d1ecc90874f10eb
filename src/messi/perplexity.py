"""Training-free quality of a causal LM: perplexity and next-token accuracy on held-out text.

The text: RTE dev (premise, then hypothesis) and the first 250 QNLI dev questions and sentences,
about 28,600 Gemma tokens. No calibration default reads them (those read GLUE *train* splits),
so a compression calibrated by default is scored on text it never saw. The texts are joined
with blank lines into one stream, cut into non-overlapping windows of ``window`` tokens, each
opened by the tokenizer's BOS; every window predicts its own tokens after the first.
Deterministic: no sampling, no seed.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import checks
from .datasets import read_split
from .errors import MessiError
from .families import CausalLM, family_of
from .models import load_pretrained, load_tokenizer

#: QNLI dev rows added after RTE dev.
QNLI_ROWS = 250
DATA = "RTE dev (premise + hypothesis) + the first 250 QNLI dev rows (question + sentence)"


def held_out_texts(data_dir=None) -> list[str]:
    """The held-out texts, in order."""
    texts = []
    for task, limit in (("rte", None), ("qnli", QNLI_ROWS)):
        for row in read_split(task, "dev", data_dir)[:limit]:
            texts += [row.text_a, row.text_b]
    return [t for t in texts if t and t.strip()]


def windows(tokenizer, texts: list[str], window: int) -> list[torch.Tensor]:
    """Non-overlapping windows (each (window,) int64 or shorter at the end) of the joined text,
    each starting with BOS when the tokenizer has one."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    step = window - (1 if bos is not None else 0)
    out = []
    for start in range(0, len(ids), step):
        chunk = ids[start:start + step]
        if len(chunk) < 2:
            break
        out.append(torch.tensor(([bos] if bos is not None else []) + chunk, dtype=torch.long))
    return out


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], window: int = 512, progress: bool = False,
               max_tokens: int | None = None) -> dict:
    """{"perplexity", "next_token_accuracy", "tokens" (predicted), "windows", "window"};
    ``max_tokens``: only the first windows that hold about that many (a quicker, noisier score)."""
    checks.integer("window", window, 2, 1 << 20)
    if max_tokens is not None:
        checks.integer("max_tokens", max_tokens, 1)
    if not isinstance(family_of(model), CausalLM):
        raise MessiError(f"{type(model).__name__} is not a causal LM; eval-ppl scores next-token prediction "
                         "(use eval-sts for sentence encoders)")
    model.eval()
    device = next(model.parameters()).device
    nll, correct, count = 0.0, 0, 0
    chunks = windows(tokenizer, texts, window)
    if max_tokens is not None:
        chunks = chunks[:max(1, math.ceil(max_tokens / (window - 1)))]
    for ids in tqdm(chunks, desc="perplexity", unit="window", disable=not progress):
        ids = ids[None].to(device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        target = ids[0, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    if not count:
        raise MessiError("the held-out text gave no tokens to predict")
    ppl = math.exp(nll / count)
    if not math.isfinite(ppl):
        raise MessiError("the model's perplexity is not finite; its weights are damaged")
    return {"perplexity": ppl, "next_token_accuracy": correct / count, "tokens": count, "windows": len(chunks),
            "window": window}


def eval_ppl(model_ref=None, data_dir=None, window: int = 512, progress: bool = False,
             max_tokens: int | None = None) -> dict:
    """Perplexity of a causal LM given by built-in name or folder (original or compressed) on
    the held-out text; the result names the model and the data."""
    tokenizer = load_tokenizer(model_ref)
    if tokenizer is None:
        raise MessiError(f"no tokenizer files with {model_ref}; save the tokenizer with the model")
    texts = held_out_texts(data_dir)
    result = perplexity(load_pretrained(model_ref), tokenizer, texts, window, progress, max_tokens)
    return {**result, "data": DATA, "model": str(model_ref)}
