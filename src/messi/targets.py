"""What is compressed in a Hugging Face model: where the targets are, and how factored layers
are swapped in (at compression, at load, and on the other processes of a distributed run).

Targets (found by the model's family, ``families.py``):
- the input embedding (``get_input_embeddings()``), with a tied output head following it;
- every ``nn.Linear`` inside the numbered blocks (attention q/k/v/out, FFN in/out, a decoder's
  gate/up/down): modules whose qualified name passes through a ``ModuleList`` index
  ("...layer.3..."). Poolers, classifier and LM heads are not in a numbered block.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TARGETS
from .errors import MessiError
from .families import family_of
from .layers import TiedOutputEmbedding, _LowRankEmbedding
from .linear import FactorizedLinear, ProjectiveLinear, _FactoredLinear

#: The name the allocator gives the input embedding among the Linear layers' names.
EMBEDDING = "<input embedding>"


def check_target(target: str) -> str:
    """``target`` or MessiError naming the choices."""
    if target not in TARGETS:
        raise MessiError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return target


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The model's input ``nn.Embedding`` (``families``), or MessiError (none, or already compressed)."""
    return family_of(model).input_embedding(model)


def is_tied(model: nn.Module, emb: nn.Embedding) -> bool:
    """Whether the output head's weight is the input embedding's tensor."""
    return family_of(model).is_tied(model, emb)


def install_embedding(model: nn.Module, layer: _LowRankEmbedding, tied: bool) -> None:
    """Put ``layer`` in as the input embedding (and as the tied output projection)."""
    if tied:
        old = model.get_output_embeddings()
        model.set_output_embeddings(TiedOutputEmbedding(layer, getattr(old, "bias", None)))
        model.config.tie_word_embeddings = False  # stop transformers re-tying to a `weight`
    model.set_input_embeddings(layer)


def linear_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of the model's numbered blocks, by qualified name, in model order."""
    return family_of(model).linear_layers(model)


def empty_linear(entry: dict) -> _FactoredLinear:
    """The factored Linear layer one entry of messi.json's ``linear_layers`` describes, zeros."""
    inp, out, j, bias = entry["in_features"], entry["out_features"], entry["rank"], entry["bias"]
    layer = (FactorizedLinear(inp, out, j, bias) if entry["method"] == "svd" else
             ProjectiveLinear(inp, out, j, entry["k"], entry["orientation"], bias))
    if entry.get("bits") is not None:
        layer.quantize_(entry["bits"], entry.get("group_size"))
    return layer


def install_linear(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Replace the submodule ``name`` by ``layer``."""
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, layer)


def distinct_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(name -> tensor, each distinct tensor of the state dict once; alias name -> the name it
    shares its tensor with): a tied table is stored and counted once."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t
    return tensors, aliases
