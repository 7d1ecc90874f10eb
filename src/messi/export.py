"""Deploy without messi: a compressed folder as an ONNX graph that onnxruntime runs alone.

The factored layers stay factored in the graph (gathers of coordinates and cluster ids, k small
products, the tied head's per-cluster scores) and quantized coordinates stay integers (the
dequantization is in the graph), so the file is as small as the folder. Written atomically:

    OUT_ONNX/model.onnx            inputs input_ids, attention_mask (+ token_type_ids if the model
                                   takes them), dynamic batch and sequence; output
                                   last_hidden_state (encoders) or logits (causal LMs, task heads)
    OUT_ONNX/tokenizer.json ...    the tokenizer files
    OUT_ONNX/messi_onnx.json       inputs, output, pooling (mode, normalize, max_length), the
                                   check below, file sizes
    OUT_ONNX/modules.json ...      a sentence-transformers source's pooling files

The check runs onnxruntime on real text (STS-B dev sentences) against the torch model and
records the largest absolute difference. Needs the optional extra: ``pip install messi[onnx]``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .datasets import read_split
from .errors import MessiError
from .families import family_of
from .io import atomic_dir, check_writable_target, write_json
from .layers import ProjectiveEmbedding
from .models import load_tokenizer
from .persist import is_messi_folder, load
from .pooling import read_pooling
from .stfolder import copy_sentence_transformers_files

#: ONNX opset: 18 has the bitwise operators that unpack 4-bit coordinates.
OPSET = 18
ONNX_NAME = "model.onnx"
INFO_NAME = "messi_onnx.json"


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise MessiError(f"ONNX export needs the onnx extra ({e.name} is missing): pip install 'messi[onnx]'") from e
    return onnxruntime


class _Graph(nn.Module):
    """What the graph computes: the model's user-facing output from its token inputs."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return getattr(self.model(**kwargs), self.output)


def _model_inputs(model: nn.Module, tokenizer) -> tuple[str, ...]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []) and \
            "token_type_ids" in model.forward.__code__.co_varnames:
        names.append("token_type_ids")
    return tuple(names)


def _sample_texts(data_dir=None, n: int = 16) -> list[str]:
    """Real sentences for the check: STS-B dev's first ``n`` sentence pairs."""
    try:
        rows = read_split("stsb", "dev", data_dir)[:n]
        return [t for r in rows for t in (r.text_a, r.text_b)]
    except MessiError:  # no GLUE folder here: a few plain sentences
        return ["A man is playing a guitar.", "The cat sat on the mat near the window.",
                "Stocks fell sharply on Monday.", "She did not like the movie at all."]


def _export_graph(model: nn.Module, tokenizer, file: Path, texts: list[str]) -> tuple[str, tuple[str, ...]]:
    """Trace ``model`` to ``file``; returns (output name, input names)."""
    output = "logits" if family_of(model).output_name != "last hidden states" else "last_hidden_state"
    inputs = _model_inputs(model, tokenizer)
    batch = tokenizer(texts[:2], padding=True, return_tensors="pt")
    args = tuple(batch[name] for name in inputs)
    batch_dim, seq_dim = torch.export.Dim("batch", max=4096), torch.export.Dim("sequence", max=8192)
    dynamic = {name: {0: batch_dim, 1: seq_dim} for name in inputs}
    for m in model.modules():  # the lookup's data-dependent cluster split becomes one gather
        if isinstance(m, ProjectiveEmbedding):
            m.static_lookup = True
    try:
        with torch.no_grad():
            model(**{name: batch[name] for name in inputs})  # the layers' cluster plans, cached as constants
            torch.onnx.export(_Graph(model, output), args, str(file), input_names=list(inputs),
                              output_names=[output], dynamic_shapes=dynamic, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False, optimize=False)
    finally:
        for m in model.modules():
            if isinstance(m, ProjectiveEmbedding):
                m.static_lookup = False
    _strip_trace_metadata(file)
    return output, inputs


def _strip_trace_metadata(file: Path) -> None:
    """Drop the exporter's per-node metadata (Python stack traces: about as many bytes as the
    weights of a small model); the graph and its weights are unchanged."""
    import onnx

    graph = onnx.load(str(file))
    for node in graph.graph.node:
        del node.metadata_props[:]
    onnx.save(graph, str(file))


def check_onnx(model: nn.Module, tokenizer, file: Path, output: str, inputs: tuple[str, ...], texts: list[str],
               max_length: int = 128) -> float:
    """Largest absolute difference between onnxruntime's and torch's outputs on ``texts`` (real
    tokens only), batched as the texts come."""
    ort = _require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for start in range(0, len(texts), 8):
        batch = tokenizer(texts[start:start + 8], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        feed = {name: batch[name].numpy().astype(np.int64) for name in inputs}
        got = session.run([output], feed)[0]
        with torch.no_grad():
            want = getattr(model(**{name: batch[name] for name in inputs}), output).float().numpy()
        mask = batch["attention_mask"].numpy().astype(bool)
        worst = max(worst, float(np.abs(got - want)[mask].max()) if got.ndim == 3 else float(np.abs(got - want).max()))
    return worst


def export_onnx(folder: str | os.PathLike, output: str | os.PathLike | None = None, overwrite: bool = False,
                data_dir=None) -> dict:
    """Export the compressed folder ``folder`` to ``output`` (default FOLDER_onnx) and check it;
    returns what ``messi_onnx.json`` records."""
    _require_onnx()
    folder = Path(folder)
    if not is_messi_folder(folder):
        raise MessiError(f"{folder} is not a messi folder (no messi.json); compress a model first with `messi compress`")
    output = Path(output) if output is not None else folder.with_name(folder.name + "_onnx")
    check_writable_target(output, replace=overwrite, is_ours=lambda p: (Path(p) / INFO_NAME).is_file())
    model = load(folder).float().eval()
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        raise MessiError(f"{folder} has no tokenizer files; the exported model needs them (re-run `messi compress`)")
    texts = _sample_texts(data_dir)
    pooling = read_pooling(folder)
    with atomic_dir(output, replace=overwrite) as tmp:
        name, inputs = _export_graph(model, tokenizer, tmp / ONNX_NAME, texts)
        diff = check_onnx(model, tokenizer, tmp / ONNX_NAME, name, inputs, texts, min(pooling.max_length, 512))
        tokenizer.save_pretrained(tmp)
        copy_sentence_transformers_files(folder, tmp)
        for extra in ("config.json",):
            shutil.copy2(folder / extra, tmp / extra)
        info = {"inputs": list(inputs), "output": name, "opset": OPSET, "family": family_of(model).name,
                "pooling": {"mode": pooling.mode, "normalize": pooling.normalize, "max_length": pooling.max_length},
                "check": {"texts": len(texts), "max_abs_diff": diff, "data": "STS-B dev sentences"},
                "onnx_bytes": (tmp / ONNX_NAME).stat().st_size, "source": str(folder)}
        if diff > 1e-3:
            raise MessiError(f"the exported graph differs from the torch model by {diff:.3g} on real text; "
                             "nothing was written (please report this model)")
        write_json(tmp / INFO_NAME, info)
    return info
