"""One GLUE run: (optionally compress,) fine-tune, evaluate, write metrics.json."""

from __future__ import annotations

import time
from pathlib import Path

from .. import distributed
from ..compress import compress
from ..config import CompressionConfig
from ..datasets import get_task, read_split
from ..errors import MessiError
from ..io import check_output_folder, check_writable_target, write_json
from .train import (
    TrainConfig,
    check_classifier_replaceable,
    evaluate,
    evaluated_on,
    fine_tune,
    load_classifier,
    max_positions,
    run_record,
    save_classifier,
    share_from_main,
    tokenizer_for,
    train_and_eval_rows,
)

METHOD_CHOICES = ("none", "svd", "messi")


def _check_outputs(output_dir: Path, save_model: bool) -> None:
    """Before any training: the outputs can be written, and --save-model replaces only a model
    folder that messi wrote."""
    check_output_folder(output_dir)
    if save_model:
        check_writable_target(output_dir / "model", replace=True, is_ours=check_classifier_replaceable)


def run_glue(task_name: str, output_dir: str | Path, model_ref=None, method: str = "none",
             ratio: float = 0.4, k: int = 3, cfg: TrainConfig | None = None, data_dir=None,
             strict: bool = False, save_model: bool = False, holdout: float | None = None) -> dict:
    """Fine-tune ``model_ref`` (compressed first with ``method`` unless "none") on a GLUE task
    and evaluate on dev (or, with ``holdout``, on that fraction of train, held out of training:
    see ``train_and_eval_rows``). Writes and returns OUT/metrics.json's record; with ``save_model``
    also the fine-tuned model to OUT/model (``load_classifier`` reads it back).

    Under ``torchrun`` / ``accelerate launch`` the main process compresses, every process trains
    the same model (DDP) and gets the same metrics, and only the main process writes."""
    cfg = cfg or TrainConfig()
    if method not in METHOD_CHOICES:
        raise MessiError(f"--method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
    task = get_task(task_name)
    distributed.init()
    # bad settings fail here, before the model loads
    compression = None if method == "none" else CompressionConfig(method=method, ratio=ratio, k=k, seed=cfg.seed)
    distributed.main_checks(lambda: _check_outputs(Path(output_dir), save_model))
    tokenizer = tokenizer_for(model_ref)
    cfg.validate(max_positions(model_ref, tokenizer))
    train_rows, dev_rows = read_split(task, "train", data_dir, strict), read_split(task, "dev", data_dir, strict)
    train, dev = train_and_eval_rows(train_rows, dev_rows, cfg, holdout)
    start = time.perf_counter()
    model = load_classifier(model_ref, task, cfg.seed)
    compress_fn = None if compression is None else (lambda m: compress(m, compression, verbose=True))
    share_from_main(model, compress_fn)
    fine_tune(model, tokenizer, task, train, cfg)
    metrics = evaluate(model, tokenizer, task, dev, cfg)
    info = getattr(model, "messi_config", None) or {}
    record = run_record(task, info.get("method", method), info.get("ratio", 0.0), model, cfg,
                        metrics=metrics, train_samples=len(train), eval_samples=len(dev),
                        evaluated_on=evaluated_on(holdout), epochs=cfg.epochs, seconds=time.perf_counter() - start,
                        model=str(model_ref or "minilm"),
                        skipped_rows={"train": train_rows.skipped, "dev": dev_rows.skipped})
    if distributed.is_main():
        if save_model:
            save_classifier(model, tokenizer, Path(output_dir) / "model")
        write_json(Path(output_dir) / "metrics.json", record)
    return record
