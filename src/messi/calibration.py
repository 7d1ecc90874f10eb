"""How much each embedding row matters: token counts of calibration text, turned into row weights.

A task's text touches about two thirds of a 30k vocabulary and a few thousand tokens carry
almost all of it. Weighting the rows of the embedding by how often the data uses them tells the
factorisation where its error hurts. The math (``ProjectiveClustering.fit(sample_weight=...)``)
only sees the weights; this module turns text into them.

Sources (``read_texts``):
- ``glue:TASK``: the train split's texts of a GLUE task (both sentences of a pair);
- a ``.txt`` file: one text per line;
- a ``.jsonl`` file: one JSON object per line, text in ``text_column`` (default "text");
- a ``.csv`` / ``.tsv`` file with a header row, text in ``text_column``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import checks
from .config import CalibrationSettings
from .errors import MessiError
from .families import DEFAULT_OUTPUT_TEXTS as DEFAULT_OUTPUT_TEXTS  # re-exported: the calibration defaults in one place
from .families import family_of, on_model_device
from .pooling import Pooling
from .sources import read_all
from .sources import read_texts as read_texts  # re-exported: calibration's sources

#: The default weighting rule, (count + alpha) ** power, chosen by `benchmarks/sts_curve.py
#: select` on 2,000 STS-B *train* pairs (best mean Spearman over SVD, MESSI k=3 and k=5 at 60% and
#: 80%; docs/benchmarks.md); the dev pairs we report were not used. Weight proportional to use,
#: smoothed by 10 so that rare and unseen tokens keep a floor.
DEFAULT_ALPHA = 10.0
DEFAULT_POWER = 1.0
#: ``DEFAULT_OUTPUT_TEXTS`` (families.py): calibration texts whose backward passes measure the
#: embedding's output metric (``output_sensitivity``) in ``messi compress`` and the demo: the best
#: of 0, 250, 1000 and 4000 on STS-B *train* pairs (`benchmarks/sts_curve.py select-metric`).
#: Calibration text when none is given for Linear-layer compression: GLUE train texts of tasks
#: other than STS-B (whose dev pairs are the zero-shot score we report).
DEFAULT_SOURCES = ("glue:sst2", "glue:cola", "glue:mrpc", "glue:rte")


def token_counts(tokenizer, texts, num_embeddings: int | None = None, batch_size: int = 1024) -> torch.Tensor:
    """How often every token id occurs when ``tokenizer`` encodes ``texts`` as the model sees them
    (special tokens included, no truncation).

    Returns an int64 tensor (n,), n = ``num_embeddings`` (default: the tokenizer's length).
    """
    if isinstance(texts, (str, bytes)):
        raise MessiError("token_counts takes a list of texts, got one string; wrap it: [text]")
    texts = list(texts)
    n = int(num_embeddings if num_embeddings is not None else len(tokenizer))
    counts = torch.zeros(n, dtype=torch.int64)
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start:start + batch_size], add_special_tokens=True)["input_ids"]
        flat = torch.tensor([t for row in ids for t in row], dtype=torch.int64)
        if flat.numel() and int(flat.max()) >= n:
            raise MessiError(f"the tokenizer produced id {int(flat.max())} but the embedding has {n} rows; "
                             "use the tokenizer saved with this model")
        counts += torch.bincount(flat, minlength=n)
    return counts


def check_weighting(alpha: float, power: float) -> None:
    """MessiError unless alpha is finite and > 0 and power is in [0, 4]."""
    checks.real("--weight-alpha (the weighting's alpha)", alpha, 0, low_open=True)
    checks.real("--weight-power (the weighting's power)", power, 0, 4)


def weights_from_counts(counts: torch.Tensor, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> torch.Tensor:
    """Row weights (n,) float64 = (count + alpha) ** power, scaled to mean 1.

    ``alpha`` > 0 keeps every row in the fit (a token unseen today is typed tomorrow);
    ``power`` sets how far frequency counts (0: all rows equal; 1: proportional to use).
    """
    check_weighting(alpha, power)
    w = (counts.double() + alpha) ** power
    return w / w.mean()


@dataclass
class Calibration:
    """Token counts of calibration text and the weighting applied to them.

    ``counts`` (n,) int64; ``weights`` (n,) float64 with mean 1. ``record()`` is what messi.json
    keeps: sources, texts, tokens, distinct tokens, a sha256 of the counts, the weighting.
    """

    sources: list[str]
    counts: torch.Tensor
    n_texts: int
    alpha: float = DEFAULT_ALPHA
    power: float = DEFAULT_POWER
    weights: torch.Tensor = field(init=False, repr=False)
    #: how the embedding's output metric was measured (``output_sensitivity``), if it was
    output_metric: dict | None = None

    def __post_init__(self):
        self.weights = weights_from_counts(self.counts, self.alpha, self.power)

    @property
    def counts_sha256(self) -> str:
        """sha256 of the counts as little-endian int64: the same text gives the same digest."""
        return hashlib.sha256(self.counts.numpy().astype("<i8").tobytes()).hexdigest()

    def record(self) -> dict:
        """JSON-ready summary for messi.json."""
        return {"sources": list(self.sources), "texts": self.n_texts, "tokens": int(self.counts.sum()),
                "distinct_tokens": int((self.counts > 0).sum()), "counts_sha256": self.counts_sha256,
                "weighting": {"rule": "(count + alpha) ** power", "alpha": self.alpha, "power": self.power},
                **({"output_metric": self.output_metric} if self.output_metric else {})}


def calibrate(tokenizer, sources: list[str], num_embeddings: int, data_dir=None, text_column: str = "text",
              alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, texts: list[str] | None = None) -> Calibration:
    """Read every source, count the tokens of all texts together, weigh the rows. ``texts``:
    the sources' texts when the caller has already read them (``read_all``)."""
    if not sources:
        raise MessiError("no calibration source given; pass --calibration FILE or glue:TASK")
    check_weighting(alpha, power)  # before reading anything
    if texts is None:
        texts = read_all(sources, data_dir, text_column)
    counts = token_counts(tokenizer, texts, num_embeddings)
    return Calibration(list(sources), counts, len(texts), alpha, power)


def calibration_batches(tokenizer, texts, max_texts: int = 256, batch_size: int = 32,
                        max_length: int = 128) -> list[dict]:
    """Model inputs for activation statistics: up to ``max_texts`` of ``texts``, evenly spread
    over the list (deterministic), tokenised in padded batches of ``batch_size`` texts of
    similar length (shortest first). ``texts``: strings, or (first, second) pairs, tokenised
    as pairs the way a pair task's model reads them.

    Returns a list of dicts of tensors (input_ids, attention_mask, ...), each (batch, tokens).
    """
    texts = [t for t in texts if (t[0] if isinstance(t, tuple) else t).strip()]
    if not texts:
        raise MessiError("the calibration sources hold no text; give a file or glue:TASK with text")
    step = max(1, len(texts) // max_texts)
    chosen = texts[::step][:max_texts]
    # batched by length: each batch pads to its own longest text, so sorting cuts the padded
    # positions every calibration pass computes (the statistics are sums over the real tokens)
    lengths = [len(ids) for ids in _tokenize(tokenizer, chosen, truncation=True, max_length=max_length)["input_ids"]]
    chosen = [t for _, t in sorted(zip(lengths, chosen), key=lambda pair: pair[0])]
    return [dict(_tokenize(tokenizer, chosen[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(chosen), batch_size)]


def _tokenize(tokenizer, texts: list, **kwargs):
    """``tokenizer`` on strings, or on (first, second) pairs as pairs."""
    if texts and isinstance(texts[0], tuple):
        return tokenizer([a for a, _ in texts], [b for _, b in texts], **kwargs)
    return tokenizer(texts, **kwargs)


def has_sequence_head(model) -> bool:
    """Whether ``model`` ends in a sequence-level task head (its family is ``SequenceClassifier``)."""
    return family_of(model).name == "sequence-classifier"


@torch.no_grad()
def model_outputs(model, batches: list[dict]) -> torch.Tensor:
    """What the model gives its user on ``batches`` (its family's ``reference_outputs``): the
    logits (texts, labels) of a task head, else the last hidden states at every real token
    (tokens, hidden); float32. The yardstick of a compressed layer's damage."""
    family = family_of(model)
    return torch.cat([family.reference_outputs(model, on_model_device(model, batch)) for batch in batches])


class _Enough(Exception):
    """Raised by a hook to end a forward pass once every wanted input was seen."""


def _layer_inputs(model, batch: dict, modules: dict) -> dict[str, torch.Tensor]:
    """One forward pass of ``batch``: the input of each module in ``modules`` (name: module) at
    the real tokens, (tokens, in) float64 on the CPU. The pass stops as soon as all of them
    have seen their input (the layers after them never run)."""
    batch = on_model_device(model, batch)
    mask, seen = batch["attention_mask"].bool(), {}

    def hook(name):
        def record(_module, args):
            x = args[0]
            x = x[mask] if x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
            seen[name] = x.double().cpu()
            if len(seen) == len(modules):
                raise _Enough
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in modules.items()]
    try:
        family_of(model).backbone(model)(**batch)
    except _Enough:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def input_moments(model, batches: list[dict], names) -> dict[str, torch.Tensor]:
    """Second moments C = E[x x^T] (in, in), float64, of the inputs x of each Linear layer in
    ``names`` over the real tokens of ``batches`` (padding excluded); a layer that reads one
    vector per text (BERT's pooler) averages over the texts instead. Each forward pass stops
    as soon as all of them have seen their input (the layers after them never run)."""
    modules = {name: model.get_submodule(name) for name in names}
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for name, m in modules.items()}
    rows = dict.fromkeys(modules, 0)
    for batch in batches:
        for name, x in _layer_inputs(model, batch, modules).items():
            sums[name] += x.T @ x
            rows[name] += x.shape[0]
    return {name: s / max(rows[name], 1) for name, s in sums.items()}


def output_sensitivity(model, batches: list[dict], pooling=None, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """How a change of an input-embedding row reaches what the model gives its user: the
    average, over the real tokens of ``batches``, of J^T J (d, d) float64, where J is the
    Jacobian of the model's output (a task head's logits; else the sentence embedding pooled as
    ``pooling`` says, ``evaluate.Pooling``, mean pooling by default) with respect to that
    token's embedding row. A row error e then costs about e G e^T per occurrence, so fitting the
    table under this metric (``compress(embedding_metric=...)``) spends the error where the
    output does not feel it.

    Estimated with one Gaussian probe z per text and batch (E[J^T z z^T J] = J^T J): one
    backward pass per batch, seeded by ``seed``, so the result is deterministic.
    """
    if not batches:
        raise MessiError("output_sensitivity needs at least one calibration batch; give calibration text")
    pooling = pooling or Pooling()
    family = family_of(model)
    emb = model.get_input_embeddings()
    d = emb.embedding_dim
    total, tokens = torch.zeros(d, d, dtype=torch.float64), 0
    generator = torch.Generator().manual_seed(seed)
    captured = {}

    def leaf(_module, _args, out):  # the rows as looked up, a leaf whose gradient is J^T z
        captured["rows"] = out.detach().requires_grad_()
        return captured["rows"]

    handle = emb.register_forward_hook(leaf)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="output metric", unit="batch", disable=not progress):
            batch = on_model_device(model, batch)
            mask = batch["attention_mask"].bool()
            with torch.enable_grad():
                out = family.user_output(model, batch, pooling)
                z = torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out)
                (grad,) = torch.autograd.grad((out * z).sum(), captured["rows"])
            g = grad[mask].double().cpu()
            total += g.T @ g
            tokens += g.shape[0]
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(tokens, 1)


@torch.no_grad()
def head_moments(model, batches: list[dict], progress: bool = False) -> torch.Tensor:
    """E[h h^T] (d, d) float64 of the final hidden states h that the output head reads, over the
    real tokens of ``batches``: a tied table's row error e costs about e E[h h^T] e^T in logits."""
    if not batches:
        raise MessiError("head_moments needs at least one calibration batch; give calibration text")
    family = family_of(model)
    total, tokens = None, 0
    for batch in tqdm(batches, desc="head metric", unit="batch", disable=not progress):
        h = family.reference_outputs(model, on_model_device(model, batch)).double()
        total = h.T @ h if total is None else total + h.T @ h
        tokens += h.shape[0]
    return total / max(tokens, 1)


def output_metric(model, batches: list[dict], pooling=None, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """The embedding's output metric (d, d) of ``model`` on ``batches`` as its family measures it
    (``output_sensitivity``, or ``head_moments`` for a tied LM head), and what messi.json keeps
    of it: how many texts, which output, how."""
    pooling = pooling or Pooling()
    if family_of(model).metric_kind(model) == "head":
        record = {"texts": sum(len(b["input_ids"]) for b in batches), "output": "tied LM head logits",
                  "probe": "E[h h^T] of the final hidden states"}
        return head_moments(model, batches, progress), record
    output = family_of(model).describe_output(pooling)
    record = {"texts": sum(len(b["input_ids"]) for b in batches), "output": output,
              "probe": "one Gaussian probe per text, seed 0"}
    return output_sensitivity(model, batches, pooling, progress=progress), record


@dataclass
class CalibrationData:
    """What ``compress`` reads of calibration, made from text by ``prepare`` or given by hand.

    row_weights : (n,) non-negative weight of every embedding row (``Calibration.weights``).
    embedding_metric : (d, d) positive semi-definite G: the embedding fit minimises
        sum_r w_r e_r G e_r^T over the row errors e_r (``output_sensitivity``).
    inputs : calibration batches (``calibration_batches``) for Linear targets: their input
        moments and each matrix's measured sensitivity come from them.
    activations : Linear layer name -> (in, in) input second moments, if already collected.
    record : what messi.json keeps under "calibration" (``Calibration.record()``).
    """

    row_weights: torch.Tensor | None = None
    embedding_metric: torch.Tensor | None = None
    inputs: list | None = None
    activations: dict | None = None
    record: dict | None = None

    def is_empty(self) -> bool:
        """Whether nothing in it changes a fit."""
        return all(x is None for x in (self.row_weights, self.embedding_metric, self.inputs, self.activations))


def prepare(model, tokenizer, settings: CalibrationSettings, target: str = "embedding", pooling: Pooling | None = None,
            data_dir=None, progress: bool = False) -> CalibrationData:
    """Calibration data for compressing ``model`` as ``target`` from the text ``settings`` names:
    row weights from token counts; for Linear targets the calibration batches; for the
    embedding target the output metric on ``settings.output_texts`` texts (the model family's
    default when None; ``pooling``: how the user pools sentence embeddings)."""
    if tokenizer is None:
        raise MessiError("calibration needs the model's tokenizer, and the model folder has none")
    texts = read_all(list(settings.sources), data_dir, settings.text_column)  # read once for all uses
    cal = calibrate(tokenizer, list(settings.sources), model.get_input_embeddings().num_embeddings, data_dir,
                    settings.text_column, settings.alpha, settings.power, texts=texts)
    inputs = calibration_batches(tokenizer, texts) if target != "embedding" else None
    n_out = family_of(model).default_output_texts if settings.output_texts is None else settings.output_texts
    metric = None
    if n_out and _measures_table_metric(model, target):
        batches = calibration_batches(tokenizer, texts, max_texts=n_out)
        metric, cal.output_metric = output_metric(model, batches, pooling, progress=progress)
    return CalibrationData(row_weights=cal.weights, embedding_metric=metric, inputs=inputs, record=cal.record())


def _measures_table_metric(model, target: str) -> bool:
    """Whether ``prepare`` measures the table's output metric for ``target``: always for the
    embedding alone; for "all" only where it is a tied LM head's E[h h^T] (forward passes only,
    and without it the head's logits are fitted blind); a sentence encoder's whole-model fit keeps
    the defaults measured without its backward-pass metric (docs/benchmarks.md section 6)."""
    if target == "embedding":
        return True
    return target == "all" and family_of(model).metric_kind(model) == "head"
