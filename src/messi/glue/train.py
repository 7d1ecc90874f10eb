"""Fine-tune and evaluate sequence classifiers on a GLUE task with the Hugging Face Trainer.

The Trainer runs unchanged on one CPU, one GPU, or several under ``accelerate launch`` /
``torchrun``. Nothing is saved by the Trainer itself: callers save what they want atomically.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from .. import checks, distributed
from ..datasets import Example, Task
from ..errors import MessiError
from ..folder import check_replaceable
from ..io import atomic_dir, check_writable_target, write_json
from ..linear import _FactoredLinear
from ..models import _from_pretrained, _new_weights, _summary, load_tokenizer, resolve_model
from ..persist import install_empty, is_messi_folder, load, save
from ..targets import install_embedding, install_linear
from .metrics import compute_metrics


@dataclass
class TrainConfig:
    """Fine-tuning settings; the defaults are Hugging Face run_glue's."""

    epochs: float = 3.0
    learning_rate: float = 2e-5
    batch_size: int = 32
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42

    def validate(self, max_positions: int | None = None) -> "TrainConfig":
        """MessiError naming the first bad option (finite, in range, fits), before any work."""
        checks.real("--epochs", self.epochs, 0, 1e6, low_open=True)
        checks.real("--learning-rate", self.learning_rate, 0, 1.0, low_open=True)
        checks.integer("--batch-size", self.batch_size, 1, 1 << 16)
        checks.integer("--max-seq-length", self.max_seq_length, 8, max_positions)
        checks.optional_count("--max-train-samples", self.max_train_samples)
        checks.optional_count("--max-eval-samples", self.max_eval_samples)
        checks.seed("--seed", self.seed)
        return self


#: Named settings: "hf" is run_glue's recipe, "cpu" fits a 2-core laptop (short sequences,
#: a 2000-row train subset, a larger learning rate for the few steps).
PRESETS = {
    "hf": TrainConfig(),
    "cpu": TrainConfig(epochs=3.0, learning_rate=5e-5, batch_size=32, max_seq_length=128,
                       max_train_samples=2000),
}


def _configure(config, task: Task):
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    names = task.labels or ("score",)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    return config


def as_classifier(base: nn.Module, task: Task) -> nn.Module:
    """A sequence classifier for ``task`` whose encoder is ``base`` (compressed or not).

    If ``base`` already is a classifier with the right number of labels it is returned as is;
    otherwise a new head is put on top of a copy of its weights.
    """
    if "ForSequenceClassification" in type(base).__name__ and base.config.num_labels == task.num_labels:
        return base
    config = _configure(copy.deepcopy(base.config), task)
    clf = transformers.AutoModelForSequenceClassification.from_config(config)
    embedding = base.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        install_embedding(clf, copy.deepcopy(embedding), tied=False)
    encoder = getattr(base, "base_model", base)
    for name, module in encoder.named_modules():  # factored Linear layers: the same structure
        if isinstance(module, _FactoredLinear):
            install_linear(clf.base_model, name, copy.deepcopy(module))
    missing, _ = clf.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise MessiError(f"cannot put a {task.name} head on {type(base).__name__}: "
                         f"weights {missing[:3]} are missing; use a plain encoder model")
    if hasattr(base, "messi_config"):
        clf.messi_config = _renamed_layers(base.messi_config, _prefix(base), _prefix(clf))
    return clf


def _prefix(model: nn.Module) -> str:
    """Where the encoder sits inside ``model`` ("" for a bare encoder, "bert." in a classifier)."""
    encoder = getattr(model, "base_model", model)
    return next(name + "." for name, m in model.named_modules() if m is encoder).lstrip(".")


def _renamed_layers(info: dict, old: str, new: str) -> dict:
    """messi.json's ``info`` with its Linear layers' names moved from prefix ``old`` to ``new``."""
    if not info.get("linear_layers") or old == new:
        return info
    layers = [{**e, "name": new + e["name"].removeprefix(old)} for e in info["linear_layers"]]
    return {**info, "linear_layers": layers}


def load_classifier(model_ref, task: Task, seed: int | None = None) -> nn.Module:
    """Classifier for ``task`` from a built-in name, a Hugging Face folder or a messi folder.

    A new head's initial weights are drawn from ``seed`` alone, so a run with a given seed
    starts from the same classifier whatever ran before it in the process (None: from torch's
    global generator, as Hugging Face draws them); the global generator is left as it was."""
    if seed is None:
        return _load_classifier(model_ref, task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _load_classifier(model_ref, task)


def _load_classifier(model_ref, task: Task) -> nn.Module:
    if is_messi_folder(model_ref):
        return as_classifier(load(model_ref), task)
    path = resolve_model(model_ref)
    config = _configure(transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                                trust_remote_code=False), task)
    model, info = _from_pretrained(transformers.AutoModelForSequenceClassification, path, config=config,
                                   ignore_mismatched_sizes=True)
    # a new classification head is the point of fine-tuning; any other new weight is not
    new = _new_weights(info, allowed_prefixes=HEAD_PREFIXES)
    if new:
        raise MessiError(f"the checkpoint in {path} lacks encoder weights ({_summary(new)}); "
                         "they would be random. Give a complete model folder")
    model.messi_load_report = {"class": type(model).__name__,
                               "new_head_weights": sorted(_new_weights(info))}
    return model


#: Weight names a new sequence-classification head may initialise (BERT, DistilBERT, RoBERTa,
#: MPNet heads and BERT's pooler, which sentence-transformers checkpoints may lack).
HEAD_PREFIXES = ("classifier.", "pre_classifier.", "score.", "bert.pooler.", "pooler.")


#: The file list a plain (uncompressed) classifier folder gets from ``save_classifier``, so that
#: a later run knows it may replace that folder and nothing else.
WRITTEN_NAME = "messi_written.json"


def save_classifier(model: nn.Module, tokenizer, folder, extra_files: dict | None = None):
    """Write a fine-tuned classifier and its tokenizer atomically, ready for ``load_classifier``:
    a messi folder when its embedding is compressed, else a Hugging Face folder (with
    ``extra_files``, name -> JSON data, and the list of its files). An existing ``folder`` is
    replaced only if messi wrote exactly what it holds (``check_classifier_replaceable``)."""
    folder = check_writable_target(folder, replace=True, is_ours=check_classifier_replaceable)
    info = getattr(model, "messi_config", None)
    if info is not None:  # the classifier's own class, not that of the encoder it was built on
        return save(model, folder, tokenizer, extra={"model_class": type(model).__name__}, overwrite=True)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            write_json(tmp / name, data)
        write_json(tmp / WRITTEN_NAME, {"written_by": "messi", "files": _file_names(tmp)})
    return folder


def _file_names(folder: Path) -> list[str]:
    """Every file and link under ``folder``, by relative POSIX path."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def check_classifier_replaceable(folder: Path) -> bool:
    """Whether a fine-tuned model folder may be replaced: a messi folder holding only what messi
    wrote (``check_replaceable``), or a plain one whose files are exactly those its
    ``messi_written.json`` lists. MessiError naming the first foreign file otherwise."""
    if is_messi_folder(folder):
        return check_replaceable(folder)
    listed = None
    with contextlib.suppress(OSError, ValueError):
        listed = json.loads((folder / WRITTEN_NAME).read_text())["files"]
    if not isinstance(listed, list):
        raise MessiError(f"{folder} exists and was not written by messi; --save-model refuses to replace it. "
                         "Move it out or choose another --output-dir")
    others = sorted(set(_file_names(folder)) - set(listed) - {WRITTEN_NAME})
    if others:
        raise MessiError(f"{folder} holds {others[0]!r}, which messi did not write; --save-model refuses to replace "
                         "it. Move it out or choose another --output-dir")
    return True


def share_from_main(model: nn.Module, compress_fn=None) -> nn.Module:
    """Make every process hold the main process's ``model``, optionally compressed once.

    ``compress_fn(model)`` (e.g. calibration + ``compress``) runs on the main process only; the
    others rebuild the same factored structure from its ``messi_config`` and receive every
    weight (new classification heads included) through the process group. Alone: just runs it.
    """
    if compress_fn is not None:
        if distributed.is_main():
            compress_fn(model)
        info = distributed.broadcast_json(getattr(model, "messi_config", None))
        if not distributed.is_main():
            install_empty(model, info)
    return distributed.broadcast_module(model)


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def encode(tokenizer, task: Task, examples: list[Example], max_seq_length: int) -> _Encoded:
    """Tokenise ``examples`` (truncated to ``max_seq_length``) with their labels."""
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if task.text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_seq_length)
    dtype = float if task.is_regression else int
    return _Encoded([{**{k: v[i] for k, v in enc.items()}, "labels": dtype(e.label)}
                     for i, e in enumerate(examples)])


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset of at most ``limit`` examples (all if limit is None)."""
    if limit is None or limit >= len(examples):
        return examples
    return random.Random(seed).sample(examples, limit)


#: The held-out rows do not depend on --seed, so that runs with different seeds or settings
#: are scored on the same rows when settings are chosen on them.
HOLDOUT_SEED = 0


def check_holdout(fraction: float) -> float:
    """``fraction`` if it is a held-out share ``train_and_eval_rows`` takes, (0, 0.5]; else MessiError."""
    return checks.real("--holdout", fraction, 0, 0.5, low_open=True)


def train_and_eval_rows(train_rows: list[Example], dev_rows: list[Example], cfg: TrainConfig,
                        holdout: float | None = None) -> tuple[list[Example], list[Example]]:
    """The rows to train on and the rows to score on.

    With ``holdout`` (a fraction in (0, 0.5]) a fixed random part of the train split is held
    out and scored instead of dev: choosing settings there leaves dev untouched for the numbers
    one reports. Then ``cfg.max_train_samples`` / ``cfg.max_eval_samples`` subsample each side
    with ``cfg.seed``.
    """
    if holdout is not None:
        check_holdout(holdout)
        order = random.Random(HOLDOUT_SEED).sample(range(len(train_rows)), len(train_rows))
        held = max(1, round(holdout * len(train_rows)))
        if held >= len(train_rows):
            raise MessiError(f"--holdout {holdout:g} leaves no train row of {len(train_rows)}; "
                             "give a larger train split or a smaller fraction")
        dev_rows = [train_rows[i] for i in sorted(order[:held])]
        train_rows = [train_rows[i] for i in sorted(order[held:])]
    return (subsample(train_rows, cfg.max_train_samples, cfg.seed),
            subsample(dev_rows, cfg.max_eval_samples, cfg.seed))


def evaluated_on(holdout: float | None) -> str:
    """What a run's scores were measured on, for its record."""
    return "dev" if holdout is None else f"train holdout ({holdout:g} of train, seed {HOLDOUT_SEED})"


def _length_grouping() -> dict:
    """TrainingArguments that batch rows of similar length (less padding: faster on CPU)."""
    params = inspect.signature(transformers.TrainingArguments).parameters
    if "train_sampling_strategy" in params:  # transformers >= 5
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def _trainer(model, tokenizer, cfg: TrainConfig, workdir: str, train=None, epochs=None):
    args = transformers.TrainingArguments(
        **_length_grouping(),
        output_dir=workdir, num_train_epochs=epochs if epochs is not None else cfg.epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(64, cfg.batch_size), seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        lr_scheduler_type="linear", weight_decay=0.0, dataloader_num_workers=0,
        # under torchrun on CPUs the ranks only train together (DDP) when told use_cpu
        use_cpu=not distributed.has_accelerator(),
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False)
    return transformers.Trainer(model=model, args=args, train_dataset=train,
                                data_collator=transformers.DataCollatorWithPadding(tokenizer))


def fine_tune(model, tokenizer, task: Task, train: list[Example], cfg: TrainConfig,
              epochs: float | None = None) -> float:
    """Train ``model`` in place on ``train`` for ``epochs`` (default cfg.epochs); returns seconds."""
    data = encode(tokenizer, task, train, cfg.max_seq_length)
    with tempfile.TemporaryDirectory() as tmp:
        result = _trainer(model, tokenizer, cfg, tmp, data, epochs).train()
    model.eval()
    return float(result.metrics.get("train_runtime", 0.0))


def evaluate(model, tokenizer, task: Task, dev: list[Example], cfg: TrainConfig) -> dict[str, float]:
    """Official metrics of ``model`` on ``dev``."""
    data = encode(tokenizer, task, dev, cfg.max_seq_length)
    # in length order each batch pads to its own longest row; the metrics do not depend on order
    data.features.sort(key=lambda f: len(f["input_ids"]))
    with tempfile.TemporaryDirectory() as tmp:
        out = _trainer(model, tokenizer, cfg, tmp).predict(data)
    return compute_metrics(task, out.predictions, out.label_ids)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(input-embedding parameters, all parameters), each tensor counted once."""
    emb = sum(p.numel() for p in model.get_input_embeddings().parameters())
    return emb, sum(p.numel() for p in model.parameters())


def max_positions(model_ref, tokenizer) -> int | None:
    """The longest input the model takes: the tokenizer's model_max_length when it is a real
    limit (sentence-transformers folders lower it), else config.json's position count."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return None


def tokenizer_for(model_ref):
    """The tokenizer stored with the model, or MessiError if there is none."""
    tok = load_tokenizer(model_ref)
    if tok is None:
        raise MessiError(f"no tokenizer files found with model {model_ref}; save the tokenizer in that folder")
    return tok


def run_record(task: Task, method: str, ratio: float, net: nn.Module, cfg: TrainConfig, **extra) -> dict:
    """The metrics.json fields every run shares: what was trained, how big it is, with what settings."""
    emb, total = count_parameters(net)
    info = getattr(net, "messi_config", None) or {}
    return {"task": task.name, "method": method, "ratio": ratio if method != "none" else 0.0,
            "compression": info.get("compression", 0.0), "k": info.get("k"), "rank": info.get("rank"),
            "rel_error": info.get("rel_error"), "calibration": info.get("calibration"),
            "embedding_params": emb, "total_params": total,
            "seed": cfg.seed, "config": asdict(cfg), **extra}
