"""Zero-shot STS-B against embedding compression: SVD and MESSI, unweighted and calibrated.

Three stages, each resumable (results in benchmarks/results/sts_*.json, PNGs beside them):

    python benchmarks/sts_curve.py select   # choose k and the weighting on STS-B *train* pairs
    python benchmarks/sts_curve.py curve    # report on STS-B *dev*: 20%..90%, SVD, MESSI k=2,3,5,8
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

from messi.evaluate import sts_pairs
from messi.sts_study import Setting, Study, plot, table

RESULTS = Path(__file__).parent / "results"
OTHER = ("glue:sst2", "glue:cola", "glue:mrpc", "glue:rte")
IN_DOMAIN = ("glue:stsb",)
console = Console()


def train_pairs(n: int = 2000, seed: int = 0):
    """A seeded random subset of the STS-B train pairs (the model never trained on them)."""
    a, b, gold = sts_pairs("train")
    idx = sorted(random.Random(seed).sample(range(len(gold)), n))
    return [a[i] for i in idx], [b[i] for i in idx], [gold[i] for i in idx]


def calibration_counts(model) -> "torch.Tensor":
    """Token counts of the 'other' calibration texts under ``model``'s tokenizer."""
    from messi import load_pretrained, load_tokenizer
    from messi.calibration import calibrate

    n = load_pretrained(model).get_input_embeddings().num_embeddings
    return calibrate(load_tokenizer(model), list(OTHER), n).counts


def select(args) -> None:
    """Grid over k and the weighting's power on train pairs; prints the winner per method."""
    study = Study(None, train_pairs(), RESULTS / "sts_select.json", n_init=args.n_init)
    ratios, powers = (0.6, 0.8), (0.25, 0.5, 0.75, 1.0)
    settings = [Setting("svd", r, 1, OTHER, 1.0, p) for r in ratios for p in powers]
    settings += [Setting("messi", r, k, OTHER, 1.0, p) for k in (3, 5) for r in ratios for p in powers]
    settings += [Setting("svd", r) for r in ratios] + [Setting("messi", r, k) for k in (3, 5) for r in ratios]
    records = study.run(settings)
    ref = study.uncompressed()
    console.print(f"STS-B train subset ({len(study.pairs[2])} pairs), uncompressed {ref['spearman']:.2f}")
    best = {}
    for (method, k) in (("svd", 1), ("messi", 3), ("messi", 5)):
        for p in powers + (None,):
            rows = [r for r in records if r["method"] == method and r["k"] == k
                    and (r["power"] == p if p is not None else not r["calibration"])]
            rows = [r for r in rows if (p is None) != bool(r["calibration"])]
            mean = statistics.mean(r["spearman"] for r in rows)
            tag = f"power {p}" if p is not None else "unweighted"
            console.print(f"{method} k={k} {tag}: " + ", ".join(f"{r['ratio']:.0%} {r['spearman']:.2f}" for r in rows)
                          + f"  mean {mean:.2f}")
            if p is not None and mean > best.get((method, k), (None, -1))[1]:
                best[(method, k)] = (p, mean)
    for (method, k), (p, mean) in best.items():
        console.print(f"best weighting for {method} k={k}: power {p} (mean train Spearman {mean:.2f})")


def curve(args) -> None:
    """The reported curve on dev, with the defaults chosen by ``select``."""
    reference = calibration_counts(None)
    study = Study(None, sts_pairs("dev"), RESULTS / "sts_curve.json", reference_counts=reference, n_init=args.n_init)
    ratios = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    p = args.power
    settings = [Setting("svd", r) for r in ratios] + [Setting("svd", r, 1, OTHER, 1.0, p) for r in ratios]
    for k in (2, 3, 5, 8):
        settings += [Setting("messi", r, k) for r in ratios] + [Setting("messi", r, k, OTHER, 1.0, p) for r in ratios]
    in_domain = [Setting("svd", r, 1, IN_DOMAIN, 1.0, p) for r in (0.4, 0.6, 0.8)]
    in_domain += [Setting("messi", r, args.k, IN_DOMAIN, 1.0, p) for r in (0.4, 0.6, 0.8)]
    records = study.run(settings + in_domain)
    ref = study.uncompressed()
    main = records[: len(settings)]
    console.print(f"STS-B dev, uncompressed {ref['spearman']:.2f}; calibration: {', '.join(OTHER)}")
    console.print(table(main, ref))
    console.print("in-domain calibration (STS-B train texts):")
    console.print(table(records[len(settings):], ref))
    console.print("rel_error of rows unseen / seen in the 'other' calibration text:")
    console.print(table([r for r in main if r["method"] == "svd" or r["k"] == args.k], ref,
                        columns=("unseen_rel_error", "seen_rel_error")))
    shown = [r for r in main if r["method"] == "svd" or r["k"] in (3, 5)]
    plot(shown, ref, RESULTS / "sts_curve.png", "all-MiniLM-L6-v2: zero-shot STS-B dev vs embedding size")


def mpnet(args) -> None:
    """all-mpnet-base-v2 at 40/60/80%."""
    counts = calibration_counts("mpnet")
    study = Study("mpnet", sts_pairs("dev"), RESULTS / "sts_mpnet.json", reference_counts=counts, n_init=args.n_init)
    ratios, p = (0.4, 0.6, 0.8), args.power
    settings = [Setting("svd", r) for r in ratios] + [Setting("svd", r, 1, OTHER, 1.0, p) for r in ratios]
    settings += [Setting("messi", r, args.k) for r in ratios] + [Setting("messi", r, args.k, OTHER, 1.0, p) for r in ratios]
    records = study.run(settings)
    ref = study.uncompressed()
    console.print(f"all-mpnet-base-v2, STS-B dev, uncompressed {ref['spearman']:.2f}")
    console.print(table(records, ref))
    console.print(table(records, ref, columns=("rel_error", "fit_seconds")))
    plot(records, ref, RESULTS / "sts_mpnet.png", "all-mpnet-base-v2: zero-shot STS-B dev vs embedding size")


def main() -> None:
    from messi.calibration import DEFAULT_POWER

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("select", "curve", "mpnet"))
    parser.add_argument("--n-init", type=int, default=4, help="clustering restarts (messi compress default: 4)")
    parser.add_argument("--power", type=float, default=DEFAULT_POWER, help="weighting power for the curve")
    parser.add_argument("--k", type=int, default=5, help="MESSI k for in-domain and mpnet rows")
    args = parser.parse_args()
    {"select": select, "curve": curve, "mpnet": mpnet}[args.stage](args)


if __name__ == "__main__":
    main()
