"""How token states become one sentence vector: the pooling a sentence-transformers folder
declares (modules.json, its Pooling module's config), and the pooling itself.

Used by calibration (what the model's user reads of a sentence) and by evaluation (STS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MessiError

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence vector: ``mode`` in POOLING_MODES, then optional
    L2 normalisation; inputs truncated to ``max_length`` tokens."""

    mode: str = "mean"
    normalize: bool = False
    max_length: int = 512


def read_pooling(folder: str | Path | None) -> Pooling:
    """The pooling a sentence-transformers folder declares (modules.json, the Pooling module's
    config, sentence_bert_config.json's max_seq_length); mean pooling for any other folder."""
    if folder is None or not (Path(folder) / "modules.json").is_file():
        return Pooling()
    folder = Path(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        mode, normalize = "mean", False
        for m in modules:
            kind = str(m["type"]).rsplit(".", 1)[-1]
            if kind == "Pooling":
                cfg = json.loads((folder / m["path"] / "config.json").read_text(encoding="utf-8"))
                on = [name for name in POOLING_MODES + ("lasttoken", "weightedmean")
                      if cfg.get(f"pooling_mode_{name}_tokens", cfg.get(f"pooling_mode_{name}_token", False))]
                if len(on) != 1 or on[0] not in POOLING_MODES:
                    raise MessiError(f"{folder}: pooling {on or 'none'} is not supported; "
                                     f"eval-sts supports one of {', '.join(POOLING_MODES)}")
                mode = on[0]
            elif kind == "Normalize":
                normalize = True
        max_length = 512
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length") or 512)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MessiError(f"{folder}: cannot read its sentence-transformers settings ({e}); "
                         "fix modules.json or the pooling config") from e
    return Pooling(mode, normalize, max_length)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence vectors (b, d) from token states ``hidden`` (b, t, d) and ``mask`` (b, t)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    summed, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    return summed / (count if mode == "mean" else count.sqrt())
