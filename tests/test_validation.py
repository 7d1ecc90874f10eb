"""Bad input is refused before any work, with one line naming the option; nothing is lost."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from messi.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["--max-eval-samples", "0"], ["--max-eval-samples"]),
    (["--max-train-samples", "-1"], ["--max-train-samples"]),
    (["--max-seq-length", "4096"], ["--max-seq-length"]),
    (["--epochs", "nan"], ["--epochs", "finite"]),
    (["--epochs", "inf"], ["--epochs"]),
    (["--learning-rate", "nan"], ["--learning-rate"]),
    (["--seed", "-1"], ["--seed"]),
    (["--seed", str(2**33)], ["--seed"]),
])
def test_glue_options_are_checked_before_training(tmp_path, args, words):
    one_line_error(cli("glue", "--task", "rte", "--output-dir", tmp_path / "o", *args), *words)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_glue_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("mine")
    one_line_error(cli("glue", "--task", "rte", "--output-dir", f), "is a file")
    one_line_error(cli("glue", "--task", "rte", "--output-dir", f / "sub"), "is a file")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("command", [["demo"], ["sweep", "--tasks", "rte"]])
def test_demo_and_sweep_output_dir_that_is_a_file_or_read_only(tmp_path, command):
    f = tmp_path / "f"
    f.write_text("mine")
    one_line_error(cli(*command, "--output-dir", f), "is a file")
    assert f.read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        one_line_error(cli(*command, "--output-dir", ro), "cannot write")


@pytest.mark.parametrize("args, words", [
    (["--seeds", "-1"], ["--seeds"]),
    (["--recovery-epochs", "nan"], ["--recovery-epochs"]),
    (["--recovery-epochs", "-1"], ["--recovery-epochs"]),
    (["--tasks", ","], ["--tasks", "empty"]),
    (["--seeds", ""], ["--seeds", "empty"]),
])
def test_sweep_options(tmp_path, args, words):
    one_line_error(cli("sweep", "--output-dir", tmp_path / "s", *args), *words)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, words", [
    (["--seed", str(2**70)], ["--seed"]),
    (["--k", "0"], ["--k"]),
    (["--n-init", "0"], ["--n-init"]),
    (["--init-size", "-1"], ["--init-size"]),
])
def test_compress_options(tmp_path, args, words):
    one_line_error(cli("compress", *args, tmp_path / "o"), *words)


@pytest.mark.parametrize("given, passed", [(None, 32768), ("100", 100), ("0", None)])
def test_compress_hands_init_size_to_the_clustering(tmp_path, monkeypatch, given, passed):
    """--init-size reaches messi.compress (0: every restart on all rows), default as the library's."""
    import importlib

    module = importlib.import_module("messi.cli.model_commands")
    seen = {}
    real = module.compress_model

    def spy(model, config, calibration=None, **kw):
        seen["init_size"] = config.init_size
        return real(model, config, calibration, **kw)

    monkeypatch.setattr(module, "compress_model", spy)
    args = ["--init-size", given] if given is not None else []
    result = cli("compress", "--method", "svd", "--ratio", "0.5", *args, tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert seen["init_size"] == passed
    assert json.loads((tmp_path / "o" / "messi.json").read_text())["init_size"] == passed


def test_compress_output_under_a_file_fails_before_work(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_line_error(cli("compress", "--method", "svd", f / "out"), "is a file")


def test_compress_overwrite_refuses_a_foreign_folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("keep")
    one_line_error(cli("compress", "--method", "svd", "--overwrite", docs), "not written by messi")
    assert (docs / "a.txt").read_text() == "keep"


def test_saved_files_get_the_umask_mode(tmp_path):
    result = cli("compress", "--method", "svd", "--ratio", "0.5", tmp_path / "o")
    assert result.exit_code == 0, result.output
    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp_path / "o").rglob("*"):
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# --- GLUE readers ------------------------------------------------------------------------------

def rte_dir(tmp_path, dev_bytes: bytes):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    (tmp_path / "RTE" / "dev.tsv").write_bytes(dev_bytes)
    return tmp_path


HEADER = b"index\tsentence1\tsentence2\tlabel\n"


def test_non_utf8_row_names_file_and_line(tmp_path):
    from messi import MessiError
    from messi.datasets import read_split

    d = rte_dir(tmp_path, HEADER + b"0\ta\tb\tentailment\n1\t\xff\xfe\tb\tentailment\n")
    with pytest.warns(UserWarning, match=r"dev.tsv:3: not UTF-8"):
        rows = read_split("rte", "dev", d)
    assert len(rows) == 1 and rows.skipped == 1
    with pytest.raises(MessiError, match=r"dev.tsv:3: not UTF-8"):
        read_split("rte", "dev", d, strict=True)


def test_huge_field_and_extra_column(tmp_path):
    from messi import MessiError
    from messi.datasets import read_split

    big = b"x" * 200_000
    d = rte_dir(tmp_path, HEADER + b"0\t" + big + b"\tb\tentailment\n1\ta\tb\tentailment\textra\n")
    rows = read_split("rte", "dev", d)
    assert len(rows[0].text_a) == 200_000 and len(rows) == 2
    with pytest.raises(MessiError, match=r"dev.tsv:3: .*5 columns, expected 4"):
        read_split("rte", "dev", d, strict=True)


def test_split_without_usable_rows(tmp_path):
    from messi import MessiError
    from messi.datasets import read_split

    d = rte_dir(tmp_path, HEADER + b"0\ta\tb\tmaybe\n")
    with pytest.warns(UserWarning), pytest.raises(MessiError, match="no usable row"):
        read_split("rte", "dev", d)


def test_report_names_a_corrupt_cell_and_sweep_redoes_it(tmp_path):
    from messi import MessiError
    from messi.glue.report import load_records
    from messi.glue.sweep import _read

    cell = tmp_path / "rte" / "seed-1" / "svd-r0.4" / "metrics.json"
    cell.parent.mkdir(parents=True)
    cell.write_text("{not json")
    with pytest.raises(MessiError, match=r"svd-r0.4/metrics.json is corrupt"):
        load_records(tmp_path)
    assert _read(cell) is None  # the sweep sees it as not done
    cell.write_text(json.dumps({"task": "rte"}))
    assert _read(cell) is None
    with pytest.raises(MessiError, match="lacks"):
        load_records(tmp_path)


# --- the library validates like the CLI ---------------------------------------------------------

def test_library_accepts_numpy_scalars_and_rejects_misuse():
    import numpy as np
    import torch

    import messi
    from messi import MessiError, ProjectiveClustering

    X = np.random.default_rng(0).normal(size=(40, 6))
    pc = ProjectiveClustering(np.int64(2), np.int64(2), seed=np.int64(1), n_init=np.int32(1)).fit(X)
    assert pc.bases_.shape == (2, 2, 6)
    for kwargs, match in [(dict(seed=None), "seed"), (dict(seed=2**70), "seed"), (dict(max_iter=2.5), "max_iter"),
                          (dict(n_init=0), "n_init"), (dict(tol=float("nan")), "tol")]:
        with pytest.raises(MessiError, match=match):
            ProjectiveClustering(2, 2, **kwargs).fit(X)
    with pytest.raises(MessiError, match="not fitted"):
        ProjectiveClustering(2, 2).predict(X)
    with pytest.raises(MessiError, match="columns"):
        pc.predict(np.ones((3, 5)))
    with pytest.raises(MessiError, match="numbers"):
        ProjectiveClustering(2, 1).fit(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))
    with pytest.raises(MessiError, match="complex"):
        ProjectiveClustering(2, 1).fit(np.ones((4, 3)) * 1j)
    unit = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
    big = ProjectiveClustering(2, 2, n_init=1).fit(unit * 1e20)  # float32 squares would overflow
    small = ProjectiveClustering(2, 2, n_init=1).fit(unit.double())
    assert np.isfinite(big.cost_) and big.cost_ == pytest.approx(small.cost_ * 1e40, rel=1e-6)
    assert torch.equal(big.labels_, small.labels_)

    model = messi.load_pretrained()
    messi.compress(model, method="svd", ratio=np.float32(0.5))
    assert model.messi_config["ratio"] == pytest.approx(0.5)
    with pytest.raises(MessiError, match="seed"):
        messi.compress(messi.load_pretrained(), method="messi", ratio=0.5, k=np.int64(2), seed=2**64)


def test_plain_hf_folders_that_are_broken(tmp_path):
    import transformers

    import messi
    from messi import MessiError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{oops")
    with pytest.raises(MessiError, match="config.json"):
        messi.load_pretrained(str(bad))
    cfg_only = tmp_path / "cfg"
    transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=8).save_pretrained(cfg_only)
    with pytest.raises(MessiError, match="could not load"):
        messi.load_pretrained(str(cfg_only))
    (cfg_only / "pytorch_model.bin").write_bytes(b"pickle would run here")  # never unpickled
    with pytest.raises(MessiError, match="could not load"):
        messi.load_pretrained(str(cfg_only))


def test_fetch_model_empty_name(tmp_path):
    one_line_error(cli("fetch-model", ""), "unknown model")
