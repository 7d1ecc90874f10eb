"""messi: compress the embedding layer of Hugging Face models with projective clustering (MESSI),
guided by calibration text; score it with zero-shot STS-B.

>>> import messi
>>> model = messi.load_pretrained()                       # built-in all-MiniLM-L6-v2
>>> messi.compress(model, method="messi", ratio=0.4, k=3)  # embedding -40%
>>> messi.save(model, "out_messi")
>>> same = messi.load("out_messi")
"""

__version__ = "0.1.0"

from .auto import MessiConfig, MessiModel, register as _register_auto  # noqa: E402
from .calibration import Calibration, calibrate, output_sensitivity, token_counts, weights_from_counts  # noqa: E402
from .clustering import ProjectiveClustering  # noqa: E402
from .compress import compress, load, load_pretrained, load_tokenizer, read_info, save  # noqa: E402
from .errors import MessiError  # noqa: E402
from .factorize import messi_factorize, rank_for_ratio, svd_factorize  # noqa: E402
from .evaluate import eval_sts  # noqa: E402
from .layers import FactorizedEmbedding, ProjectiveEmbedding, TiedOutputEmbedding  # noqa: E402
from .linear import FactorizedLinear, ProjectiveLinear  # noqa: E402
from .models import resolve_model  # noqa: E402

__all__ = [
    "ProjectiveClustering", "compress", "save", "load", "load_pretrained", "load_tokenizer",
    "read_info", "MessiError", "FactorizedEmbedding", "ProjectiveEmbedding", "TiedOutputEmbedding",
    "messi_factorize", "svd_factorize", "rank_for_ratio", "__version__", "calibrate", "Calibration",
    "token_counts", "weights_from_counts", "output_sensitivity", "eval_sts", "resolve_model", "MessiConfig", "MessiModel",
    "FactorizedLinear", "ProjectiveLinear",
]

_register_auto()  # AutoConfig / AutoModel know compressed folders from now on
