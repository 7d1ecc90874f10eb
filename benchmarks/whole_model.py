
"""Whole-model compression of the built-in model: zero-shot STS-B dev and latency against the
share of ALL the model's parameters removed (target "all": embedding + every encoder Linear).

    python benchmarks/whole_model.py [--ratios 0.3,0.5] [--latency] [--model mpnet] [--variants a,b]
    python benchmarks/whole_model.py --glue-base runs/glue_cal/stsb/seed-42/base --task stsb
    python benchmarks/whole_model.py --rtn     # + plain quantization of the same targets, in bytes

Variants (each at every ratio; results resume from benchmarks/results/whole_model.json):
- uniform-svd       every matrix the same compression, plain SVD (weight error)
- lab-messi         the MESSI lab code's rule: one relative rank for all, MESSI k=3 on rows
- ours-svd-plain    our allocation (measured sensitivity x spectrum), SVD, weight-error fits
- ours-svd          our allocation, SVD, activation-aware (whitened) Linear fits
- ours-messi        our allocation, best of SVD / MESSI k<=3 per matrix at equal size, activation-aware
- uniform-svd-aware every matrix the same compression, activation-aware SVD
Calibration (token counts for the embedding rows, Linear inputs, sensitivities): 256 texts
sampled from the train splits of SST-2, CoLA, MRPC and RTE. Scoring: all 1,500 STS-B dev pairs,
never used to choose anything. Latency: forward of 32 x 128 tokens, median of 10, same process.
With --rtn, the yardstick in bytes: every target of "all" (the embedding and every encoder
Linear weight) quantized round-to-nearest (int8 per row, 4/3/2 bits in groups of 32, fp16
scales), the rest fp32; bytes as a share of the fp32 model's, beside messi's (fp32 factors).
With --glue-base: the fine-tuned classifier is compressed (its head kept), calibrated on its
task's train text, and scored on the task's full dev set without recovery (GLUE score: mean of
the task's metrics in %).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from inference import interleaved_medians
from messi import CalibrationData, load_pretrained, load_tokenizer
from messi.calibration import DEFAULT_SOURCES, calibrate, calibration_batches, read_all
from messi.compress import compress
from messi.evaluate import read_pooling, sts_pairs, sts_score
from messi.io import save_png, write_json
from messi.models import resolve_model

RESULTS_DIR = Path(__file__).parent / "results"
VARIANTS = {  # name: (method, allocation, k, calibrated, activation_aware)
    "uniform-svd": ("svd", "uniform", 1, False, False),
    "lab-messi": ("messi", "shared-rank", 3, False, False),
    "ours-svd-plain": ("svd", "global", 1, True, False),
    "ours-svd": ("svd", "global", 1, True, True),
    "ours-messi": ("messi", "global", 3, True, True),
    "uniform-svd-aware": ("svd", "uniform", 1, True, True),
}
console = Console()


def latency(model, tokenizer, repeats: int = 10) -> float:
    """Median seconds of one forward pass on 32 x 128 tokens."""
    ids = torch.randint(1000, 20000, (32, 128))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        return interleaved_medians({"model": lambda: model(**batch)}, repeats, warmup=1)["model"]


class SentenceSubject:
    """The sentence model (built-in name), scored zero-shot on STS-B dev; calibrated on the
    default sources (GLUE train text of tasks other than STS-B)."""

    metric = "zero-shot STS-B dev Spearman x 100"
    sources = list(DEFAULT_SOURCES)

    def __init__(self, model_name=None):
        self.model_name = model_name
        self.name = "all-MiniLM-L6-v2" if model_name is None else model_name
        self.results_file = RESULTS_DIR / ("whole_model.json" if model_name is None else f"whole_model_{model_name}.json")
        self.tok = load_tokenizer(model_name)
        self.pool, self.pairs = read_pooling(resolve_model(model_name)), sts_pairs("dev")

    def load(self):
        return load_pretrained(self.model_name)

    def score(self, model) -> float:
        return sts_score(model, self.tok, self.pool, self.pairs)["spearman"]


class GlueSubject:
    """A fine-tuned GLUE classifier folder, scored on its task's full dev set without recovery
    (GLUE score in %); calibrated on its task's train text (in-domain, as `messi sweep`'s +cal)."""

    def __init__(self, base, task: str):
        from messi.datasets import get_task, read_split
        from messi.glue.train import TrainConfig

        self.base, self.task = base, get_task(task)
        self.name = f"glue_{self.task.name}"
        self.metric = f"GLUE {self.task.name} dev score (no recovery)"
        self.results_file = RESULTS_DIR / f"whole_model_glue_{self.task.name}.json"
        self.sources = [f"glue:{self.task.name}"]
        self.tok = load_tokenizer(base)
        self.dev, self.cfg = read_split(self.task, "dev"), TrainConfig()

    def load(self):
        from messi.glue.train import load_classifier

        return load_classifier(self.base, self.task)

    def score(self, model) -> float:
        from messi.glue.metrics import glue_score
        from messi.glue.train import evaluate

        return glue_score(evaluate(model, self.tok, self.task, self.dev, self.cfg))


def run(subject: SentenceSubject | GlueSubject, ratios, with_latency: bool, variants=tuple(VARIANTS)) -> dict:
    file = subject.results_file
    results = json.loads(file.read_text()) if file.exists() else {}
    texts = read_all(subject.sources)
    inputs = calibration_batches(subject.tok, texts)
    original = subject.load()
    weights = calibrate(subject.tok, subject.sources, original.get_input_embeddings().num_embeddings, texts=texts).weights
    if "uncompressed" not in results:
        results["uncompressed"] = {"score": subject.score(original),
                                   "params": sum(p.numel() for p in original.parameters()),
                                   "latency": latency(original, subject.tok)}
        write_json(file, results)
    del original
    for ratio in ratios:
        for name in variants:
            method, allocation, k, calibrated, aware = VARIANTS[name]
            key = f"{name}@{ratio}"
            if key in results:
                continue
            model = subject.load()
            start = time.perf_counter()
            compress(model, method=method, ratio=ratio, k=k, target="all", allocation=allocation, n_init=2, max_iter=20, activation_aware=aware, calibration=CalibrationData(inputs=inputs if calibrated else None, row_weights=weights if calibrated else None))
            info = model.messi_config
            record = {"variant": name, "ratio": ratio, "fit_seconds": time.perf_counter() - start,
                      "model_compression": info["model_compression"], "compression": info["compression"],
                      "embedding_rank": (info.get("embedding") or {}).get("rank"),
                      "embedding_k": (info.get("embedding") or {}).get("k"),
                      "linear": {m: sum(e["method"] == m for e in info["linear_layers"]) for m in ("svd", "messi", "dense")},
                      "score": subject.score(model)}
            if with_latency:
                record["latency"] = latency(model, subject.tok)
            results[key] = record
            write_json(file, results)
            console.print(f"{key}: score {record['score']:.2f}, model -{record['model_compression']:.1%}, "
                          f"fit {record['fit_seconds']:.0f} s")
    return results


RTN = [(8, None), (4, 32), (3, 32), (2, 32)]


def rtn_cells(subject, results: dict) -> None:
    """The targets of "all" quantized round-to-nearest, scored; bytes against the fp32 model."""
    from messi.quantize import quantized_bytes, round_trip
    from messi.targets import input_embedding, linear_targets

    for bits, group in RTN:
        key = f"rtn-int{bits}" + ("" if group is None else f"-g{group}")
        if key in results:
            continue
        model = subject.load()
        total = sum(p.numel() * 4 for p in model.parameters())
        saved = 0
        with torch.no_grad():
            for w in [input_embedding(model).weight, *(m.weight for m in linear_targets(model).values())]:
                w.copy_(round_trip(w, bits, group))
                saved += w.numel() * 4 - quantized_bytes(w.shape[0], w.shape[1], bits, group)
        results[key] = {"variant": key, "bits": bits, "group_size": group, "bytes_share": 1 - saved / total,
                        "score": subject.score(model)}
        write_json(subject.results_file, results)
        console.print(f"{key}: score {results[key]['score']:.2f}, bytes {results[key]['bytes_share']:.1%}")


def show_bytes(results: dict) -> None:
    """messi's whole-model cells (fp32 factors: bytes share = 1 - model_compression) and RTN."""
    table = Table(title="in bytes: the whole model's stored bytes as a share of its fp32 bytes")
    for col in ("model", "bytes", "score", "change"):
        table.add_column(col)
    base = results["uncompressed"]["score"]
    rows = [(r["variant"], r["bytes_share"], r["score"]) for r in results.values() if "bytes_share" in r]
    rows += [(f"{r['variant']} @ -{r['ratio']:.0%} params", 1 - r["model_compression"], r["score"])
             for r in results.values() if "model_compression" in r and r["variant"] in ("ours-messi", "ours-svd")]
    for name, share, score in sorted(rows, key=lambda r: -r[1]):
        table.add_row(name, f"{share:.1%}", f"{score:.2f}", f"{score - base:+.2f}")
    console.print(table)


def show(results: dict, ratios, title: str, metric: str) -> None:
    ref = results["uncompressed"]
    table = Table(title=f"{title}, target all: {metric} (uncompressed {ref['score']:.2f})")
    table.add_column("variant")
    for r in ratios:
        table.add_column(f"-{r:.0%} targeted (model)")
    for name in [n for n in VARIANTS if any(f"{n}@{r}" in results for r in ratios)]:
        cells = []
        for r in ratios:
            rec = results.get(f"{name}@{r}")
            cells.append("—" if rec is None else f"{rec['score']:.2f} ({rec['score'] - ref['score']:+.2f}; "
                         f"-{rec['model_compression']:.1%})")
        table.add_row(name, *cells)
    console.print(table)
    if any("latency" in results.get(f"{n}@{r}", {}) for n in VARIANTS for r in ratios):
        lat = Table(title=f"forward 32 x 128 tokens, median s (uncompressed {ref['latency']:.3f})")
        lat.add_column("variant")
        for r in ratios:
            lat.add_column(f"-{r:.0%}")
        for name in VARIANTS:
            lat.add_row(name, *[f"{results[f'{name}@{r}']['latency']:.3f}" if "latency" in results.get(f"{name}@{r}", {})
                                else "—" for r in ratios])
        console.print(lat)


def plot(results: dict, ratios, title: str, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in VARIANTS:
        pts = [(results[f"{name}@{r}"]["model_compression"] * 100, results[f"{name}@{r}"]["score"])
               for r in ratios if f"{name}@{r}" in results]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.axhline(results["uncompressed"]["score"], color="grey", linestyle="--", label="uncompressed")
    ax.set_xlabel("whole-model parameters removed (%)")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: embedding + every encoder Linear")
    ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--latency", action="store_true", help="Also time a forward pass of each model.")
    parser.add_argument("--model", default=None, help="Built-in name (default: all-MiniLM-L6-v2; mpnet: all-mpnet-base-v2).")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of the variants.")
    parser.add_argument("--glue-base", default=None,
                        help="A fine-tuned GLUE classifier folder (e.g. a `messi sweep` base, "
                             "runs/glue_cal/stsb/seed-42/base): compress it and score its task's dev set "
                             "without recovery instead of zero-shot STS-B.")
    parser.add_argument("--task", default="stsb", help="The GLUE task of --glue-base.")
    parser.add_argument("--rtn", action="store_true", help="Also plain quantization of the same targets, in bytes.")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    subject = SentenceSubject(args.model) if args.glue_base is None else GlueSubject(args.glue_base, args.task)
    results = run(subject, ratios, args.latency, variants)
    if args.rtn:
        rtn_cells(subject, results)
        show_bytes(results)
    path = subject.results_file
    show(results, ratios, subject.name, subject.metric)
    plot(results, ratios, subject.name, subject.metric, path.with_suffix(".png"))
    console.print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
