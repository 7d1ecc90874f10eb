"""Model families: where a Hugging Face model keeps what messi compresses, and what its user reads.

One class per kind of model. A family knows
- its input embedding and its output head, and whether the head is tied to the embedding;
- the Linear layers of its numbered blocks (encoder layers, decoder layers), by qualified name;
- what its user reads, which calibration measures the damage on: ``reference_outputs`` (no
  gradient: the allocation's yardstick) and ``user_output`` (differentiable: the embedding's
  output metric);
- how many calibration texts measure that metric by default.

Adding a family is one new subclass placed in ``FAMILIES`` before the families it refines.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import MessiError
from .layers import _LowRankEmbedding
from .linear import _FactoredLinear
from .pooling import Pooling, pool

#: Calibration texts whose backward passes measure the embedding's output metric, for families
#: whose user reads token states or sentence embeddings (chosen on STS-B train pairs).
DEFAULT_OUTPUT_TEXTS = 4000


def _in_numbered_block(name: str) -> bool:
    return any(part.isdigit() for part in name.split("."))


def on_model_device(model: nn.Module, batch: dict) -> dict:
    """``batch``'s tensors on the device of ``model``'s parameters."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


class Family:
    """A kind of Hugging Face model; subclasses say which classes they cover (``matches``)."""

    name = "model"
    #: what ``reference_outputs`` holds, for messi.json and tables
    output_name = "last hidden states"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether ``model`` belongs to this family."""
        return True

    def input_embedding(self, model: nn.Module) -> nn.Embedding:
        """The input ``nn.Embedding``, or MessiError (none, or already compressed)."""
        getter = getattr(model, "get_input_embeddings", None)
        emb = getter() if getter else None
        if isinstance(emb, _LowRankEmbedding):
            raise MessiError("this model's embedding is already compressed; start from the original model")
        if not isinstance(emb, nn.Embedding):
            raise MessiError(f"{type(model).__name__} has no input embedding (get_input_embeddings() gave "
                             f"{type(emb).__name__}); pass a Hugging Face text model")
        return emb

    def output_head(self, model: nn.Module) -> nn.Module | None:
        """The output projection onto the vocabulary (LM heads), or None."""
        getter = getattr(model, "get_output_embeddings", None)
        return getter() if getter else None

    def is_tied(self, model: nn.Module, emb: nn.Module) -> bool:
        """Whether the output head's weight is the input embedding's tensor."""
        w = getattr(self.output_head(model), "weight", None)
        return isinstance(w, torch.Tensor) and w.data_ptr() == emb.weight.data_ptr()

    def embedding_scale(self, emb: nn.Module) -> float | None:
        """The factor the family multiplies looked-up rows by (Gemma: sqrt(d)), or None."""
        scale = getattr(emb, "embed_scale", None)
        if scale is None:
            return None
        return float(scale.item() if isinstance(scale, torch.Tensor) else scale)

    def linear_layers(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` inside the numbered blocks, by qualified name, in model order;
        poolers and heads (outside the blocks) are left out. MessiError if there is none or the
        model is already compressed."""
        if any(isinstance(m, _FactoredLinear) for m in model.modules()):
            raise MessiError("this model's Linear layers are already compressed; start from the original model")
        found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and _in_numbered_block(name)}
        if not found:
            raise MessiError(f"{type(model).__name__} has no nn.Linear inside numbered blocks; use --target embedding")
        return found

    def backbone(self, model: nn.Module) -> nn.Module:
        """The model without its head (``base_model``), whose first output is the token states."""
        return getattr(model, "base_model", model)

    def reference_outputs(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """What the user reads for ``batch``, float32 on the CPU: here the last hidden states at
        every real (unpadded) token (tokens, hidden)."""
        hidden = self.backbone(model)(**batch)[0]
        return hidden[batch["attention_mask"].bool()].float().cpu()

    def user_output(self, model: nn.Module, batch: dict, pooling: Pooling) -> torch.Tensor:
        """Differentiable: the sentence embeddings (texts, d) pooled as ``pooling`` says."""
        hidden = self.backbone(model)(**batch)[0]
        vectors = pool(hidden, batch["attention_mask"], pooling.mode).float()
        return torch.nn.functional.normalize(vectors, dim=-1) if pooling.normalize else vectors

    def describe_output(self, pooling: Pooling) -> str:
        """``user_output`` in words, for messi.json."""
        return f"sentence embedding ({pooling.mode} pooling{', normalised' if pooling.normalize else ''})"

    default_output_texts = DEFAULT_OUTPUT_TEXTS

    #: MESSI's k for this family's embedding table when the user gives none; None: the tool's
    #: default (chosen on a sentence encoder)
    embedding_k: int | None = None
    #: share of the table's parameter budget spent on rows kept exact (the most used tokens)
    #: when the user gives no number
    embedding_exact_share: float = 0.0

    def default_exact_rows(self, num_embeddings: int, ratio: float) -> int:
        """Rows kept exact by default in a table of ``num_embeddings`` rows compressed by
        ``ratio``: ``embedding_exact_share`` of its parameter budget, a row costing d numbers."""
        return min(int(self.embedding_exact_share * (1 - ratio) * num_embeddings), num_embeddings - 1)
    #: whether `messi compress` calibrates the embedding table on the default text unasked
    calibrate_table: bool = False

    def metric_kind(self, model: nn.Module) -> str:
        """How calibration measures what the user feels of an embedding row's error:
        "jacobian" (``calibration.output_sensitivity``: backward passes through the model) or
        "head" (the second moments of the final hidden states that a tied head reads)."""
        return "jacobian"


class SentenceEncoder(Family):
    """A bare encoder (``BertModel``, ``MPNetModel``): its user reads token states or the pooled
    sentence embedding (sentence-transformers)."""

    name = "sentence-encoder"


class MaskedLM(Family):
    """An encoder with a masked-LM head (``...ForMaskedLM``), usually tied to the embedding;
    measured, like the encoder, on its token states."""

    name = "masked-lm"

    @classmethod
    def matches(cls, model):
        return type(model).__name__.endswith("ForMaskedLM")


class SequenceClassifier(Family):
    """A task head on a sequence (``...ForSequenceClassification``: GLUE classifiers and
    regressors). Its user reads the logits: errors in token states the head never reads do not
    count (selected on STS-B train rows, docs/benchmarks.md section 6)."""

    name = "sequence-classifier"
    output_name = "task head logits"
    default_output_texts = 0  # nothing chose the output-aware fit for a task head: opt-in

    @classmethod
    def matches(cls, model):
        return type(model).__name__.endswith("ForSequenceClassification")

    def reference_outputs(self, model, batch):
        return model(**batch).logits.float().cpu()

    def user_output(self, model, batch, pooling):
        return model(**batch).logits.float()

    def describe_output(self, pooling):
        return "task head logits"


class CausalLM(Family):
    """A decoder with a language-model head (``...ForCausalLM``: Gemma, Llama, Qwen2, GPT-2),
    tied or not. Its user reads next-token logits; they are a fixed function of the final
    hidden states the head reads, so those states (tokens, hidden) are the yardstick (the
    logits themselves would be tokens x vocabulary)."""

    name = "causal-lm"
    output_name = "final hidden states (the LM head's input)"

    #: MESSI's subspaces for the (tied) vocabulary table when the user names none: chosen on
    #: Gemma 3 270M at -50% by perplexity on MRPC + SST-2 *dev* text (no calibration or reported
    #: text): 19.58 / 18.11 / 17.64 for k = 5 / 10 / 20 (docs/benchmarks.md section 9)
    embedding_k = 20
    #: the share of the table's budget spent on its most used rows kept exact, the rank lowered
    #: to pay for them (an exact row carries no coordinates). Chosen at k = 20, -50%, by the mean
    #: change on two selection texts (MRPC + SST-2 dev, 13.73 uncompressed; QNLI dev rows 2000+
    #: whose texts are not among the reported first 250, 26.27): 45 / 60 / 75% (rank 213 / 170 /
    #: 118) gave 14.53 / 14.57 / 14.71 and 30.15 / 29.92 / 29.83, +10.3 / +10.0 / +10.3% on
    #: average (docs/benchmarks.md section 9)
    embedding_exact_share = 0.6
    #: uncalibrated, a tied vocabulary table loses the model (Gemma -50%: perplexity 120 for
    #: MESSI, 1,088 for SVD, against 33.7 and 59.4 calibrated)
    calibrate_table = True

    @classmethod
    def matches(cls, model):
        return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))

    #: texts whose forward passes measure the head-side metric (no backward passes: cheap)
    default_output_texts = 1000

    def user_output(self, model, batch, pooling):
        hidden = self.backbone(model)(**batch)[0]
        return hidden.float() * batch["attention_mask"].unsqueeze(-1).to(torch.float32)

    def describe_output(self, pooling):
        return self.output_name

    def metric_kind(self, model):
        """A tied table is the head: its row r's logit error is e_r . h, so E[h h^T] of the final
        hidden states is the metric (the Jacobian of the input side, through 18 blocks and a
        262k vocabulary, costs far more; the issue measured the head metric helping)."""
        return "head" if self.is_tied(model, model.get_input_embeddings()) else "jacobian"


#: Most specific first: the first family that matches a model is its family.
FAMILIES: tuple[type[Family], ...] = (SequenceClassifier, CausalLM, MaskedLM, SentenceEncoder)


def family_of(model: nn.Module) -> Family:
    """The family of ``model`` (an instance of the first class in FAMILIES that matches)."""
    return next(cls() for cls in FAMILIES if cls.matches(model))
