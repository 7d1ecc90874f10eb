"""config.json of a compressed folder: a transformers config class (model_type "messi") that
carries the original model's config. Registered with transformers by ``auto.py``."""

from __future__ import annotations

import transformers
from huggingface_hub.errors import StrictDataclassError

from .checks import config_sizes
from .errors import MessiError


class MessiConfig(transformers.PretrainedConfig):
    """config.json of a compressed folder: ``base_config`` is the original model's config dict
    (model_type, sizes, labels, ...); messi.json says how the embedding was factored."""

    model_type = "messi"

    def __init__(self, base_config: dict | None = None, **kwargs):
        self.base_config = dict(base_config or {})
        super().__init__(**kwargs)

    def to_base(self) -> transformers.PretrainedConfig:
        """The original model's config object, rebuilt from ``base_config``."""
        data = dict(self.base_config)
        model_type = data.get("model_type")
        if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
            raise MessiError(f"config.json's base_config has model_type {model_type!r}, which this transformers "
                             "does not know; upgrade transformers or re-run `messi compress`")
        config_sizes(data, "config.json's base_config")  # before any size is used to allocate
        try:
            return transformers.CONFIG_MAPPING[model_type].from_dict(data)
        except StrictDataclassError as e:  # transformers' own type checks of the fields
            raise MessiError(f"config.json's base_config is invalid ({' '.join(str(e).split())}); the config was "
                             "edited or damaged, re-run `messi compress`") from e
