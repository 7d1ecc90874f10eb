"""messi: compress the embedding layer of Hugging Face models with projective clustering (MESSI),
guided by calibration text; score it with zero-shot STS-B.

>>> import messi
>>> model = messi.load_pretrained()                       # built-in all-MiniLM-L6-v2
>>> messi.compress(model, messi.CompressionConfig(method="messi", ratio=0.4, k=3))  # embedding -40%
>>> messi.save(model, "out_messi")
>>> same = messi.load("out_messi")
"""

from . import export  # noqa: E402,F401  (messi.export.export_onnx)
from .auto import MessiConfig, MessiModel  # noqa: E402
from .auto import register as _register_auto
from .calibration import (  # noqa: E402
                          Calibration,
                          CalibrationData,
                          calibrate,
                          output_sensitivity,
                          prepare,
                          token_counts,
                          weights_from_counts,
)
from .clustering import ProjectiveClustering  # noqa: E402
from .compress import compress  # noqa: E402
from .config import CalibrationSettings, CompressionConfig  # noqa: E402
from .errors import MessiError  # noqa: E402
from .evaluate import eval_sts  # noqa: E402
from .factorize import messi_factorize, rank_for_ratio, svd_factorize  # noqa: E402
from .families import family_of  # noqa: E402
from .folder import read_info  # noqa: E402
from .layers import FactorizedEmbedding, ProjectiveEmbedding, TiedOutputEmbedding  # noqa: E402
from .linear import FactorizedLinear, ProjectiveLinear  # noqa: E402
from .models import load_pretrained, load_tokenizer, resolve_model  # noqa: E402
from .persist import load, save  # noqa: E402
from .version import __version__  # noqa: E402,F401

__all__ = [
    "ProjectiveClustering", "compress", "save", "load", "load_pretrained", "load_tokenizer",
    "read_info", "MessiError", "FactorizedEmbedding", "ProjectiveEmbedding", "TiedOutputEmbedding",
    "messi_factorize", "svd_factorize", "rank_for_ratio", "__version__", "calibrate", "Calibration",
    "token_counts", "weights_from_counts", "output_sensitivity", "eval_sts", "resolve_model", "MessiConfig", "MessiModel",
    "FactorizedLinear", "ProjectiveLinear", "CompressionConfig", "CalibrationSettings", "CalibrationData", "prepare",
    "family_of",
]

_register_auto()  # AutoConfig / AutoModel know compressed folders from now on
