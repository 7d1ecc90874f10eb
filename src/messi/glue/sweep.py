"""The paper's protocol over a grid of tasks x methods x ratios x seeds, resumable.

Layout of a sweep folder::

    SWEEP/<task>/seed-<s>/base/            fine-tuned uncompressed classifier (cached)
    SWEEP/<task>/seed-<s>/none/metrics.json    its dev metrics (the reference)
    SWEEP/<task>/seed-<s>/control/metrics.json the base trained the recovery epochs, uncompressed
    SWEEP/<task>/seed-<s>/<method>-r<ratio>/metrics.json

Every file is written atomically and a finished cell is never redone, so a sweep killed at any
point (kill -9 included) restarts where it stopped. A finished cell run with other settings
(training options, recovery epochs, k, protocol) stops the sweep with an error instead of being
mixed into a table it does not belong to.

Under ``torchrun`` / ``accelerate launch`` every process runs every cell together (training is
data-parallel, evaluation gathers all predictions), but only the main process reads the folder,
compresses and writes; what it decides (a cell is done, a base is cached) and what it computed
(compressed layers, a cached base's weights) reach the others through the process group.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import transformers
from tqdm.auto import tqdm

from .. import distributed
from ..calibration import DEFAULT_OUTPUT_TEXTS, CalibrationData, calibrate, calibration_batches, output_metric
from ..compress import compress
from ..config import CompressionConfig
from ..datasets import get_task, read_split
from ..errors import MessiError
from ..io import check_output_folder, write_json
from .train import (
    TrainConfig,
    evaluate,
    fine_tune,
    load_classifier,
    run_record,
    save_classifier,
    share_from_main,
    tokenizer_for,
    train_and_eval_rows,
)

PROTOCOLS = ("paper", "compress-first")
#: Methods a sweep knows; "+cal" ones weigh the embedding rows by the task's own train text;
#: "+cal+out" ones also fit under the classifier's output metric (``calibration.output_sensitivity``
#: of its logits, on train inputs; ``messi compress --output-texts N`` on a classifier).
#: "control" is the yardstick of recovered cells: a recovered model has trained the base's epochs
#: plus --recovery-epochs, so the fair comparison is the base trained those same extra epochs,
#: uncompressed, on the same code path (one cell per task and seed, like "none").
METHODS = ("none", "control", "svd", "messi", "svd+cal", "messi+cal", "svd+cal+out", "messi+cal+out")
#: Methods with one cell per (task, seed) instead of one per ratio.
UNCOMPRESSED = ("none", "control")


def cell_name(method: str, ratio: float) -> str:
    """Folder name of a grid cell, e.g. ``messi-r0.4``; the uncompressed cells are named by their
    method (``none``, ``control``)."""
    return method if method in UNCOMPRESSED else f"{method}-r{ratio:g}"


#: Keys every finished cell's metrics.json has; a file without them is redone.
REQUIRED = ("task", "method", "metrics")


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or corrupt."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read(path: Path) -> dict | None:
    """A finished cell's record, or None when it is missing, corrupt or incomplete."""
    record = _read_json(path)
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED):
        return None
    return record


class Sweep:
    """A resumable grid run; ``run()`` fills the folder, skipping whatever is already done."""

    def __init__(self, output_dir, tasks, methods=("none", "svd", "messi"), ratios=(0.4, 0.6), k=3,
                 seeds=(42,), model_ref=None, cfg: TrainConfig | None = None, recovery_epochs=2.0,
                 protocol="paper", data_dir=None, strict=False):
        if protocol not in PROTOCOLS:
            raise MessiError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise MessiError(f"unknown method(s) {', '.join(bad)}; use {', '.join(METHODS)}")
        if "control" in methods and (protocol != "paper" or not recovery_epochs > 0):
            raise MessiError("the control trains the base the recovery epochs uncompressed, so it needs "
                             "--protocol paper and --recovery-epochs above 0; drop control from --methods "
                             "or give those settings")
        self.out = Path(output_dir)
        self.tasks = [get_task(t) for t in tasks]
        self.methods, self.ratios, self.k, self.seeds = list(methods), list(ratios), k, list(seeds)
        self.model_ref, self.cfg = model_ref, cfg or TrainConfig()
        self.recovery_epochs, self.protocol = recovery_epochs, protocol
        self.data_dir, self.strict = data_dir, strict
        self._metrics: dict[tuple[str, int], tuple] = {}  # (task, seed) -> output metric and its record
        # fail now, not an hour in, when a task's files are missing
        self.data = {t.name: (read_split(t, "train", data_dir, strict), read_split(t, "dev", data_dir, strict))
                     for t in self.tasks}

    def cells(self):
        """(task, seed, method, ratio) of every grid cell, the reference first for each task/seed,
        then the control if asked for."""
        compressed = [(m, r) for m in self.methods if m not in UNCOMPRESSED for r in self.ratios]
        control = [("control", 0.0)] if "control" in self.methods else []
        for task in self.tasks:
            for seed in self.seeds:
                yield from [(task, seed, m, r) for m, r in [("none", 0.0)] + control + compressed]

    def run(self) -> Path:
        """Run every unfinished cell, with a progress bar over the grid; returns the folder."""
        distributed.init()
        # a file, a read-only folder: one line on every process, before any training
        distributed.main_checks(lambda: check_output_folder(self.out))
        cells = list(self.cells())
        with tqdm(total=len(cells), desc="sweep", unit="cell", disable=not distributed.is_main()) as bar:
            for task, seed, method, ratio in cells:
                target = self.out / task.name / f"seed-{seed}" / cell_name(method, ratio) / "metrics.json"
                bar.set_postfix_str(f"{task.name} seed {seed} {cell_name(method, ratio)}")
                done = distributed.main_answers(lambda: _read(target))
                if done is None:  # missing or corrupt: (re)do it
                    self._run_cell(task, seed, method, ratio, target)
                else:
                    self._check_settings(done, target, method, seed)
                bar.update(1)
        return self.out

    def _cfg(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.cfg, seed=seed)

    def _check_settings(self, record: dict, target: Path, method: str, seed: int) -> None:
        """MessiError naming the first setting a finished cell's ``record`` was run with that this
        sweep would run it with differently (a setting the record does not hold is not compared)."""
        config = record.get("config") or {}
        ran = {f"--{key.replace('_', '-')}": config[key] for key in config}
        wanted = {f"--{key.replace('_', '-')}": value for key, value in dataclasses.asdict(self._cfg(seed)).items()}
        ran["--protocol"], wanted["--protocol"] = record.get("protocol", self.protocol), self.protocol
        if method != "none":
            flag = "--recovery-epochs" if self.protocol == "paper" else "--epochs"
            wanted[flag] = self.recovery_epochs if self.protocol == "paper" else self.cfg.epochs
            ran[flag] = record.get("epochs", wanted[flag])  # "epochs": what the cell itself trained
            if method.startswith("messi"):
                ran["--k"], wanted["--k"] = record.get("k", self.k), self.k
        for flag, now in wanted.items():
            if flag in ran and ran[flag] != now:
                raise MessiError(f"{target.parent} was run with {flag} {ran[flag]} and this sweep asks for {now}; "
                                 "resume with the same settings, or give another --output-dir")

    def _splits(self, task, cfg):
        return train_and_eval_rows(*self.data[task.name], cfg)

    def _base(self, task, seed):
        """The fine-tuned uncompressed classifier for (task, seed): trained once, then cached."""
        folder = self.out / task.name / f"seed-{seed}" / "base"
        cfg = self._cfg(seed)
        tokenizer = tokenizer_for(self.model_ref)
        if distributed.main_answers(lambda: (folder / "config.json").is_file()):
            # the cached base; processes other than main get its weights from main
            if distributed.is_main():
                try:
                    model = transformers.AutoModelForSequenceClassification.from_pretrained(
                        folder, local_files_only=True, trust_remote_code=False)
                except (OSError, ValueError) as e:  # never asks to run the folder's code: refuses
                    raise MessiError(f"the cached base {folder} cannot be loaded ({' '.join(str(e).split())[:200]}); "
                                     "delete that folder and the sweep retrains it") from e
            else:
                model = load_classifier(self.model_ref, task, seed)
            return share_from_main(model).eval(), tokenizer, folder
        train, _ = self._splits(task, cfg)
        model = share_from_main(load_classifier(self.model_ref, task, seed))
        seconds = fine_tune(model, tokenizer, task, train, cfg)
        if distributed.is_main():
            save_classifier(model, tokenizer, folder, {"train.json": {"seconds": seconds, "train_samples": len(train)}})
        return model.eval(), tokenizer, folder

    def _run_cell(self, task, seed, method, ratio, target: Path) -> None:
        cfg = self._cfg(seed)
        train, dev = self._splits(task, cfg)
        start = time.perf_counter()
        reference = self._reference(task, seed, cfg, dev)
        if method == "none":
            return
        if self.protocol == "compress-first":  # compress the pretrained model, then fine-tune
            model, tokenizer = load_classifier(self.model_ref, task, seed), tokenizer_for(self.model_ref)
            self._compress(model, tokenizer, task, method, ratio, seed)
            before, epochs = None, cfg.epochs
        else:  # compress the fine-tuned model, evaluate as is, then recover
            model, tokenizer, _ = self._base(task, seed)
            before, epochs = None, self.recovery_epochs
            if method != "control":  # the control recovers with nothing compressed
                self._compress(model, tokenizer, task, method, ratio, seed)
                before = evaluate(model, tokenizer, task, dev, cfg)
        if epochs > 0:
            fine_tune(model, tokenizer, task, train, cfg, epochs=epochs)
            after = evaluate(model, tokenizer, task, dev, cfg)
        else:  # --recovery-epochs 0: the compressed model as is
            after = before if before is not None else evaluate(model, tokenizer, task, dev, cfg)
        record = run_record(task, method, ratio, model, cfg, protocol=self.protocol,
                         metrics=after, no_recovery=before,
                         reference=reference["metrics"], train_samples=len(train),
                         eval_samples=len(dev), epochs=epochs, seconds=time.perf_counter() - start)
        if distributed.is_main():
            write_json(target, record)

    def _compress(self, model, tokenizer, task, method: str, ratio: float, seed: int) -> None:
        """Compress in place (once, on the main process); "+cal" methods weigh rows by the
        tokens of the task's train texts; "+out" ones also fit under the model's output metric,
        measured on train inputs (pairs as pairs)."""
        base, calibrated, output_aware = method.split("+")[0], "+cal" in method, method.endswith("+out")

        def run(model):
            weights = record = metric = None
            if calibrated:
                cal = calibrate(tokenizer, [f"glue:{task.name}"], model.get_input_embeddings().num_embeddings,
                                self.data_dir)
                if output_aware:
                    metric, cal.output_metric = self._output_metric(model, tokenizer, task, seed)
                weights, record = cal.weights, cal.record()
            compress(model, CompressionConfig(method=base, ratio=ratio, k=self.k, seed=seed),
                     CalibrationData(row_weights=weights, embedding_metric=metric, record=record), verbose=True)

        share_from_main(model, run)

    def _output_metric(self, model, tokenizer, task, seed: int):
        """The model's output metric on up to DEFAULT_OUTPUT_TEXTS train inputs, and its record;
        measured once per (task, seed): every cell compresses the same model."""
        if (task.name, seed) not in self._metrics:
            inputs = [ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b)
                      for ex in read_split(task, "train", self.data_dir)]
            batches = calibration_batches(tokenizer, inputs, max_texts=DEFAULT_OUTPUT_TEXTS)
            self._metrics[(task.name, seed)] = output_metric(model, batches)
        metric, record = self._metrics[(task.name, seed)]
        return metric, dict(record)

    def _reference(self, task, seed, cfg, dev) -> dict:
        """The uncompressed fine-tuned model's metrics (the ``none`` cell), computed once; the
        cached base is loaded only when they are not on disk yet."""
        path = self.out / task.name / f"seed-{seed}" / "none" / "metrics.json"
        record = distributed.main_answers(lambda: _read(path))
        if record is None:
            model, tokenizer, _ = self._base(task, seed)
            train_info = _read_json(path.parent.parent / "base" / "train.json") or {}
            record = run_record(task, "none", 0.0, model, cfg, protocol=self.protocol,
                             metrics=evaluate(model, tokenizer, task, dev, cfg), no_recovery=None,
                             train_samples=train_info.get("train_samples"), eval_samples=len(dev),
                             epochs=cfg.epochs, seconds=train_info.get("seconds"))
            if distributed.is_main():
                write_json(path, record)
        return record
