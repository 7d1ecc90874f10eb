"""Zero-shot STS-B against embedding compression: SVD and MESSI, unweighted and calibrated.

Stages, each resumable (results in benchmarks/results/sts_*.json, PNGs beside them):

    python benchmarks/sts_curve.py select   # choose k and the weighting on STS-B *train* pairs
    python benchmarks/sts_curve.py curve    # report on STS-B *dev*: 20%..90%, SVD, MESSI k=2,3,5,8
    python benchmarks/sts_curve.py spread   # the default point over EM seeds 0-4 (dev; chooses nothing)
    python benchmarks/sts_curve.py mpnet    # all-mpnet-base-v2 at 40/60/80% (messi fetch-model mpnet)

Calibration text comes from tasks other than STS-B (the train texts of SST-2, CoLA, MRPC and
RTE: "other"); the curve also shows in-domain calibration (STS-B train texts). No setting is
chosen on the dev pairs that the curve reports.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from rich.console import Console

from messi.calibration import DEFAULT_OUTPUT_TEXTS, DEFAULT_SOURCES
from messi.evaluate import sts_pairs
from messi.sts_study import Setting, Study, plot, table

RESULTS = Path(__file__).parent / "results"
OTHER = DEFAULT_SOURCES
IN_DOMAIN = ("glue:stsb",)
console = Console()


def train_pairs(n: int = 2000, seed: int = 0):
    """A seeded random subset of the STS-B train pairs (the model never trained on them)."""
    a, b, gold = sts_pairs("train")
    idx = sorted(random.Random(seed).sample(range(len(gold)), n))
    return [a[i] for i in idx], [b[i] for i in idx], [gold[i] for i in idx]


def calibration_counts(model):
    """Token counts of the 'other' calibration texts under ``model``'s tokenizer."""
    from messi import load_pretrained, load_tokenizer
    from messi.calibration import calibrate

    n = load_pretrained(model).get_input_embeddings().num_embeddings
    return calibrate(load_tokenizer(model), list(OTHER), n).counts


def select(args) -> None:
    """Grid over k and the weighting (alpha, power) on train pairs; prints the winners."""
    study = Study(None, train_pairs(), RESULTS / "sts_select.json", n_init=args.n_init)
    ratios = (0.6, 0.8)
    rules = [(1.0, p) for p in (0.25, 0.5, 0.75, 1.0)] + [(a, 1.0) for a in (10.0, 100.0)]
    methods = (("svd", 1), ("messi", 3), ("messi", 5))
    settings = [Setting(m, r, k, OTHER, a, p) for m, k in methods for r in ratios for a, p in rules]
    settings += [Setting(m, r, k) for m, k in methods for r in ratios]
    records = {r["key"]: r for r in study.run(settings)}
    ref = study.uncompressed()
    console.print(f"STS-B train subset ({len(study.pairs[2])} pairs), uncompressed {ref['spearman']:.2f}")
    means = {}
    for m, k in methods:
        for rule in rules + [None]:
            rows = [records[Setting(m, r, k, OTHER, *rule).key if rule else Setting(m, r, k).key] for r in ratios]
            mean = statistics.mean(r["spearman"] for r in rows)
            tag = f"alpha {rule[0]:g} power {rule[1]:g}" if rule else "unweighted"
            console.print(f"{m} k={k} {tag}: " + ", ".join(f"{r['ratio']:.0%} {r['spearman']:.2f}" for r in rows)
                          + f"  mean {mean:.2f}")
            if rule:
                means[(m, k, rule)] = mean
    overall = {rule: statistics.mean(means[(m, k, rule)] for m, k in methods) for rule in rules}
    best_rule = max(overall, key=overall.get)
    console.print("mean over methods per rule: " + ", ".join(f"a{a:g} p{p:g} {v:.2f}" for (a, p), v in overall.items()))
    best_k = max((k for m, k in methods if m == "messi"), key=lambda k: means[("messi", k, best_rule)])
    console.print(f"default weighting: alpha {best_rule[0]:g}, power {best_rule[1]:g}; default k: {best_k}")


def select_metric(args) -> None:
    """Whether fitting under the output metric helps, and on how many texts, on train pairs."""
    study = Study(None, train_pairs(), RESULTS / "sts_select.json", n_init=args.n_init)
    sizes, ratios, methods = (0, 250, 1000, 4000), (0.6, 0.8), (("svd", 1), ("messi", 5))
    settings = [Setting(m, r, k, OTHER, output_texts=t) for t in sizes for m, k in methods for r in ratios]
    records = {r["key"]: r for r in study.run(settings)}
    ref = study.uncompressed()
    console.print(f"STS-B train subset ({len(study.pairs[2])} pairs), uncompressed {ref['spearman']:.2f}; "
                  "calibrated (default weighting), output metric on N of the calibration texts (0: none)")
    for t in sizes:
        cells = [records[Setting(m, r, k, OTHER, output_texts=t).key] for m, k in methods for r in ratios]
        console.print(f"N={t}: " + ", ".join(f"{c['method']} k={c['k']} {c['ratio']:.0%} {c['spearman']:.2f}"
                                             for c in cells)
                      + f"  mean {statistics.mean(c['spearman'] for c in cells):.2f}")


def curve(args) -> None:
    """The reported curve on dev, with the defaults chosen by ``select``."""
    reference = calibration_counts(None)
    study = Study(None, sts_pairs("dev"), RESULTS / "sts_curve.json", reference_counts=reference, n_init=args.n_init)
    ratios = (0.2, 0.4, 0.6, 0.8, 0.9)
    a, p = args.alpha, args.power
    settings = [Setting("svd", r) for r in ratios] + [Setting("svd", r, 1, OTHER, a, p) for r in ratios]
    for k in (2, 3, 5, 8):
        settings += [Setting("messi", r, k) for r in ratios] + [Setting("messi", r, k, OTHER, a, p) for r in ratios]
    t = DEFAULT_OUTPUT_TEXTS  # the output-aware rows: what `messi compress --calibration` does by default
    settings += [Setting("svd", r, 1, OTHER, a, p, t) for r in ratios]
    settings += [Setting("messi", r, args.k, OTHER, a, p, t) for r in ratios]
    in_domain = [Setting(m, r, k, IN_DOMAIN, a, p, out) for out in (0, t) for m, k in (("svd", 1), ("messi", args.k))
                 for r in (0.4, 0.6, 0.8)]
    records = study.run(settings + in_domain)
    ref = study.uncompressed()
    main = records[: len(settings)]
    console.print(f"STS-B dev, uncompressed {ref['spearman']:.2f}; calibration: {', '.join(OTHER)}")
    console.print(table(main, ref))
    console.print("in-domain calibration (STS-B train texts):")
    console.print(table(records[len(settings):], ref))
    console.print("weighted / output-side rel_error of the calibrated rows:")
    console.print(table([r for r in main if r["calibration"]], ref, columns=("weighted_rel_error", "output_rel_error")))
    console.print("rel_error of rows unseen / seen in the 'other' calibration text:")
    console.print(table([r for r in main if r["method"] == "svd" or r["k"] == args.k], ref,
                        columns=("unseen_rel_error", "seen_rel_error")))
    shown = [r for r in main if r["method"] == "svd" or r["k"] == args.k]
    plot(shown, ref, RESULTS / "sts_curve.png", "all-MiniLM-L6-v2: zero-shot STS-B dev vs embedding size")


def spread(args) -> None:
    """The default point's EM seed-to-seed spread on dev (seeds 0..4): how far one run's number is
    from the next, to read the curve's small gaps against. Nothing is chosen from it. Seed 0 is
    the curve's own cell; the others are kept beside it in the curve's results file."""
    study = Study(None, sts_pairs("dev"), RESULTS / "sts_curve.json", reference_counts=calibration_counts(None),
                  n_init=args.n_init)
    ratios, seeds, t = (0.6, 0.8), range(5), DEFAULT_OUTPUT_TEXTS
    ref = study.uncompressed()["spearman"]
    console.print(f"STS-B dev, uncompressed {ref:.2f}; MESSI k={args.k} calibrated, output-aware, EM seeds 0-4")
    for r in ratios:
        messi = [Setting("messi", r, args.k, OTHER, args.alpha, args.power, t, seed=s or None) for s in seeds]
        *records, svd = study.run(messi + [Setting("svd", r, 1, OTHER, args.alpha, args.power, t)])
        drops = [c["spearman"] - ref for c in records]
        console.print(f"{r:.0%}: MESSI " + " ".join(f"{d:+.2f}" for d in drops)
                      + f"  mean {statistics.mean(drops):+.2f} ± {statistics.stdev(drops):.2f}"
                      + f"  (best {max(drops):+.2f}, worst {min(drops):+.2f}); SVD calibrated, output-aware "
                      + f"{svd['spearman'] - ref:+.2f}")


def mpnet(args) -> None:
    """all-mpnet-base-v2 at 40/60/80%."""
    counts = calibration_counts("mpnet")
    study = Study("mpnet", sts_pairs("dev"), RESULTS / "sts_mpnet.json", reference_counts=counts, n_init=args.n_init)
    ratios, a, p = (0.4, 0.6, 0.8), args.alpha, args.power
    settings = [Setting("svd", r) for r in ratios] + [Setting("svd", r, 1, OTHER, a, p) for r in ratios]
    settings += [Setting("messi", r, args.k) for r in ratios] + [Setting("messi", r, args.k, OTHER, a, p) for r in ratios]
    t = DEFAULT_OUTPUT_TEXTS
    settings += [Setting("svd", r, 1, OTHER, a, p, t) for r in ratios] + [Setting("messi", r, args.k, OTHER, a, p, t)
                                                                         for r in ratios]
    records = study.run(settings)
    ref = study.uncompressed()
    console.print(f"all-mpnet-base-v2, STS-B dev, uncompressed {ref['spearman']:.2f}")
    console.print(table(records, ref))
    console.print(table(records, ref, columns=("rel_error", "fit_seconds")))
    plot(records, ref, RESULTS / "sts_mpnet.png", "all-mpnet-base-v2: zero-shot STS-B dev vs embedding size")


def main() -> None:
    from messi.calibration import DEFAULT_ALPHA, DEFAULT_POWER

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("select", "select-metric", "curve", "spread", "mpnet"))
    parser.add_argument("--n-init", type=int, default=4, help="clustering restarts (messi compress default: 4)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="weighting alpha for the curve")
    parser.add_argument("--power", type=float, default=DEFAULT_POWER, help="weighting power for the curve")
    parser.add_argument("--k", type=int, default=5, help="MESSI k for in-domain and mpnet rows")
    args = parser.parse_args()
    stages = {"select": select, "select-metric": select_metric, "curve": curve, "spread": spread, "mpnet": mpnet}
    stages[args.stage](args)


if __name__ == "__main__":
    main()
