"""What a compression is: one validated dataclass, written to messi.json and read back.

``CompressionConfig`` is to messi what ``quantization_config`` is to transformers and a
``quantize_`` config to torchao: the whole recipe (method, size, what is compressed, how the
budget is spent, the clustering's settings, the calibration's settings) in one object, checked
once where it is made. ``messi.compress(model, config, calibration=...)`` applies it; the
command line builds it from its flags; ``messi.load`` gives it back as ``model.compression_config``.

    >>> cfg = CompressionConfig(method="messi", ratio=0.6, k=5)
    >>> CompressionConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from . import checks
from .errors import MessiError

METHODS = ("svd", "messi")
TARGETS = ("embedding", "linear", "all")
ALLOCATIONS = ("global", "uniform", "shared-rank")
ORIENTATIONS = ("rows", "columns")
LOSSES = ("l2", "l1", "huber")
#: Storage of the factors: None keeps the model's float precision; 8 and 4 store the coordinates
#: as integers with scales (``quantize.py``).
BITS = (None, 8, 4)
#: Coordinates per fp16 scale at 4 bits (the common GGUF / torchao group size).
DEFAULT_GROUP_4BIT = 32


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise MessiError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class CalibrationSettings:
    """How calibration data is made from text (``calibration.prepare``).

    sources : text files or ``glue:TASK`` names, read and combined.
    alpha, power : row weight = (count + alpha) ** power.
    output_texts : texts whose backward passes measure the embedding's output metric
        (``calibration.output_sensitivity``); 0 turns it off; None: the model family's default.
    text_column : the text column of .jsonl/.csv/.tsv sources.
    """

    sources: tuple[str, ...] = ()
    alpha: float = 10.0
    power: float = 1.0
    output_texts: int | None = None
    text_column: str = "text"

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        if not all(isinstance(s, str) and s for s in self.sources):
            raise MessiError(f"calibration sources must be non-empty strings, got {list(self.sources)!r}")
        checks.real("--weight-alpha (the weighting's alpha)", self.alpha, 0, low_open=True)
        checks.real("--weight-power (the weighting's power)", self.power, 0, 4)
        if self.output_texts is not None:
            checks.integer("--output-texts", self.output_texts, 0)


@dataclass(frozen=True)
class CompressionConfig:
    """The recipe of one compression, validated when made (MessiError naming the field).

    method : "messi" (k subspaces) or "svd" (one subspace; k is then 1).
    ratio : compression of the targeted parameters taken together, 1 - new/old, in (0, 1).
    size : instead of ratio (target "embedding"): the stored bytes as a fraction of the original
        table's, in (0, 1); the rank and the bits (8 or 4, unless ``bits`` fixes them) that give
        the lowest fit error within it are chosen.
    k : subspaces of MESSI; with target "linear"/"all" and the global allocation, the largest
        k tried per layer.
    rank : subspace dimension j (target "embedding" only); None: the largest j reaching ratio.
    exact_rows : (target "embedding", with calibration row weights) keep this many rows, those of
        the largest weights (the most used tokens), exact beside the factors; they count in the
        budget (ratio then gives a smaller rank) and the fit spends nothing on them.
    target : "embedding", "linear" (every Linear of the model's numbered blocks) or "all".
    allocation : how "linear"/"all" spend the budget: "global", "uniform" or "shared-rank".
    bits : None (float factors) or 8 / 4: coordinates stored as integers with fp16 scales, bases
        in float16 (every factored layer of the target; layers kept dense stay as they are).
    group_size : coordinates per scale; None: one scale per row for 8 bits, groups of
        ``DEFAULT_GROUP_4BIT`` for 4 bits.
    seed, n_init, max_iter, tol, loss, init_size : the projective clustering's settings
        (``ProjectiveClustering``); init_size None runs every restart on every row.
    activation_aware : with calibration inputs, whether Linear fits minimise output error.
    calibration : how calibration data is made from text, when it is (None: no calibration).
    """

    method: str = "messi"
    ratio: float = 0.4
    size: float | None = None
    k: int = 3
    rank: int | None = None
    exact_rows: int = 0
    target: str = "embedding"
    allocation: str = "global"
    bits: int | None = None
    group_size: int | None = None
    seed: int = 0
    n_init: int = 4
    max_iter: int = 50
    tol: float = 1e-4
    loss: str = "l2"
    init_size: int | None = 32768
    activation_aware: bool = True
    calibration: CalibrationSettings | None = field(default=None)

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        _choice("target", self.target, TARGETS)
        _choice("allocation", self.allocation, ALLOCATIONS)
        _choice("loss", self.loss, LOSSES)
        _choice("bits", self.bits, BITS)
        if self.bits is None and self.group_size is not None:
            raise MessiError("group_size needs bits (8 or 4); give --bits too")
        if self.bits == 4 and self.group_size is None:
            object.__setattr__(self, "group_size", DEFAULT_GROUP_4BIT)
        if self.group_size is not None:
            checks.integer("group_size", self.group_size, 1)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) or not 0.0 < float(self.ratio) < 1.0:
            raise MessiError(f"ratio must be strictly between 0 and 1 (e.g. 0.4 for -40%), got {self.ratio!r}")
        object.__setattr__(self, "ratio", float(self.ratio))
        if self.size is not None:
            object.__setattr__(self, "size", checks.real("size", self.size, 0, 1, low_open=True))
            if self.size >= 1:
                raise MessiError(f"size must be below 1 (a fraction of the table's bytes), got {self.size:g}")
            if self.target != "embedding" or self.rank is not None:
                raise MessiError("size chooses the rank of the embedding: use it with target embedding and no rank")
        object.__setattr__(self, "k", 1 if self.method == "svd" else checks.integer("k", self.k, 1))
        if self.rank is not None:
            object.__setattr__(self, "rank", checks.integer("rank", self.rank, 1))
            if self.target != "embedding":
                raise MessiError("rank is chosen per layer for target linear/all; give ratio instead")
        object.__setattr__(self, "exact_rows", checks.integer("exact_rows", self.exact_rows, 0))
        if self.exact_rows and (self.target != "embedding" or self.size is not None):
            raise MessiError("exact_rows keeps rows of the embedding table exact: use it with target embedding "
                             "and --ratio or --rank (not --size)")
        object.__setattr__(self, "seed", checks.seed("seed", self.seed))
        object.__setattr__(self, "n_init", checks.integer("n_init", self.n_init, 1))
        object.__setattr__(self, "max_iter", checks.integer("max_iter", self.max_iter, 1))
        object.__setattr__(self, "tol", checks.real("tol", self.tol))
        if self.init_size is not None:
            object.__setattr__(self, "init_size", checks.integer("init_size", self.init_size, 1))
        if not isinstance(self.activation_aware, bool):
            raise MessiError(f"activation_aware must be true or false, got {self.activation_aware!r}")
        if isinstance(self.calibration, dict):
            object.__setattr__(self, "calibration", CalibrationSettings(**self.calibration))
        if self.calibration is not None and not isinstance(self.calibration, CalibrationSettings):
            raise MessiError(f"calibration must be CalibrationSettings or None, got {type(self.calibration).__name__}")

    def clustering_settings(self) -> dict:
        """Keyword arguments of ``factorize`` / ``ProjectiveClustering`` this config fixes."""
        return {"seed": self.seed, "n_init": self.n_init, "max_iter": self.max_iter, "tol": self.tol,
                "loss": self.loss, "init_size": self.init_size}

    def replace(self, **changes) -> CompressionConfig:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready: what messi.json keeps under "config"."""
        data = dataclasses.asdict(self)
        if self.calibration is not None:
            data["calibration"]["sources"] = list(self.calibration.sources)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CompressionConfig:
        """The config ``to_dict`` wrote; unknown keys are refused (a newer messi wrote them)."""
        if not isinstance(data, dict):
            raise MessiError(f"a compression config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MessiError(f"unknown compression config field {unknown[0]!r}; upgrade messi or re-run `messi compress`")
        try:
            return cls(**data)
        except TypeError as e:  # e.g. a calibration dict with unknown keys
            raise MessiError(f"compression config does not parse ({e}); re-run `messi compress`") from e

    @classmethod
    def from_info(cls, info: dict) -> CompressionConfig:
        """The config of a messi.json: its "config" entry, or, for folders written before the
        config existed, the one their recorded fields imply."""
        if "config" in info:
            return cls.from_dict(info["config"])
        emb = info if info.get("target", "embedding") == "embedding" else (info.get("embedding") or {})
        legacy = {key: info[key] for key in ("method", "ratio", "k", "target", "allocation", "seed", "n_init",
                                            "max_iter", "tol", "loss", "init_size", "activation_aware")
                  if info.get(key) is not None}
        if info.get("target", "embedding") == "embedding" and emb.get("rank") is not None:
            legacy["rank"] = emb["rank"]
        legacy.setdefault("method", emb.get("method", "messi"))
        legacy.setdefault("ratio", info.get("ratio") or 0.5)
        if "init_size" in info and info["init_size"] is None:
            legacy["init_size"] = None
        return cls.from_dict(legacy)
