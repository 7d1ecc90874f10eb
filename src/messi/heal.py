"""Healing: a short distillation of a compressed causal LM to its original's next-token
distributions on calibration text, training the factors only.

Each step takes ``batch_size`` windows of ``window`` tokens of the calibration text (cut as the
perplexity windows are, BOS first, shuffled by ``seed``), runs the original (the teacher, frozen)
and the compressed model (the student), and lowers KL(teacher || student) summed over the
vocabulary and averaged over the tokens, with AdamW on the student's factored layers' float
parameters (coordinates and bases); everything else stays as compressed. Under ``torchrun`` /
``accelerate launch`` every process takes its own windows and the factors' gradients are
averaged (``distributed.average_gradients``), so all processes hold the same model; only the
main process writes.

Resume: every ``checkpoint_every`` steps the factors, the optimizer's moments and the losses so
far are written (safetensors + JSON, atomically) to a checkpoint folder; a run given the same
folder, model and settings starts from its last step.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from . import checks, distributed
from .errors import MessiError
from .families import CausalLM, family_of
from .io import atomic_dir, write_json
from .perplexity import windows
from .storage import CoordinateStorage

CHECKPOINT_WEIGHTS, CHECKPOINT_STATE = "checkpoint.safetensors", "state.json"
TRAIN_CHOICES = ("bases", "all")


@dataclass(frozen=True)
class HealConfig:
    """Settings of a healing run (the defaults fit 2 CPU cores: 200 steps on Gemma 3 270M take
    about 7 minutes of wall time, 14 CPU minutes)."""

    steps: int = 200
    #: chosen on the calibration loss (Gemma -50%, bases, 20 steps): 3e-5 0.441, 1e-4 0.497 (no
    #: better than no training, 0.493), 1e-3 diverged (docs/benchmarks.md section 9)
    learning_rate: float = 3e-5
    window: int = 128
    batch_size: int = 1
    seed: int = 0
    checkpoint_every: int = 20
    #: what trains: "bases" (the k stacked j x d bases, and Linear layers' shared factors: few
    #: numbers, every row moves with its subspace) or "all" (the per-row coordinates too)
    train: str = "bases"

    def __post_init__(self):
        if self.train not in TRAIN_CHOICES:
            raise MessiError(f"--train must be one of {', '.join(TRAIN_CHOICES)}, got {self.train!r}")
        checks.integer("--steps", self.steps, 1, 10_000_000)
        checks.real("--learning-rate", self.learning_rate, 0, 1.0, low_open=True)
        checks.integer("--window", self.window, 8, 1 << 16)
        checks.integer("--batch-size", self.batch_size, 1, 4096)
        checks.seed("--seed", self.seed)
        checks.integer("--checkpoint-every", self.checkpoint_every, 1)


def factor_parameters(model: nn.Module, train: str = "all") -> dict[str, nn.Parameter]:
    """name -> the float parameters of the model's factored layers that healing trains: with
    ``train="all"`` coordinates and bases, with "bases" all but the per-row coordinates. MessiError
    if there is none, or if coordinates are stored as integers."""
    params = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, CoordinateStorage):
            continue
        if module.bits is not None:
            raise MessiError(f"{prefix or 'the embedding'} stores {module.bits}-bit coordinates, which gradients "
                             "cannot move; heal a folder compressed without --bits/--size")
        for name, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and (train == "all" or name != module._coord_name):
                params[f"{prefix}.{name}" if prefix else name] = p
    if not params:
        raise MessiError("this model has no factored layer to heal; compress it with messi first")
    return params


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token, summed over the vocabulary and averaged over the tokens:
    logits (..., n) of both models on the same inputs; a scalar."""
    n = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, n).float(), dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, n).float(), dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def _batches(tokenizer, texts: list[str], config: HealConfig) -> list[torch.Tensor]:
    """Windows of the calibration text, full length only, in the seeded order every process
    shares."""
    chunks = [w for w in windows(tokenizer, texts, config.window) if w.numel() == config.window]
    if len(chunks) < config.batch_size * distributed.world_size():
        raise MessiError(f"the calibration text gives {len(chunks)} windows of {config.window} tokens, fewer than "
                         "one step needs; give more text or a smaller --window / --batch-size")
    random.Random(config.seed).shuffle(chunks)
    return chunks


def _step_ids(chunks: list[torch.Tensor], step: int, config: HealConfig) -> torch.Tensor:
    """(batch_size, window) token ids of this process for ``step``, cycling through the windows."""
    per_step = config.batch_size * distributed.world_size()
    first = step * per_step + distributed.rank() * config.batch_size
    return torch.stack([chunks[(first + i) % len(chunks)] for i in range(config.batch_size)])


def _run_key(student: nn.Module, config: HealConfig) -> dict:
    """What a checkpoint must match to be resumed: the compressed model and the settings that
    shape the steps (not how many there are: a rerun with more steps goes on)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("steps", "checkpoint_every")}
    return {"model": (getattr(student, "messi_config", None) or {}).get("messi_json_sha256"), **settings}


def _save_checkpoint(folder: Path, params: dict[str, nn.Parameter], optimizer, state: dict) -> None:
    """The factors, AdamW's moments (safetensors) and ``state`` (JSON), replacing ``folder`` at once."""
    tensors = {f"param.{name}": p.detach().contiguous() for name, p in params.items()}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim.{name}.{key}"] = torch.as_tensor(value).detach().contiguous()
    with atomic_dir(folder, replace=True) as tmp:
        save_file(tensors, str(tmp / CHECKPOINT_WEIGHTS))
        write_json(tmp / CHECKPOINT_STATE, state)


def _resume(folder: Path | None, params: dict[str, nn.Parameter], optimizer, key: dict) -> dict | None:
    """The saved state if ``folder`` holds a checkpoint of this very run (factors and moments put
    back in place); None to start from step 0."""
    if folder is None or not (folder / CHECKPOINT_STATE).is_file():
        return None
    try:
        state = json.loads((folder / CHECKPOINT_STATE).read_text())
        tensors = load_file(str(folder / CHECKPOINT_WEIGHTS))
    except (OSError, ValueError) as e:
        raise MessiError(f"{folder} holds a damaged healing checkpoint ({e}); delete it to start over") from e
    if state.get("key") != key:
        return None
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"])
            moments = {k.rsplit(".", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"optim.{name}.")}
            if moments:
                optimizer.state[p] = moments
    return state


def _share_resumed(params: dict[str, nn.Parameter], optimizer) -> None:
    """Give every process the main process's resumed factors and AdamW moments."""
    if not distributed.active():
        return
    moments = []
    for p in params.values():
        if not distributed.is_main():  # AdamW's state, to be overwritten with main's
            optimizer.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
        moments += [optimizer.state[p][k] for k in ("step", "exp_avg", "exp_avg_sq")]
    distributed.broadcast_tensors([*params.values(), *moments])


def heal(student: nn.Module, teacher: nn.Module, tokenizer, texts: list[str], config: HealConfig | None = None,
         checkpoint: str | Path | None = None, progress: bool = True) -> dict:
    """Distil ``teacher``'s next-token distributions into ``student``'s factors, in place.

    ``student``: the compressed causal LM; ``teacher``: its original (same tokenizer); ``texts``:
    calibration text (never the text perplexity is reported on). Returns the record: the
    settings, the loss of every step, the steps resumed from, seconds and tokens seen.
    """
    config = config or HealConfig()
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(family_of(m), CausalLM):
            raise MessiError(f"the {name} ({type(m).__name__}) is not a causal LM; healing distils next-token "
                             "predictions")
    params = factor_parameters(student, config.train)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise MessiError(f"the student has {student.config.vocab_size} tokens and the teacher "
                         f"{teacher.config.vocab_size}; heal against the model it was compressed from")
    chunks = _batches(tokenizer, texts, config)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    teacher.eval().requires_grad_(False)
    student.train()
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=0.0)
    folder = Path(checkpoint) if checkpoint is not None else None
    key = _run_key(student, config)
    # the main process reads the checkpoint; the others receive what it resumed (no shared disk needed)
    state = distributed.main_answers(lambda: _resume(folder, params, optimizer, key))
    if state is not None:
        _share_resumed(params, optimizer)
    losses = list(state["losses"]) if state else []
    seconds = float(state["seconds"]) if state else 0.0
    device = next(iter(params.values())).device
    start, resumed_from = time.perf_counter() - seconds, len(losses)
    bar = tqdm(total=config.steps, initial=len(losses), desc="healing", unit="step",
               disable=not (progress and distributed.is_main()))
    for step in range(len(losses), config.steps):
        ids = _step_ids(chunks, step, config).to(device)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = distillation_loss(student(input_ids=ids).logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(list(params.values()))
        optimizer.step()
        losses.append(distributed.mean_scalar(float(loss.detach())))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if folder is not None and distributed.is_main() and (done % config.checkpoint_every == 0 or done == config.steps):
            _save_checkpoint(folder, params, optimizer, {"key": key, "losses": losses,
                                                         "seconds": time.perf_counter() - start})
    bar.close()
    student.eval().requires_grad_(False)
    return {**asdict(config), "losses": losses, "resumed_from_step": resumed_from,
            "seconds": time.perf_counter() - start, "tokens_seen": config.steps * config.batch_size * config.window
            * distributed.world_size(), "trained": sorted(params)}
