"""A grid of embedding compressions scored by zero-shot STS-B: resumable, tabled and plotted.

Each cell is one ``Setting`` (method, ratio, k, calibration sources and weighting). The base
model is loaded once; every cell compresses a copy, scores it with ``evaluate.sts_score`` and
is written to a JSON file at once (atomically), so a killed run resumes where it stopped.
Used by ``messi demo`` and ``benchmarks/sts_curve.py``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .calibration import (
    DEFAULT_ALPHA,
    DEFAULT_OUTPUT_TEXTS,
    DEFAULT_POWER,
    DEFAULT_SOURCES,
    CalibrationData,
    calibrate,
    calibration_batches,
    output_sensitivity,
    read_all,
    weights_from_counts,
)
from .compress import compress
from .config import CompressionConfig
from .errors import MessiError
from .evaluate import read_pooling, sts_score
from .factorize import relative_error
from .io import save_png, write_json, write_text
from .models import load_pretrained, load_tokenizer, resolve_model
from .quantize import quantized_bytes, round_trip


@dataclass(frozen=True)
class Setting:
    """One compression: ``method`` "svd" or "messi" (k subspaces) at ``ratio``; rows weighted by
    the tokens of ``calibration`` (sources as ``messi compress --calibration``) if any; with
    ``output_texts`` > 0, fitted under the output metric (``calibration.output_sensitivity``)
    measured on that many of the calibration texts. ``seed``: the clustering's seed for this cell
    (None: the Study's)."""

    method: str
    ratio: float
    k: int = 1
    calibration: tuple[str, ...] = ()
    alpha: float = DEFAULT_ALPHA
    power: float = DEFAULT_POWER
    output_texts: int = 0
    seed: int | None = None
    size: float | None = None
    bits: int | None = None

    @property
    def key(self) -> str:
        """A stable name of the cell in the results file."""
        cal = "+".join(self.calibration) + f"@a{self.alpha:g},p{self.power:g}" if self.calibration else "plain"
        return (f"{self.method}|k{self.k}|r{self.ratio:g}|{cal}" + (f"|out{self.output_texts}" if self.output_texts else "")
                + (f"|seed{self.seed}" if self.seed is not None else "")
                + (f"|size{self.size:g}" if self.size is not None else "") + (f"|b{self.bits}" if self.bits else ""))

    @property
    def label(self) -> str:
        """How tables and plots name the setting's curve."""
        name = "SVD" if self.method == "svd" else f"MESSI k={self.k}"
        return (name + (" calibrated" if self.calibration else "") + (", output-aware" if self.output_texts else "")
                + (f", {self.bits}-bit coordinates" if self.bits else "") + (f", --size {self.size:g}" if self.size else ""))


class Study:
    """Scores ``Setting``s on one model and one set of STS pairs; results kept in ``results_file``.

    ``reference_counts`` (n,), optional: token counts that split the vocabulary into rows seen
    and unseen in calibration, to report what unseen rows lose (for every cell, weighted or not).
    """

    def __init__(self, model_ref, pairs, results_file: str | Path, reference_counts: torch.Tensor | None = None,
                 data_dir=None, n_init: int = 4, max_iter: int = 50, seed: int = 0, split: str = "dev"):

        self.model_ref, self.pairs, self.data_dir, self.split = model_ref, pairs, data_dir, split
        self.results_file = Path(results_file)
        self.n_init, self.max_iter, self.seed = n_init, max_iter, seed
        folder = Path(model_ref) if model_ref is not None and Path(model_ref).is_dir() else resolve_model(model_ref)
        self.pooling = read_pooling(folder)
        self.tokenizer = load_tokenizer(model_ref)
        if self.tokenizer is None:
            raise MessiError(f"no tokenizer files in {folder}; the STS study needs them")
        self._base = None
        self._load = lambda: load_pretrained(model_ref)
        self._counts: dict[tuple[str, ...], torch.Tensor] = {}
        self._texts: dict[tuple[str, ...], list[str]] = {}
        self._metrics: dict[tuple, torch.Tensor] = {}
        self.reference_counts = reference_counts
        self.results: dict[str, dict] = self._read_results()

    def _read_results(self) -> dict[str, dict]:
        if not self.results_file.is_file():
            return {}
        try:
            data = json.loads(self.results_file.read_text())
            return {r["key"]: r for r in data["cells"]}
        except (ValueError, KeyError, TypeError) as e:
            raise MessiError(f"{self.results_file} is corrupt ({e}); delete it to start the study again") from e

    @property
    def base(self):
        """The uncompressed model, loaded on first use."""
        if self._base is None:
            self._base = self._load()
        return self._base

    def texts(self, sources: tuple[str, ...]) -> list[str]:
        """All texts of ``sources``, read once for the counts and the output metric (cached)."""
        if sources not in self._texts:
            self._texts[sources] = read_all(list(sources), self.data_dir)
        return self._texts[sources]

    def counts(self, sources: tuple[str, ...]) -> torch.Tensor:
        """Token counts (n,) of all texts of ``sources`` together (cached)."""
        if sources not in self._counts:
            n = self.base.get_input_embeddings().num_embeddings
            self._counts[sources] = calibrate(self.tokenizer, list(sources), n, self.data_dir,
                                              texts=self.texts(sources)).counts
        return self._counts[sources]

    def metric(self, sources: tuple[str, ...], texts: int) -> torch.Tensor:
        """The base model's output metric (d, d) on ``texts`` of the sources' texts (cached)."""
        if (sources, texts) not in self._metrics:
            batches = calibration_batches(self.tokenizer, self.texts(sources), max_texts=texts)
            self._metrics[(sources, texts)] = output_sensitivity(self.base, batches, self.pooling)
        return self._metrics[(sources, texts)]

    def _save(self) -> None:
        write_json(self.results_file, {"model": str(self.model_ref or "minilm"), "pairs": len(self.pairs[2]),
                                       "cells": list(self.results.values())})

    def uncompressed(self) -> dict:
        """The uncompressed model's scores (a cell with method "none")."""

        if "none" not in self.results:
            score = sts_score(self.base, self.tokenizer, self.pooling, self.pairs)
            n, d = self.base.get_input_embeddings().weight.shape
            self.results["none"] = {"key": "none", "method": "none", "ratio": 0.0, "k": 0, "calibration": [],
                                    "embedding_params_after": n * d, "split": self.split, **score}
            self._save()
        return self.results["none"]

    def rtn(self, bits: int, group_size: int | None) -> dict:
        """The whole table quantized round-to-nearest (``quantize.round_trip``: fp16 scales, one
        per row or per group), scored as the others; cached under "rtn|b{bits}|g{group}"."""
        key = f"rtn|b{bits}|g{group_size}"
        if key not in self.results:
            model = copy.deepcopy(self.base)
            emb = model.get_input_embeddings()
            n, d = emb.weight.shape
            with torch.no_grad():
                emb.weight.copy_(round_trip(emb.weight, bits, group_size))
            self.results[key] = {"key": key, "method": "rtn", "bits": bits, "group_size": group_size,
                                 "bytes": quantized_bytes(n, d, bits, group_size),
                                 "table_bytes": emb.weight.numel() * emb.weight.element_size(),
                                 **sts_score(model, self.tokenizer, self.pooling, self.pairs)}
            self._save()
        return self.results[key]

    def run(self, settings: list[Setting], progress: bool = True) -> list[dict]:
        """Score every setting not yet in the results file; returns the records of ``settings``."""
        self.uncompressed()
        todo = [s for s in settings if s.key not in self.results]
        for s in tqdm(todo, desc="STS study", unit="cell", disable=not progress):
            self.results[s.key] = self._cell(s)
            self._save()
        return [self.results[s.key] for s in settings]

    def _cell(self, s: Setting) -> dict:
        weights = metric = None
        if s.calibration:
            weights = weights_from_counts(self.counts(s.calibration), s.alpha, s.power)
        if s.output_texts:
            if not s.calibration:
                raise MessiError("output_texts needs calibration sources to take the texts from")
            metric = self.metric(s.calibration, s.output_texts)
        model = copy.deepcopy(self.base)
        start = time.perf_counter()
        seed = self.seed if s.seed is None else s.seed
        config = CompressionConfig(method=s.method, ratio=s.ratio, k=s.k, seed=seed, n_init=self.n_init,
                                   max_iter=self.max_iter, size=s.size, bits=s.bits)
        compress(model, config, CalibrationData(row_weights=weights, embedding_metric=metric))
        seconds = time.perf_counter() - start
        info = model.messi_config
        record = {"key": s.key, **asdict(s), "calibration": list(s.calibration), "rank": info["rank"],
                  "compression": info["compression"], "embedding_params_after": info["embedding_params_after"],
                  "rel_error": info["rel_error"], "weighted_rel_error": info.get("weighted_rel_error"),
                  "output_rel_error": info.get("output_rel_error"),
                  "bytes": info["embedding_bytes_after"], "table_bytes": info["embedding_bytes_before"],
                  "stored_bits": info.get("bits"),
                  "fit_seconds": info["fit_seconds"], "compress_seconds": seconds}
        if self.reference_counts is not None:
            A = self.base.get_input_embeddings().weight.detach()
            with torch.no_grad():
                approx = model.get_input_embeddings().weight
            seen = self.reference_counts > 0
            record["seen_rel_error"] = relative_error(A[seen], approx[seen])
            record["unseen_rel_error"] = relative_error(A[~seen], approx[~seen])
        record.update(sts_score(model, self.tokenizer, self.pooling, self.pairs))
        return record


def table(records: list[dict], reference: dict, columns=("spearman",)) -> str:
    """A markdown table: one row per setting label, one column per ratio, cells "score (loss)"."""
    ratios = sorted({r["ratio"] for r in records})
    labels = list(dict.fromkeys(_label(r) for r in records))
    lines = ["| method | " + " | ".join(f"{x:.0%}" for x in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for label in labels:
        cells = []
        for x in ratios:
            hit = [r for r in records if _label(r) == label and r["ratio"] == x]
            cells.append(_cell_text(hit[0], reference, columns) if hit else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell_text(r: dict, reference: dict, columns) -> str:
    parts = []
    for c in columns:
        if c == "spearman":
            parts.append(f"{r['spearman']:.2f} ({r['spearman'] - reference['spearman']:+.2f})")
        elif r.get(c) is not None:
            parts.append(f"{r[c]:.4f}" if isinstance(r[c], float) else f"{r[c]:,}")
    return " / ".join(parts)


def _label(r: dict) -> str:
    return Setting(r["method"], r["ratio"], r["k"], tuple(r["calibration"]), output_texts=r.get("output_texts", 0)).label


def plot(records: list[dict], reference: dict, path: str | Path, title: str) -> Path:
    """PNG: STS-B Spearman against embedding parameters, one line per setting label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    labels = list(dict.fromkeys(_label(r) for r in records))
    # one colour per factorisation; dashed plain, solid calibrated
    colours = {base: f"C{i}" for i, base in enumerate(dict.fromkeys(lb.removesuffix(" calibrated") for lb in labels))}
    for label in labels:
        pts = sorted((r["embedding_params_after"], r["spearman"]) for r in records if _label(r) == label)
        style = "--" if "calibrated" not in label else "-"
        ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], style, marker="o", label=label,
                color=colours[label.removesuffix(" calibrated")])
    ax.axhline(reference["spearman"], color="black", lw=1, ls=":", label=f"uncompressed {reference['spearman']:.2f}")
    ax.axvline(reference["embedding_params_after"] / 1e6, color="grey", lw=0.5)
    ax.set_xlabel("embedding parameters (millions)")
    ax.set_ylabel("STS-B Spearman x 100 (zero-shot)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)



#: Calibration text of the demo and of the benchmark's "other" rows: GLUE train texts of tasks
#: other than STS-B, so that the STS-B score is not calibrated on its own domain.
OTHER_TASKS = DEFAULT_SOURCES


def bytes_table(rows: list[tuple[str, dict]], reference: dict) -> str:
    """A markdown table of (label, record) rows: bytes as a share of the fp32 table, and score."""
    lines = ["| embedding stored as | bytes (% of the fp32 table) | STS-B (change) |", "|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {100 * r['bytes'] / r['table_bytes']:.2f}% | "
                     f"{r['spearman']:.2f} ({r['spearman'] - reference['spearman']:+.2f}) |")
    return "\n".join(lines)


def demo_settings(k: int, ratios=(0.4, 0.6, 0.8)) -> list[Setting]:
    """SVD, calibrated SVD, MESSI and calibrated MESSI at each ratio; calibrated as ``messi
    compress --calibration`` does by default (row weights and the output metric)."""
    t = DEFAULT_OUTPUT_TEXTS
    return [s for r in ratios for s in (Setting("svd", r), Setting("svd", r, 1, OTHER_TASKS, output_texts=t),
                                        Setting("messi", r, k), Setting("messi", r, k, OTHER_TASKS, output_texts=t))]


def write_report(records: list[dict], reference: dict, folder: str | Path, title: str,
                 notes: str = "") -> tuple[Path, Path, str]:
    """``folder``/report.md (score table, sizes and errors) and ``folder``/report.png."""
    folder = Path(folder)
    md = "\n\n".join([
        f"# {title}",
        f"Zero-shot STS-B {reference.get('split', 'dev')} ({reference['pairs']:,} pairs): Spearman x 100 of the "
        f"cosine of sentence embeddings against the gold scores; uncompressed **{reference['spearman']:.2f}**. "
        "Each cell: score (change against uncompressed). Columns: embedding compression.",
        table(records, reference),
        "Relative squared error of the table |A - A'|^2 / |A|^2, and embedding parameters after:",
        table(records, reference, columns=("rel_error", "embedding_params_after")),
        notes,
        "![STS-B against embedding size](report.png)",
    ]) + "\n"
    md_path, png_path = folder / "report.md", folder / "report.png"
    write_text(md_path, md)
    plot(records, reference, png_path, title)
    return md_path, png_path, md
