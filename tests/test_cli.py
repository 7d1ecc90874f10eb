"""The command line, as a user runs it: real model, real files, one-line errors with exit 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "messi.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def messi_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out_messi"
    result = run("compress", "--method", "messi", "--k", "3", "--ratio", "0.4", "--seed", "0",
                 "--n-init", "1", "--max-iter", "10", out)
    assert result.returncode == 0, result.stderr
    return out


def test_compress_writes_folder_and_info_reads_it(messi_dir):
    info = json.loads(run("info", messi_dir, "--json").stdout)
    assert info["method"] == "messi" and info["k"] == 3 and info["rank"] == 222
    assert 0.40 <= info["compression"] < 0.41
    assert 0 < info["rel_error"] < 0.15
    assert not [p for p in messi_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left
    table = run("info", messi_dir)
    assert table.returncode == 0 and "rel_error" in table.stdout


def test_existing_out_dir_is_refused_then_overwritten(messi_dir):
    before = (messi_dir / "model.safetensors").stat().st_mtime_ns
    assert_one_line_error(run("compress", "--method", "svd", messi_dir), "already exists", "--overwrite")
    assert (messi_dir / "model.safetensors").stat().st_mtime_ns == before
    ok = run("compress", "--method", "svd", "--ratio", "0.5", "--overwrite", messi_dir)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((messi_dir / "messi.json").read_text())["method"] == "svd"


@pytest.mark.parametrize("args, words", [
    (["--ratio", "0"], ["ratio"]),
    (["--ratio", "1.5"], ["ratio"]),
    (["--k", "0"], ["k"]),
    (["--rank", "0"], ["rank"]),
    (["--rank", "384"], ["rank", "383"]),
    (["--ratio", "0.999"], ["no rank"]),
    (["--method", "pca"], ["method"]),
    (["--model", "/no/such/model"], ["does not exist"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    result = run("compress", *args, tmp_path / "out")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out").exists()


def test_model_without_input_embeddings(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, image_size=8, patch_size=4)
    transformers.ViTModel(cfg).save_pretrained(tmp_path / "vit")
    assert_one_line_error(run("compress", "--model", tmp_path / "vit", tmp_path / "out"), "no input embedding")


def test_nan_in_embedding(tmp_path):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[3, 1] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    assert_one_line_error(run("compress", "--model", tmp_path / "nan", "--method", "svd", tmp_path / "out"), "NaN")


def test_info_on_a_folder_that_is_not_messi(tmp_path):
    assert_one_line_error(run("info", tmp_path), "not a messi folder")


def test_help_everywhere():
    for cmd in ([], ["compress"], ["info"]):
        result = run(*cmd, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_calibrated_compress_then_eval_sts(tmp_path):
    out = tmp_path / "cal"
    result = run("compress", "--method", "messi", "--k", "3", "--ratio", "0.6", "--n-init", "1",
                 "--max-iter", "5", "--calibration", "glue:rte", "--calibration", "glue:wnli", "--output-texts", "64",
                 out)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "messi.json").read_text())
    cal = info["calibration"]
    assert cal["sources"] == ["glue:rte", "glue:wnli"]
    assert cal["texts"] == 2 * 2490 + 2 * 635
    from messi.calibration import DEFAULT_ALPHA, DEFAULT_POWER
    assert cal["weighting"]["alpha"] == DEFAULT_ALPHA and cal["weighting"]["power"] == DEFAULT_POWER
    assert 0 < info["weighted_rel_error"] < info["rel_error"]
    assert cal["output_metric"]["texts"] == 64
    assert cal["output_metric"]["output"] == "sentence embedding (mean pooling, normalised)"
    assert 0 < info["output_rel_error"] < 1
    shown = run("info", out)
    assert shown.returncode == 0 and f"{info['output_rel_error']:.5f}" in shown.stdout
    assert "output metric texts / output" in shown.stdout and "64 / sentence" in shown.stdout
    assert (out / "modules.json").is_file()
    scored = run("eval-sts", out, "--json")
    assert scored.returncode == 0, scored.stderr
    data = json.loads(scored.stdout)
    assert data["pairs"] == 1500 and 80 < data["spearman"] < 90


@pytest.mark.parametrize("source, extra, words", [
    ("EMPTY", [], ["has no text"]),
    ("missing.txt", [], ["does not exist"]),
    ("glue:nope", [], ["unknown GLUE task"]),
    ("TABLE", ["--text-column", "body"], ["no column 'body'"]),
])
def test_bad_calibration_is_one_line(tmp_path, source, extra, words):
    if source == "EMPTY":
        source = tmp_path / "empty.txt"
        source.write_text("\n\n")
    elif source == "TABLE":
        source = tmp_path / "t.csv"
        source.write_text("id,text\n1,a\n")
    result = run("compress", "--calibration", source, *extra, tmp_path / "out")
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out").exists()


def test_bad_weighting_or_output_texts_fail_before_loading(tmp_path):
    assert_one_line_error(run("compress", "--calibration", "glue:rte", "--output-texts", "-1", tmp_path / "o"),
                          "--output-texts")
    assert_one_line_error(run("compress", "--calibration", "glue:rte", "--weight-alpha", "0", tmp_path / "o"),
                          "--weight-alpha")


def test_output_aware_by_default_only_where_it_was_chosen():
    """Sentence-embedding / plain encoders get the output metric by default; a model with a task
    head does not (nothing chose it there)."""
    import transformers

    from messi.calibration import DEFAULT_OUTPUT_TEXTS
    from messi.cli import default_output_texts

    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    assert default_output_texts(transformers.BertModel(config)) == DEFAULT_OUTPUT_TEXTS
    assert default_output_texts(transformers.BertForSequenceClassification(config)) == 0


def test_a_causal_lm_table_gets_its_family_k_and_exact_rows_unless_given():
    import transformers

    from messi.cli.model_commands import _family_defaults
    from messi.config import CalibrationSettings, CompressionConfig
    from messi.families import CausalLM

    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    lm = transformers.LlamaForCausalLM(cfg)
    base = CompressionConfig(k=5)
    assert _family_defaults(base, lm, None, None).k == CausalLM.embedding_k == 20
    assert _family_defaults(base, lm, 5, None).k == 5  # the user's k wins, even when it equals the tool's default
    assert _family_defaults(base.replace(target="all"), lm, None, None).k == 5  # only the table's k was measured
    assert _family_defaults(base.replace(method="svd"), lm, None, None).k == 1
    encoder = transformers.BertModel(transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                             num_attention_heads=2, intermediate_size=32))
    assert _family_defaults(base, encoder, None, None).k == 5
    # exact rows: only with calibration (they are its most used tokens), a share of the budget
    assert _family_defaults(base, lm, None, None).exact_rows == 0
    calibrated = base.replace(calibration=CalibrationSettings(("glue:sst2",)), ratio=0.5)
    assert _family_defaults(calibrated, lm, None, None).exact_rows == int(CausalLM.embedding_exact_share * 0.5 * 60)
    assert _family_defaults(calibrated.replace(rank=4), lm, None, None).exact_rows == 0  # no budget to share
    assert _family_defaults(calibrated, lm, None, 0).exact_rows == 0
    assert _family_defaults(calibrated, encoder, None, None).exact_rows == 0
