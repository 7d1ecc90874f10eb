"""Compressed folders as a transformers architecture: ``AutoModel.from_pretrained(OUT)`` works.

A compressed folder's config.json is a ``MessiConfig`` (model_type "messi") that carries the
original model's config in ``base_config``. Importing messi registers it with transformers'
``AutoConfig`` / ``AutoModel``, so any code that loads a folder through the Auto classes, such
as sentence-transformers' stock ``Transformer`` module, gets the compressed model back through
``messi.load``: safetensors and JSON only, no remote code, nothing imported from the folder.

    import messi                                   # registers "messi" with transformers
    from sentence_transformers import SentenceTransformer
    SentenceTransformer("out_messi").encode(["a sentence"])
"""

from __future__ import annotations

import transformers

from .hf_config import MessiConfig
from .persist import load

__all__ = ["MessiConfig", "MessiModel", "register"]


class MessiModel(transformers.PreTrainedModel):
    """Entry point for ``AutoModel.from_pretrained`` on a compressed folder.

    Never instantiated: ``from_pretrained`` returns ``messi.load(folder)``, the original class
    (e.g. ``BertModel``) with its factored embedding.
    """

    config_class = MessiConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):  # noqa: D417
        """``messi.load(pretrained_model_name_or_path)``; hub and remote-code options are ignored
        (a compressed folder is local and never runs code)."""
        return load(pretrained_model_name_or_path)


#: The Auto classes a compressed folder loads through (each gives back the class that was compressed).
AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSequenceClassification")


def register() -> None:
    """Register MessiConfig / MessiModel with transformers' Auto classes (idempotent)."""
    try:
        transformers.AutoConfig.register(MessiConfig.model_type, MessiConfig)
    except ValueError:  # already registered
        pass
    for name in AUTO_CLASSES:
        try:
            getattr(transformers, name).register(MessiConfig, MessiModel)
        except ValueError:
            pass
