"""What is compressed in a Hugging Face model: where the targets are, and how factored layers
are swapped in (at compression, at load, and on the other processes of a distributed run).

Targets:
- the input embedding (``get_input_embeddings()``), with a tied output head following it;
- every ``nn.Linear`` inside the encoder's numbered blocks (attention q/k/v/out, FFN in/out):
  modules whose qualified name passes through a ``ModuleList`` index ("...layer.3...").
  Poolers, classifier and LM heads are not in a numbered block and are left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import MessiError
from .layers import TiedOutputEmbedding, _LowRankEmbedding
from .linear import FactorizedLinear, ProjectiveLinear, _FactoredLinear

from .folder import TARGETS

#: The name the allocator gives the input embedding among the Linear layers' names.
EMBEDDING = "<input embedding>"


def check_target(target: str) -> str:
    """``target`` or MessiError naming the choices."""
    if target not in TARGETS:
        raise MessiError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return target


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input ``nn.Embedding``, or MessiError (none, or already compressed)."""
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if getter else None
    if isinstance(emb, _LowRankEmbedding):
        raise MessiError("this model's embedding is already compressed; start from the original model")
    if not isinstance(emb, nn.Embedding):
        raise MessiError(
            f"{type(model).__name__} has no input embedding (get_input_embeddings() gave "
            f"{type(emb).__name__}); pass a Hugging Face text model"
        )
    return emb


def is_tied(model: nn.Module, emb: nn.Embedding) -> bool:
    """Whether the output head's weight is the input embedding's tensor."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    w = getattr(out, "weight", None)
    return isinstance(w, torch.Tensor) and w.data_ptr() == emb.weight.data_ptr()


def install_embedding(model: nn.Module, layer: _LowRankEmbedding, tied: bool) -> None:
    """Put ``layer`` in as the input embedding (and as the tied output projection)."""
    if tied:
        old = model.get_output_embeddings()
        model.set_output_embeddings(TiedOutputEmbedding(layer, getattr(old, "bias", None)))
        model.config.tie_word_embeddings = False  # stop transformers re-tying to a `weight`
    model.set_input_embeddings(layer)


def _in_numbered_block(name: str) -> bool:
    return any(part.isdigit() for part in name.split("."))


def linear_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of the encoder's blocks, by qualified name, in model order."""
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and _in_numbered_block(name)}
    if any(isinstance(m, _FactoredLinear) for m in model.modules()):
        raise MessiError("this model's Linear layers are already compressed; start from the original model")
    if not found:
        raise MessiError(f"{type(model).__name__} has no nn.Linear inside numbered encoder blocks; "
                         "use --target embedding")
    return found


def empty_linear(entry: dict) -> _FactoredLinear:
    """The factored Linear layer one entry of messi.json's ``linear_layers`` describes, zeros."""
    inp, out, j, bias = entry["in_features"], entry["out_features"], entry["rank"], entry["bias"]
    if entry["method"] == "svd":
        return FactorizedLinear(inp, out, j, bias)
    return ProjectiveLinear(inp, out, j, entry["k"], entry["orientation"], bias)


def install_linear(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Replace the submodule ``name`` by ``layer``."""
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, layer)
