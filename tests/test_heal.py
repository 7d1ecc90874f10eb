"""Healing: only the factors train, the distillation loss falls, a resumed run equals an
uninterrupted one, the loss is KL computed by hand, refusals, and the command line end to end."""

import copy
import json

import pytest
import torch
import transformers
from tests.test_perplexity import Tok
from typer.testing import CliRunner

import messi
from messi.cli import app
from messi.heal import HealConfig, distillation_loss, factor_parameters, heal
from messi.perplexity import windows

TEXTS = ["the quick brown fox jumps over the lazy dog " * 4, "pack my box with five dozen liquor jugs " * 4] * 4


def pair(seed=0, method="messi"):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    teacher = transformers.LlamaForCausalLM(cfg).eval()
    student = messi.compress(copy.deepcopy(teacher), method=method, k=2, ratio=0.6, n_init=1, max_iter=5)
    return student, teacher


def loss_on(student, teacher, config):
    ids = torch.stack([w for w in windows(Tok(), TEXTS, config.window) if w.numel() == config.window][:4])
    with torch.no_grad():
        return float(distillation_loss(student(input_ids=ids).logits, teacher(input_ids=ids).logits))


def test_the_loss_is_kl_of_teacher_to_student_computed_by_hand():
    s, t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    p, q = t.softmax(-1), s.softmax(-1)
    want = float((p * (p.log() - q.log())).sum(-1).mean())
    assert float(distillation_loss(s, t)) == pytest.approx(want, rel=1e-5)
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method, train", [("svd", "all"), ("messi", "all"), ("svd", "bases"), ("messi", "bases")])
def test_healing_lowers_the_distillation_loss_and_trains_only_the_factors(method, train):
    student, teacher = pair(method=method)
    config = HealConfig(steps=30, learning_rate=1e-2, window=16, train=train)
    trained = {"all": ("embed_tokens.coords", "embed_tokens.bases", "embed_tokens.basis"),
               "bases": ("embed_tokens.bases", "embed_tokens.basis")}[train]
    frozen = {n: p.clone() for n, p in student.named_parameters() if not n.endswith(trained)}
    before = loss_on(student, teacher, config)
    record = heal(student, teacher, Tok(), TEXTS, config, progress=False)
    # the bases alone are a few numbers: they close less of the gap than the coordinates too
    assert loss_on(student, teacher, config) < (0.7 if train == "all" else 0.85) * before
    assert len(record["losses"]) == 30 and record["tokens_seen"] == 30 * 16
    assert record["trained"] == sorted(factor_parameters(student, train))
    assert all(name.endswith(trained) for name in record["trained"])
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    assert not any(p.requires_grad for p in student.parameters())  # handed back ready for eval


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    config = HealConfig(steps=6, learning_rate=1e-2, window=16, checkpoint_every=2)
    straight, teacher = pair()
    heal(straight, teacher, Tok(), TEXTS, config, progress=False)
    resumed, teacher = pair()
    first = heal(resumed, teacher, Tok(), TEXTS, HealConfig(**{**config.__dict__, "steps": 4}),
                 checkpoint=tmp_path / "ck", progress=False)
    assert first["resumed_from_step"] == 0
    again, teacher = pair()  # a fresh process: the compressed model as it was, then the checkpoint
    record = heal(again, teacher, Tok(), TEXTS, config, checkpoint=tmp_path / "ck", progress=False)
    assert record["resumed_from_step"] == 4 and len(record["losses"]) == 6
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_other_settings_start_over(tmp_path):
    student, teacher = pair()
    heal(student, teacher, Tok(), TEXTS, HealConfig(steps=2, window=16), checkpoint=tmp_path / "ck", progress=False)
    other, teacher = pair()
    record = heal(other, teacher, Tok(), TEXTS, HealConfig(steps=2, window=16, seed=1), checkpoint=tmp_path / "ck",
                  progress=False)
    assert record["resumed_from_step"] == 0


def test_refusals():
    student, teacher = pair()
    with pytest.raises(messi.MessiError, match="no factored layer"):
        heal(teacher, teacher, Tok(), TEXTS, progress=False)
    with pytest.raises(messi.MessiError, match="fewer than one step needs"):
        heal(student, teacher, Tok(), ["short"], HealConfig(window=64), progress=False)
    with pytest.raises(messi.MessiError, match="--steps"):
        HealConfig(steps=0)
    with pytest.raises(messi.MessiError, match="--train must be one of bases, all"):
        HealConfig(train="everything")
    quantized, _ = pair()
    quantized.get_input_embeddings().quantize_(8)
    with pytest.raises(messi.MessiError, match="8-bit coordinates"):
        factor_parameters(quantized)
    with pytest.raises(messi.MessiError, match="not a causal LM"):
        heal(messi.compress(messi.load_pretrained(), method="svd", ratio=0.5), teacher, Tok(), TEXTS, progress=False)


@pytest.mark.slow
def test_the_command_line_heals_a_folder_in_place(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    source = tmp_path / "tiny"
    transformers.LlamaForCausalLM(cfg).save_pretrained(source)
    messi.load_tokenizer().save_pretrained(source)
    runner = CliRunner()
    out = tmp_path / "out"
    done = runner.invoke(app, ["compress", "--model", str(source), "--method", "svd", "--ratio", "0.5", str(out)])
    assert done.exit_code == 0, done.output
    before = messi.load(out).state_dict()
    done = runner.invoke(app, ["heal", str(out), "--steps", "3", "--window", "16", "--calibration", "glue:rte"])
    assert done.exit_code == 0, done.output
    info = json.loads((out / "messi.json").read_text())
    assert len(info["healing"]["losses"]) == 3 and info["healing"]["teacher"] == str(source)
    healed = messi.load(out)  # a valid folder: manifest and checksum made anew
    assert not torch.equal(healed.state_dict()["model.embed_tokens.basis"], before["model.embed_tokens.basis"])
    assert torch.equal(healed.state_dict()["model.embed_tokens.coords"], before["model.embed_tokens.coords"])
    assert not list(tmp_path.glob(".out.heal-checkpoint"))
    done = runner.invoke(app, ["heal", str(out), "--output", str(source), "--overwrite", "--steps", "1"])
    assert done.exit_code == 2 and "not written by messi" in done.output  # the original is never replaced


TORCHRUN = """
import json, sys
import torch
from messi import distributed
from messi.heal import HealConfig, heal
from tests.test_heal import TEXTS, pair
from tests.test_perplexity import Tok

distributed.init()
student, teacher = pair()
steps, checkpoint = int(sys.argv[2]), (sys.argv[3] + str(distributed.rank())) if len(sys.argv) > 3 else None
record = heal(student, teacher, Tok(), TEXTS, HealConfig(steps=steps, learning_rate=1e-2, window=16), checkpoint,
              progress=False)
basis = student.get_input_embeddings().bases.flatten().tolist()
json.dump({"losses": record["losses"], "tokens": record["tokens_seen"], "basis": basis},
          open(sys.argv[1] + f"/rank{distributed.rank()}.json", "w"))
"""


@pytest.mark.slow
def test_under_torchrun_every_process_heals_the_same_model_on_its_own_windows(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "heal.py"
    script.write_text(TORCHRUN)
    root = Path(__file__).resolve().parents[1]

    def torchrun(*args):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), str(tmp_path), *args], capture_output=True, text=True, timeout=300,
                              cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]

    # resumed: only the main process wrote a checkpoint (in ck0; ck1 stays empty, as on another
    # machine), and the other receives what main resumed
    torchrun("2", str(tmp_path / "ck"))
    assert (tmp_path / "ck0").is_dir() and not (tmp_path / "ck1").exists()
    resumed = torchrun("3", str(tmp_path / "ck"))
    r0, r1 = torchrun("3")
    assert resumed[0]["basis"] == resumed[1]["basis"] == r0["basis"]
    assert r0["basis"] == r1["basis"]  # averaged gradients: one model on every process
    assert r0["losses"] == r1["losses"] and r0["tokens"] == 2 * 3 * 16  # the mean loss of two windows a step
    alone, teacher = pair()
    heal(alone, teacher, Tok(), TEXTS, HealConfig(steps=3, learning_rate=1e-2, window=16), progress=False)
    assert alone.get_input_embeddings().bases.flatten().tolist() != r0["basis"]  # two windows a step, not one
