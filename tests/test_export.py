"""ONNX export: factored and quantized layers kept so, checked in onnxruntime, and a process with
only onnxruntime, numpy and tokenizers scoring STS-B as messi does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

import messi
from messi.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, minilm_dir):
    """A tiny random encoder with the real tokenizer and the built-in model's pooling files,
    compressed (embedding and Linear layers, 4-bit coordinates)."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    model = messi.compress(transformers.BertModel(cfg).eval(), method="messi", k=3, ratio=0.5, target="all",
                           allocation="uniform", bits=4, n_init=1, max_iter=5)
    messi.save(model, out, tokenizer=messi.load_tokenizer(), source=minilm_dir)
    return out


def test_export_keeps_quantized_factors_and_matches_torch(tiny_folder, tmp_path):
    import onnx

    result = CliRunner().invoke(app, ["export", str(tiny_folder), "--format", "onnx", "--output", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "x" / "messi_onnx.json").read_text())
    assert info["check"]["max_abs_diff"] < 1e-4 and info["check"]["texts"] == 32
    names = {i.name: i.data_type for i in onnx.load(str(tmp_path / "x" / "model.onnx")).graph.initializer}
    assert names["model.embeddings.word_embeddings.coords_q"] == onnx.TensorProto.UINT8  # still 4-bit
    assert not any(n.endswith("word_embeddings.weight") for n in names)  # no dense table in the graph
    assert (tmp_path / "x" / "modules.json").is_file() and (tmp_path / "x" / "tokenizer.json").is_file()


def test_a_process_without_torch_scores_sts_as_messi_does(tiny_folder, tmp_path):
    messi.export.export_onnx(tiny_folder, tmp_path / "x")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "onnx_sts.py"), str(tmp_path / "x"), "--limit", "200"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    onnx_score = json.loads(run.stdout)
    torch_score = messi.eval_sts(str(tiny_folder), limit=200)
    assert onnx_score["pairs"] == 200
    assert abs(onnx_score["spearman"] - torch_score["spearman"]) < 0.01


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir() or p, ["not a messi folder", "messi compress"]),
    (lambda p: p, ["not a messi folder"]),
])
def test_bad_input_is_one_line(tmp_path, make, words):
    folder = make(tmp_path / "nothing")
    result = CliRunner().invoke(app, ["export", str(folder)])
    assert result.exit_code == 2
    assert all(w in result.output for w in words) and "Traceback" not in result.output


def test_other_formats_and_a_missing_extra_are_one_line(tiny_folder, monkeypatch):
    result = CliRunner().invoke(app, ["export", str(tiny_folder), "--format", "tflite"])
    assert result.exit_code == 2 and "--format must be onnx" in result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["export", str(tiny_folder)])
    assert result.exit_code == 2 and "pip install 'messi[onnx]'" in result.output


@pytest.mark.parametrize("exact_rows", [0, 300])
def test_a_causal_lm_exports_its_logits_with_the_tied_head_factored(tmp_path, exact_rows):
    import onnx

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    weights = messi.CalibrationData(row_weights=torch.rand(30522, generator=torch.Generator().manual_seed(0)) + 1)
    model = messi.compress(transformers.LlamaForCausalLM(cfg).eval(), None, weights if exact_rows else None,
                           method="messi", k=3, ratio=0.5, bits=4, n_init=1, max_iter=5, exact_rows=exact_rows)
    messi.save(model, tmp_path / "lm", tokenizer=messi.load_tokenizer())
    info = messi.export.export_onnx(tmp_path / "lm", tmp_path / "lm_onnx")
    assert (info["output"], info["family"]) == ("logits", "causal-lm") and info["check"]["max_abs_diff"] < 1e-4
    names = {i.name for i in onnx.load(str(tmp_path / "lm_onnx" / "model.onnx")).graph.initializer}
    assert not any(n.endswith(("embed_tokens.weight", "lm_head.weight")) for n in names)  # no dense table
