"""The whole-model fit (targets "linear" and "all"): measure every matrix, spend one budget
across them (``allocate.py``), then fit them in model order, each to the inputs the already
compressed layers before it give it.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocate import Matrix, allocate_ranks, shared_relative_rank, uniform_ranks
from .calibration import input_moments, model_outputs
from .errors import MessiError
from .factorize import factorize, relative_error
from .fit import _fit_embedding_target, _fit_linear_target, _spectrum
from .targets import EMBEDDING, linear_targets


def compress_layers(model, target, method, ratio, k, allocation, activations, inputs, emb, weights,
                     settings, activation_aware=True, metric=None, storage=(None, None)) -> dict:
    """Target "linear" / "all": allocate the budget, fit every matrix, install the layers;
    returns messi.json's fields."""
    linears = linear_targets(model)
    if not activation_aware:
        activations = None
    elif inputs is not None and activations is None:
        activations = input_moments(model, inputs, list(linears))
    missing = [name for name in linears if activations is not None and name not in activations]
    if missing:
        raise MessiError(f"activations has no input moments for {missing[0]} (and {len(missing) - 1} more); "
                         "collect them with calibration.input_moments on this model")
    moments = {name: None if activations is None else activations[name] for name in linears}
    matrices = [Matrix(name, lin.out_features, lin.in_features, _spectrum(lin.weight, moments[name]))
                for name, lin in linears.items()]
    if emb is not None:
        matrices.append(Matrix(EMBEDDING, *emb.weight.shape, _spectrum(emb.weight, metric, weights)))
    if inputs is not None and allocation == "global":
        modules, reference = {**linears, EMBEDDING: emb}, model_outputs(model, inputs)
        for m in tqdm(matrices, desc="measuring sensitivities", disable=not settings["verbose"]):
            m.sensitivity = _sensitivity(model, inputs, reference, m, modules[m.name], moments.get(m.name, metric),
                                         weights)
    fixed_k = 1 if method == "svd" else k
    ranks = (allocate_ranks(matrices, ratio) if allocation == "global" else
             uniform_ranks(matrices, ratio, fixed_k) if allocation == "uniform" else
             shared_relative_rank(matrices, ratio, fixed_k))
    search = allocation == "global"
    verbose, settings = settings["verbose"], {**settings, "verbose": False}  # one bar for all layers
    entries, info, current, fitted = [], {}, {}, set()
    # the embedding first, then the layers in model order, each fitted to the inputs that the
    # layers before it, already compressed, give it (its moments measured again just before)
    for m in tqdm(sorted(matrices, key=lambda m: m.name != EMBEDDING), desc="fitting layers", disable=not verbose):
        if m.name == EMBEDDING:
            if ranks[m.name] is not None:
                info["embedding"] = _fit_embedding_target(model, emb, ranks[m.name], method, k, search, weights,
                                                          settings, metric, storage)
            continue
        if inputs is not None and moments[m.name] is not None and ranks[m.name] is not None and m.name not in current:
            current.update(_moments_now(model, inputs, m.name, moments, fitted))
        fitted.add(m.name)
        entries.append(_fit_linear_target(model, m.name, linears[m.name], ranks[m.name], method, k, search,
                                          current.get(m.name, moments[m.name]), settings, storage))
    targeted_before = sum(m.dense_params for m in matrices)
    targeted_after = sum(e["params_after"] for e in entries) + (
        info["embedding"]["embedding_params_after"] if "embedding" in info else
        emb.weight.numel() if emb is not None else 0)
    info.update({"target": target, "method": method, "k": k, "ratio": ratio, "allocation": allocation,
                 "activation_aware": activations is not None,
                 "sensitivities": {m.name: m.sensitivity for m in matrices} if inputs is not None and allocation == "global" else None,
                 "compression": 1 - targeted_after / targeted_before,
                 "targeted_params_before": targeted_before, "targeted_params_after": targeted_after,
                 "linear_layers": entries})
    return info


def _moments_now(model, inputs, name, original, fitted) -> dict:
    """Input moments, in the model as compressed so far, of ``name`` and of every layer not yet
    fitted that reads the same input (equal moments in the original model, e.g. q, k and v):
    compressing one of them does not change the others' input, so one pass serves them all."""
    group = [other for other, C in original.items()
             if other not in fitted and C is not None and C.shape == original[name].shape and torch.equal(C, original[name])]
    return input_moments(model, inputs, group)


#: A matrix's sensitivity is probed at the smallest SVD rank that keeps its error under this.
PROBE_ERROR = 0.1


def _sensitivity(model, inputs, reference, matrix: Matrix, module: nn.Module, moments, weights) -> float:
    """The model's relative output error (``calibration.model_outputs`` on ``inputs``: a task
    head's logits, else the last hidden states; against their ``reference``) per unit of the
    matrix's own relative error, with the matrix replaced by an SVD probe for the moment."""
    j = next((j for j in range(1, matrix.max_rank + 1) if matrix.svd_error(j) <= PROBE_ERROR), matrix.max_rank)
    W = module.weight
    row_weights = weights if isinstance(module, nn.Embedding) else None
    approx = factorize(W.detach().float(), "svd", 1, j, row_weights, moments).reconstruct()
    own = relative_error(W, approx, row_weights, moments)
    saved = W.data
    try:
        W.data = approx.to(W.dtype)
        changed = model_outputs(model, inputs)
    finally:
        W.data = saved
    effect = float((changed - reference).double().square().sum() / reference.double().square().sum())
    return effect / max(own, 1e-12)
