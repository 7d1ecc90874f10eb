"""Reliability, round 3 (second part): a loaded model owns its memory, a kill between the two
renames of --overwrite loses nothing, names, full disks and file-size limits are one line before
the work, config sizes are bounded before allocation, --save-model replaces only what messi
wrote, bad rows and huge texts are clear, and a refusal under torchrun is one line everywhere."""

import errno
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
import typer
from tests.conftest import resign

import messi
from messi import MessiError, distributed
from messi.cli.common import friendly
from messi.datasets import read_split
from messi.glue.train import WRITTEN_NAME, check_classifier_replaceable, save_classifier
from messi.io import check_free_space, check_writable_target
from messi.sources import MAX_TEXT_CHARS, read_texts

ROOT = Path(__file__).resolve().parents[1]


def tiny():
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    return messi.compress(transformers.BertModel(cfg).eval(), method="messi", k=2, ratio=0.5, n_init=1)


@pytest.fixture()
def folder(tmp_path):
    model = tiny()
    return messi.save(model, tmp_path / "out", tokenizer=messi.load_tokenizer()), model


def outputs(model):
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def test_a_loaded_model_is_unchanged_by_rewrites_of_its_file_and_alive_after_truncation(folder):
    path, _ = folder
    weights = path / "model.safetensors"
    model = messi.load(path)
    before = outputs(model)
    weights.write_bytes(bytes(weights.stat().st_size))  # rewritten in place (as `cp other over it`)
    assert torch.equal(outputs(model), before)
    os.truncate(weights, 0)  # a mapped model would die of SIGBUS here
    assert torch.equal(outputs(model), before)
    with pytest.raises(MessiError, match="model.safetensors"):  # and the damaged file is refused
        messi.load(path)


def test_the_checksum_is_of_the_bytes_the_model_was_made_from(folder, monkeypatch):
    """A file changed between the manifest check and the read is caught: the digest is taken
    of the bytes read, not of an earlier pass over the file."""
    import messi.persist as persist

    path, _ = folder
    real = persist.load_tensors

    def swapped(file, mmap=False):
        data = bytearray(Path(file).read_bytes())
        data[-1] ^= 1  # one bit of the last tensor, after the check
        Path(file).write_bytes(bytes(data))
        return real(file, mmap=mmap)

    monkeypatch.setattr(persist, "load_tensors", swapped)
    with pytest.raises(MessiError, match="does not match the sha256"):
        messi.load(path)


KILLER = """
import os, signal, sys
import messi.io as io
real = os.rename
def rename(src, dst):
    real(src, dst)
    if ".old-" in str(dst):  # killed between moving OUT aside and renaming the new one in
        os.kill(os.getpid(), signal.SIGKILL)
io.os.rename = rename
import torch, transformers, messi
model = messi.load(sys.argv[1])
messi.save(model, sys.argv[1], overwrite=True)
"""


def test_a_kill_between_the_two_renames_of_overwrite_loses_nothing(folder, tmp_path):
    path, model = folder
    before = (path / "model.safetensors").read_bytes()
    done = subprocess.run([sys.executable, "-c", KILLER, str(path)], capture_output=True, timeout=120)
    assert done.returncode == -9
    assert not path.exists() and list(path.parent.glob(".out.old-*"))  # the state the kill left
    with pytest.raises(MessiError, match="already exists"):  # the next run puts the old one back first
        messi.save(model, path)
    assert (path / "model.safetensors").read_bytes() == before and not list(path.parent.glob(".out.old-*"))
    messi.load(path)
    messi.save(model, path, overwrite=True)  # and can replace it as usual


def test_a_name_too_long_for_the_temporary_names_is_refused_before_any_work(tmp_path):
    with pytest.raises(MessiError, match="too long.*at most 230 bytes"):
        check_writable_target(tmp_path / ("x" * 240))
    check_writable_target(tmp_path / ("x" * 230))


def test_too_little_free_space_or_a_file_size_limit_is_refused_before_any_work(tmp_path, monkeypatch):
    import messi.io as io

    check_free_space(tmp_path, 1000, "writing")
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: os.statvfs_result if False else type(
        "U", (), {"free": 10, "total": 10, "used": 0})())
    with pytest.raises(MessiError, match="needs about .* MB free; free some space"):
        check_free_space(tmp_path / "new" / "deeper", 1000, "writing the compressed model")
    monkeypatch.undo()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (500, hard))
        with pytest.raises(MessiError, match=r"ulimit -f"):
            check_free_space(tmp_path, 1000, "writing")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


FSIZE = """
import resource, sys
import torch, transformers, messi
model = messi.load(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    messi.save(model, sys.argv[1], overwrite=True)
except OSError as e:
    print("errno", e.errno)
"""


def test_a_write_past_the_file_size_limit_is_an_os_error_that_keeps_the_old_folder(folder):
    path, _ = folder
    before = sorted(p.name for p in path.parent.iterdir())
    done = subprocess.run([sys.executable, "-c", FSIZE, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"errno {errno.EFBIG}" in done.stdout, done.stderr[-2000:]
    assert sorted(p.name for p in path.parent.iterdir()) == before  # no temporary left
    messi.load(path)  # the old folder, whole


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS])
def test_the_command_line_shows_a_full_disk_as_one_line(code, capsys):
    @friendly
    def command():
        raise OSError(code, os.strerror(code), "/out/model.safetensors")

    with pytest.raises(typer.Exit) as e:
        command()
    assert e.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and os.strerror(code) in err and "/out/model.safetensors" in err


def test_other_os_errors_keep_their_traceback():
    @friendly
    def command():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        command()


@pytest.mark.parametrize("key, value", [("max_position_embeddings", 10**11), ("vocab_size", -1),
                                        ("hidden_size", 1.5), ("num_hidden_layers", 10**9)])
def test_config_sizes_are_bounded_before_a_model_is_built(folder, key, value):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    config["base_config"][key] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MessiError, match=f"{key} is {value!r}, outside"):
        messi.load(resign(path))


def test_real_configs_pass_the_bounds(minilm_dir):
    from messi.checks import config_sizes

    config_sizes(json.loads((minilm_dir / "config.json").read_text()), "minilm")
    for config in (transformers.Gemma3TextConfig(), transformers.Qwen2Config(), transformers.GPT2Config(),
                   transformers.LlamaConfig(), transformers.MPNetConfig()):
        config_sizes(config.to_dict(), type(config).__name__)


def test_save_model_replaces_only_a_folder_messi_wrote(tmp_path):
    tokenizer = messi.load_tokenizer()
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64)
    plain = transformers.BertForSequenceClassification(cfg)
    out = save_classifier(plain, tokenizer, tmp_path / "model")
    assert (out / WRITTEN_NAME).is_file() and check_classifier_replaceable(out)
    save_classifier(plain, tokenizer, out)  # its own files only: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MessiError, match="holds 'notes.txt', which messi did not write"):
        save_classifier(plain, tokenizer, out)
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(MessiError, match="was not written by messi; --save-model refuses"):
        save_classifier(plain, tokenizer, foreign)
    assert (out / "notes.txt").read_text() == "mine" and (foreign / "config.json").read_text() == "{}"


def test_glue_save_model_into_a_foreign_folder_fails_before_training(tmp_path, monkeypatch):
    from messi.glue import run

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_text("theirs")
    monkeypatch.setattr(run, "fine_tune", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(MessiError, match="model exists and was not written by messi"):
        run.run_glue("rte", tmp_path, save_model=True)
    with pytest.raises(MessiError, match="ratio must be strictly between 0 and 1"):
        run.run_glue("rte", tmp_path / "o", method="svd", ratio=1.5)
    assert (tmp_path / "model" / "weights.bin").read_text() == "theirs"


def test_a_lone_carriage_return_inside_a_glue_row_is_whitespace(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    header = "index\tsentence1\tsentence2\tlabel\n"
    (rte / "train.tsv").write_bytes((header + "0\tA man\rwalks.\tHe walks.\tentailment\r\n"
                                     "1\tIt rains.\tIt is dry.\tnot_entailment\n").encode())
    (rte / "dev.tsv").write_bytes((header + "0\tA.\tB.\tentailment\n").encode())
    rows = read_split("rte", "train", tmp_path, strict=True)
    assert [r.text_a for r in rows] == ["A man walks.", "It rains."] and rows.skipped == 0
    assert [r.label for r in rows] == [0, 1]


def test_a_calibration_text_too_long_to_tokenize_is_refused(tmp_path):
    file = tmp_path / "cal.txt"
    file.write_text("short line\n" + "a" * (MAX_TEXT_CHARS + 1) + "\n")
    with pytest.raises(MessiError, match=r"text 2 has 1,000,001 characters.*split it"):
        read_texts(str(file))
    file.write_text("short line\n" + "a" * MAX_TEXT_CHARS + "\n")
    assert len(read_texts(str(file))) == 2


def test_main_checks_alone_raises_the_check_error():
    distributed.main_checks(lambda: None)
    with pytest.raises(MessiError, match="bad input"):
        distributed.main_checks(lambda: (_ for _ in ()).throw(MessiError("bad input")))


def _torchrun(tmp_path, *args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


REFUSAL = """
from messi import MessiError, distributed
distributed.init()
def check():
    raise MessiError("the output folder is a file")
try:
    distributed.main_checks(check)
except MessiError as e:
    print(f"rank {distributed.rank()}: {e}")
"""


def test_under_torchrun_a_main_refusal_reaches_every_process_as_one_line(tmp_path):
    script = tmp_path / "refuse.py"
    script.write_text(textwrap.dedent(REFUSAL))
    done = _torchrun(tmp_path, str(script), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0: the output folder is a file" in done.stdout and "rank 1: the output folder is a file" in done.stdout


@pytest.mark.slow
def test_compress_under_torchrun_fits_once_and_exits_zero(tmp_path):
    done = _torchrun(tmp_path, "-m", "messi.cli", "compress", "--method", "svd", "--ratio", "0.5", "out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model compression") == 1  # one table: one fit, one writer
    messi.load(tmp_path / "out")
    refused = _torchrun(tmp_path, "-m", "messi.cli", "compress", "--method", "svd", "--ratio", "0.5", "out")
    # the launcher reports the failed child with its own traceback; no messi frame is in it
    assert refused.returncode != 0 and "/messi/" not in refused.stderr.replace(sys.executable, "")
    assert refused.stderr.count("error: out already exists") == 1


@pytest.mark.slow
def test_a_cached_sweep_base_naming_remote_code_never_runs_it_even_with_yes_on_stdin(tmp_path):
    base = tmp_path / "sweep" / "rte" / "seed-42" / "base"
    base.mkdir(parents=True)
    marker = tmp_path / "ran"
    (base / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (base / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "auto_map": {"AutoConfig": "evil.Config",
                                              "AutoModelForSequenceClassification": "evil.Model"}}))
    done = subprocess.run([sys.executable, "-m", "messi.cli", "sweep", "--output-dir", str(tmp_path / "sweep"),
                           "--tasks", "rte", "--methods", "none", "--max-train-samples", "8", "--epochs", "0.01"],
                          input="y\n", capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert not marker.exists()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the cached base" in done.stderr and "delete that folder" in done.stderr
