"""Zero-shot STS-B from an exported folder with onnxruntime, numpy and tokenizers only (no torch,
no messi): what a deployment runs. Prints JSON {"spearman", "pearson", "pairs"}.

    python scripts/onnx_sts.py OUT_ONNX [--glue-dir ../shared/data/glue] [--limit N]
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return (sums / counts)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def embed(folder: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    info = json.loads((folder / "messi_onnx.json").read_text())
    pooling = info["pooling"]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(min(pooling["max_length"], 512))
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start:start + batch_size])
        feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}
        if "token_type_ids" in info["inputs"]:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        hidden = session.run([info["output"]], feed)[0]
        mask = feed["attention_mask"][..., None].astype(hidden.dtype)
        if pooling["mode"] == "cls":
            vec = hidden[:, 0]
        elif pooling["mode"] == "max":
            vec = np.where(mask > 0, hidden, -np.inf).max(1)
        else:
            summed, count = (hidden * mask).sum(1), np.clip(mask.sum(1), 1e-9, None)
            vec = summed / (count if pooling["mode"] == "mean" else np.sqrt(count))
        if pooling["normalize"]:
            vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
        out.append(vec)
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--glue-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args()
    with open(args.glue_dir / "STS-B" / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:args.limit]
    a, b = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
    gold = np.array([float(r["score"]) for r in rows])
    emb = embed(args.folder, a + b)
    ea, eb = emb[:len(a)], emb[len(a):]
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    assert "torch" not in sys.modules and "messi" not in sys.modules  # what a deployment has
    print(json.dumps({"spearman": 100 * pearson(ranks(cos), ranks(gold)), "pearson": 100 * pearson(cos, gold),
                      "pairs": len(gold)}))


if __name__ == "__main__":
    main()
