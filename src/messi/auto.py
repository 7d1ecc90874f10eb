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


class MessiConfig(transformers.PretrainedConfig):
    """config.json of a compressed folder: ``base_config`` is the original model's config dict
    (model_type, sizes, labels, ...); messi.json says how the embedding was factored."""

    model_type = "messi"

    def __init__(self, base_config: dict | None = None, **kwargs):
        self.base_config = dict(base_config or {})
        super().__init__(**kwargs)

    def to_base(self) -> transformers.PretrainedConfig:
        """The original model's config object, rebuilt from ``base_config``."""
        from .errors import MessiError

        data = dict(self.base_config)
        model_type = data.get("model_type")
        if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
            raise MessiError(f"config.json's base_config has model_type {model_type!r}, which this transformers "
                             "does not know; upgrade transformers or re-run `messi compress`")
        return transformers.CONFIG_MAPPING[model_type].from_dict(data)


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
        from .compress import load

        return load(pretrained_model_name_or_path)


def register() -> None:
    """Register MessiConfig / MessiModel with transformers' Auto classes (idempotent)."""
    try:
        transformers.AutoConfig.register(MessiConfig.model_type, MessiConfig)
    except ValueError:  # already registered
        pass
    try:
        transformers.AutoModel.register(MessiConfig, MessiModel)
    except ValueError:
        pass
