"""compress(target="linear" | "all"): layers found and swapped, the budget met, never worse than
SVD per layer, activation-aware fits lowering the output error, exact save/load round trips on
BERT, DistilBERT and RoBERTa shapes, and the CLI on the real shipped model with real GLUE text."""

import json
import re
import subprocess
import sys

import pytest
import torch
import transformers
from torch import nn

import messi
from conftest import resign, svd_projection
from messi import CalibrationData, MessiError
from messi.datasets import find_data_dir
from messi.factorize import relative_error
from messi.fit import _best_fit
from messi.linear import FactorizedLinear, ProjectiveLinear, _FactoredLinear
from messi.persist import install_empty
from messi.targets import linear_targets

TINY = {
    "bert": (transformers.BertConfig, transformers.BertModel),
    "distilbert": (transformers.DistilBertConfig, transformers.DistilBertModel),
    "roberta": (transformers.RobertaConfig, transformers.RobertaForMaskedLM),  # tied masked-LM head
}


def tiny(name, seed=0):
    config_cls, model_cls = TINY[name]
    kw = dict(vocab_size=300, hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
    if name == "distilbert":
        kw = dict(vocab_size=300, dim=32, n_heads=2, hidden_dim=64, n_layers=2)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kw)).eval()
    with torch.no_grad():  # biases start at zero: a lost bias would go unseen
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tiny_classifier(num_labels=3):
    """A small BERT sequence classifier (head and pooler included)."""
    config = transformers.BertConfig(vocab_size=300, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                     num_hidden_layers=2, num_labels=num_labels)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).eval()


def batches(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 300, (4, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0  # some padding: its activations must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_linear_targets_are_the_encoder_blocks_linear_layers():
    model = tiny("roberta")
    names = list(linear_targets(model))
    assert len(names) == 2 * 6  # q, k, v, attention out, FFN in, FFN out per block
    assert all(".layer." in n for n in names) and not any(n.startswith("lm_head") for n in names)


@pytest.mark.parametrize("target", ["linear", "all"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_round_trip_is_exact(tmp_path, name, target):
    model = tiny(name)
    messi.compress(model, method="messi", ratio=0.4, k=2, n_init=1, max_iter=5, target=target, calibration=CalibrationData(inputs=batches()))
    info = model.messi_config
    assert info["compression"] >= 0.4
    assert info["model_params_after"] == sum(p.numel() for p in model.parameters())
    assert info["model_compression"] == pytest.approx(1 - info["model_params_after"] / info["model_params_before"])
    factored = [m for m in model.modules() if isinstance(m, _FactoredLinear)]
    assert len(factored) == sum(e["method"] != "dense" for e in info["linear_layers"])
    messi.save(model, tmp_path / name)
    again = messi.load(tmp_path / name)
    ids = torch.tensor([[3, 17, 42, 5, 1, 99]])
    assert torch.equal(outputs(model, ids), outputs(again, ids))
    assert [type(m) for m in again.modules()] == [type(m) for m in model.modules()]


@pytest.mark.parametrize("allocation", ["global", "uniform", "shared-rank"])
def test_targeted_compression_reaches_the_ratio(allocation):
    model = tiny("bert")
    before = {n: m.weight.numel() for n, m in linear_targets(model).items()}
    messi.compress(model, method="svd", ratio=0.5, target="linear", allocation=allocation)
    info = model.messi_config
    after = sum(e["params_after"] for e in info["linear_layers"])
    assert info["targeted_params_before"] == sum(before.values())
    assert info["targeted_params_after"] == after and 1 - after / sum(before.values()) >= 0.5
    if allocation == "uniform":  # every layer by itself
        assert all(1 - e["params_after"] / e["params_before"] >= 0.5 for e in info["linear_layers"])


def test_best_fit_is_never_worse_than_svd_at_the_same_size():
    torch.manual_seed(1)
    for shape in ((24, 16), (16, 24), (20, 20)):
        W = torch.randn(*shape)
        X = torch.randn(200, shape[1]) * torch.linspace(0.1, 3, shape[1])
        C = (X.T @ X / 200).double()
        settings = dict(seed=0, n_init=1, max_iter=10, tol=1e-4, loss="l2", verbose=False)
        svd = _best_fit(W, 5, "svd", 1, False, ("rows",), C, None, settings)
        best = _best_fit(W, 5, "messi", 4, True, ("rows", "columns"), C, None, settings)
        rows, cols = shape
        assert best[4] <= svd[4]
        from messi.allocate import messi_params
        assert messi_params(rows, cols, best[1], best[2], best[3]) <= messi_params(rows, cols, 1, 5)
        # the error it reports is the layer's output error on those inputs, recomputed here
        approx = best[0].reconstruct() if best[3] == "rows" else best[0].reconstruct().T
        assert best[4] == pytest.approx(float(((W - approx) @ X.T).square().sum() / (W @ X.T).square().sum()), rel=1e-4)


def test_activation_aware_fit_lowers_the_output_error_on_its_inputs():
    torch.manual_seed(2)
    W = torch.randn(30, 20)
    X = torch.randn(500, 20) * torch.logspace(-2, 0.5, 20)  # inputs far from isotropic
    C = (X.T @ X / 500).double()
    settings = dict(seed=0, n_init=1, max_iter=10, tol=1e-4, loss="l2", verbose=False)
    plain = _best_fit(W, 6, "svd", 1, False, ("rows",), None, None, settings)[0].reconstruct()
    aware = _best_fit(W, 6, "svd", 1, False, ("rows",), C, None, settings)[0].reconstruct()
    assert relative_error(W, aware, moments=C) < 0.8 * relative_error(W, plain, moments=C)


def test_sensitivities_are_measured_and_recorded():
    model = tiny("bert")
    messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches()))
    sens = model.messi_config["sensitivities"]
    assert set(sens) == {e["name"] for e in model.messi_config["linear_layers"]} | {"<input embedding>"}
    assert all(v > 0 for v in sens.values())


def test_a_classifier_keeps_its_head_and_reloads_exactly(tmp_path):
    """A sequence classifier: the budget is met on the encoder, the head and pooler stay as they
    were, and save/load gives the same class and the same logits."""
    model = tiny_classifier()
    head = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler"))}
    messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches()))
    info = model.messi_config
    assert info["compression"] >= 0.4
    assert not any(e["name"].startswith(("classifier", "bert.pooler")) for e in info["linear_layers"])
    assert all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in head.items())
    messi.save(model, tmp_path / "cls")
    again = messi.load(tmp_path / "cls")
    assert type(again).__name__ == "BertForSequenceClassification"
    ids = batches()[0]["input_ids"]
    assert torch.equal(outputs(model, ids), outputs(again, ids))


def test_classifier_sensitivities_are_read_on_the_logits(monkeypatch):
    """The reference the probes compare against is the logits (texts, labels) of a classifier."""
    import messi.calibration as calibration

    model = tiny_classifier()
    seen = []
    real = calibration.model_outputs
    compress_module = sys.modules["messi.layerwise"]
    monkeypatch.setattr(compress_module, "model_outputs", lambda m, b: seen.append(real(m, b)) or seen[-1])
    messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches()))
    assert seen and all(t.shape == (12, 3) for t in seen)


def test_install_empty_then_copying_the_weights_rebuilds_a_linear_compressed_model():
    original, other = tiny("bert"), tiny("bert", seed=5)
    messi.compress(original, method="messi", ratio=0.4, k=2, n_init=1, max_iter=5, target="all", calibration=CalibrationData(inputs=batches()))
    install_empty(other, original.messi_config)
    assert other.state_dict().keys() == original.state_dict().keys()
    other.load_state_dict(original.state_dict())
    ids = torch.tensor([[3, 17, 42, 5]])
    assert torch.equal(outputs(original, ids), outputs(other, ids))


def test_bad_requests_are_refused():
    with pytest.raises(MessiError, match="target must be one of"):
        messi.compress(tiny("bert"), target="convs")
    with pytest.raises(MessiError, match="allocation must be one of"):
        messi.compress(tiny("bert"), target="linear", allocation="random")
    with pytest.raises(MessiError, match="rank is chosen per layer"):
        messi.compress(tiny("bert"), target="linear", rank=4)
    model = tiny("bert")
    messi.compress(model, method="svd", ratio=0.3, target="linear")
    with pytest.raises(MessiError, match="already compressed"):
        messi.compress(model, method="svd", ratio=0.3, target="linear")
    with pytest.raises(MessiError, match="no input moments"):
        messi.compress(tiny("bert"), target="linear", calibration=CalibrationData(activations={"nothing": torch.eye(3)}))


def test_a_damaged_linear_entry_is_reported(tmp_path):
    model = tiny("bert")
    messi.compress(model, method="svd", ratio=0.3, target="linear")
    messi.save(model, tmp_path / "m")
    info = json.loads((tmp_path / "m" / "messi.json").read_text())
    info["linear_layers"][0]["rank"] += 1
    (tmp_path / "m" / "messi.json").write_text(json.dumps(info))
    resign(tmp_path / "m")
    with pytest.raises(MessiError, match="has shape"):
        messi.load(tmp_path / "m")
    info["linear_layers"][0]["rank"] -= 1
    info["linear_layers"][0]["name"] = "encoder.layer.9.output.dense"
    (tmp_path / "m" / "messi.json").write_text(json.dumps(info))
    resign(tmp_path / "m")
    with pytest.raises(MessiError, match="encoder.layer.9.output.dense"):
        messi.load(tmp_path / "m")


@pytest.mark.slow
def test_cli_whole_model_on_the_real_model_with_real_glue_text(tmp_path, minilm_dir):
    """The issue's flow: compress --target all, info --json, load exactly, eval-sts."""
    lines = [line.split("\t")[0] for line in
             (find_data_dir() / "SST-2" / "train.tsv").read_text().splitlines()[1:401]]
    texts = tmp_path / "sst2.txt"
    texts.write_text("\n".join(lines))
    out = tmp_path / "all"
    run = subprocess.run([sys.executable, "-m", "messi.cli", "compress", "--target", "all", "--ratio", "0.5",
                          "--method", "svd", "--calibration", str(texts), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads(subprocess.run([sys.executable, "-m", "messi.cli", "info", str(out), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["compression"] >= 0.5 and info["target"] == "all"
    assert 0.3 < info["model_compression"] < info["compression"]  # LayerNorms, positions, biases stay
    for key in ("name", "in_features", "out_features", "k", "rank", "orientation", "params_after", "rel_error"):
        assert all(key in e for e in info["linear_layers"])
    model = messi.load(out)
    tok = messi.load_tokenizer(out)
    batch = tok(["a sentence to check"], return_tensors="pt")
    again = messi.load(out)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, again(**batch).last_hidden_state)
    sts = subprocess.run([sys.executable, "-m", "messi.cli", "eval-sts", str(out), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert sts.returncode == 0, sts.stderr[-2000:]
    # half the model's weights gone, zero-shot STS-B dev (uncompressed: 86.72) stays usable
    assert json.loads(sts.stdout)["spearman"] > 80


# --- sensitivities, spectra and shared moments against independent computations ------------

def _probe_by_hand(model, name, weights=None, moments=None):
    """The sensitivity of one matrix, recomputed with torch.linalg on ``model`` (untouched): the
    smallest SVD (weighted rows, or whitened by the input moments) with at most 10% of its own
    error, or else the largest one that still saves parameters; the model's relative output
    change with it swapped in, per unit of that error."""
    from messi.calibration import model_outputs
    from messi.factorize import whitening

    param = model.get_submodule(name).weight
    W = param.detach().double()
    S, S_inv = (None, None) if moments is None else whitening(moments)
    X = W if moments is None else W @ S
    X = X if weights is None else X * weights.double().sqrt()[:, None]
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    tail = 1 - (s ** 2).cumsum(0) / (s ** 2).sum()
    rows, cols = W.shape
    j = min(int((tail <= 0.1).nonzero()[0]) + 1, min(rows, cols) - 1, (rows * cols - 1) // (rows + cols))
    if moments is None:
        approx = W @ Vh[:j].T @ Vh[:j]  # every row projected on the (weighted) top subspace
        w = torch.ones(W.shape[0], dtype=torch.float64) if weights is None else weights.double()
        own = float((w[:, None] * (W - approx) ** 2).sum() / (w[:, None] * W ** 2).sum())
    else:
        approx = (W @ S) @ Vh[:j].T @ Vh[:j] @ S_inv
        C = moments.double()
        own = float(torch.trace((W - approx) @ C @ (W - approx).T) / torch.trace(W @ C @ W.T))
    reference = model_outputs(model, batches())
    saved = param.data
    param.data = approx.float()
    try:
        changed = model_outputs(model, batches())
    finally:
        param.data = saved
    effect = float(((changed - reference).double() ** 2).sum() / (reference.double() ** 2).sum())
    return effect / own


def test_sensitivities_equal_probes_measured_by_hand():
    w = torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 2
    model = tiny("bert")
    messi.compress(model, method="svd", ratio=0.4, target="all", activation_aware=False, calibration=CalibrationData(inputs=batches(), row_weights=w))
    sens = model.messi_config["sensitivities"]
    fresh = tiny("bert")
    assert sens["<input embedding>"] == pytest.approx(_probe_by_hand(fresh, "embeddings.word_embeddings", weights=w), rel=1e-3)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense"):
        assert sens[name] == pytest.approx(_probe_by_hand(fresh, name), rel=1e-3), name


def test_activation_aware_sensitivities_probe_the_whitened_matrix():
    from messi.calibration import input_moments

    model = tiny("bert")
    messi.compress(model, method="svd", ratio=0.4, target="linear", calibration=CalibrationData(inputs=batches()))
    fresh = tiny("bert")
    name = "encoder.layer.0.intermediate.dense"
    C = input_moments(fresh, batches(), [name])[name]
    got = model.messi_config["sensitivities"][name]
    assert got == pytest.approx(_probe_by_hand(fresh, name, moments=C), rel=1e-3)


def test_the_spectrum_is_the_one_the_fit_sees():
    from messi.factorize import whitening
    from messi.fit import _spectrum

    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 8, generator=g)
    X = torch.randn(50, 8, generator=g) * torch.linspace(0.1, 2, 8)
    C, w = (X.T @ X / 50).double(), torch.rand(12, generator=g).double()
    assert torch.allclose(_spectrum(W), torch.linalg.svdvals(W.double()) ** 2)
    assert torch.allclose(_spectrum(W, weights=w), torch.linalg.svdvals(W.double() * w.sqrt()[:, None]) ** 2)
    assert torch.allclose(_spectrum(W, moments=C), torch.linalg.svdvals(W.double() @ whitening(C)[0]) ** 2)


def test_moments_are_collected_once_for_layers_that_share_an_input(monkeypatch):
    """q, k and v read the same input: the pass that collects one's moments serves the three,
    but never a layer already fitted or one whose input differs."""
    compress_module = sys.modules["messi.layerwise"]
    asked = []
    monkeypatch.setattr(compress_module, "input_moments", lambda model, inputs, names: asked.append(list(names)) or {})
    C, D = torch.eye(3, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)
    original = {"q": C, "k": C, "v": C, "o": D, "up": torch.eye(4, dtype=torch.float64), "x": None}
    compress_module._moments_now(None, [], "k", original, fitted={"q"})
    compress_module._moments_now(None, [], "o", original, fitted=set())
    assert asked == [["k", "v"], ["o"]]


def test_a_half_precision_model_is_probed_and_compressed_in_its_dtype():
    model = tiny("bert").to(torch.bfloat16)
    messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches()))
    assert all(v > 0 for v in model.messi_config["sensitivities"].values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _targeted_params(model, entries) -> int:
    """Parameters held now by the targeted Linear layers (dense or factored), counted on the modules."""
    return sum(sum(p.numel() for n, p in model.get_submodule(e["name"]).named_parameters() if n != "bias")
               for e in entries)


@pytest.mark.parametrize("allocation, inputs", [("global", True), ("uniform", True), ("global", False)])
def test_the_whole_model_record(allocation, inputs):
    model = tiny("bert")
    dense = {n: m.weight.numel() for n, m in linear_targets(model).items()}
    messi.compress(model, method="messi", k=2, ratio=0.4, target="linear", allocation=allocation, n_init=1, max_iter=5, calibration=CalibrationData(inputs=batches() if inputs else None))
    info = model.messi_config
    assert (info["target"], info["method"], info["k"], info["ratio"], info["allocation"]) == \
        ("linear", "messi", 2, 0.4, allocation)
    assert info["activation_aware"] is inputs and "embedding" not in info
    assert (info["sensitivities"] is None) is not (inputs and allocation == "global")
    after = _targeted_params(model, info["linear_layers"])
    assert info["targeted_params_before"] == sum(dense.values()) and info["targeted_params_after"] == after
    assert info["compression"] == pytest.approx(1 - after / sum(dense.values()))
    assert [e["name"] for e in info["linear_layers"]] == list(dense)


@pytest.mark.parametrize("method", ["svd", "messi"])
def test_uniform_and_shared_rank_spend_the_budget_their_way(method):
    """uniform: every layer the largest j that still removes >= ratio of it; shared-rank: one j for
    all (every layer here has min(rows, cols) = 32), the largest whose total fits the budget."""
    def size(rows, cols, j):  # rows in k subspaces of dimension j (k = 1: SVD)
        return rows * j + (1 if method == "svd" else 2) * j * cols

    model = tiny("bert")
    messi.compress(model, method=method, k=2, ratio=0.4, target="linear", allocation="uniform", n_init=1, max_iter=5)
    for e in model.messi_config["linear_layers"]:
        rows, cols, j = e["out_features"], e["in_features"], e["rank"]
        assert e["params_after"] == size(rows, cols, j) and e["method"] == ("svd" if method == "svd" else "messi")
        assert size(rows, cols, j) <= 0.6 * rows * cols < size(rows, cols, j + 1), e["name"]
    model = tiny("bert")
    messi.compress(model, method=method, k=2, ratio=0.4, target="linear", allocation="shared-rank", n_init=1, max_iter=5)
    entries = model.messi_config["linear_layers"]
    j = entries[0]["rank"]
    dense = sum(e["params_before"] for e in entries)
    assert all(e["rank"] == j for e in entries)
    assert sum(size(e["out_features"], e["in_features"], j) for e in entries) <= 0.6 * dense
    assert sum(size(e["out_features"], e["in_features"], j + 1) for e in entries) > 0.6 * dense


def test_global_allocation_is_not_uniform_and_svd_stays_svd():
    ranks = {}
    for allocation in ("global", "uniform"):
        model = tiny("bert")
        messi.compress(model, method="svd", ratio=0.4, target="linear", allocation=allocation, calibration=CalibrationData(inputs=batches()))
        entries = model.messi_config["linear_layers"]
        assert all(e["method"] in ("svd", "dense") and e["k"] in (0, 1) for e in entries)
        ranks[allocation] = [e["rank"] for e in entries]
    assert ranks["global"] != ranks["uniform"]


def tiny_wide_vocab():
    """A small BERT whose embedding (3000 x 32) holds most of the targeted parameters."""
    config = transformers.BertConfig(vocab_size=3000, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                     num_hidden_layers=2)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def test_target_all_fits_a_dominant_embedding_first_and_counts_it(monkeypatch):
    compress_module = sys.modules["messi.layerwise"]
    order = []
    for fn in ("_fit_embedding_target", "_fit_linear_target"):
        real = getattr(compress_module, fn)
        monkeypatch.setattr(compress_module, fn, lambda *a, _real=real, _fn=fn, **kw: order.append(_fn) or _real(*a, **kw))
    model = tiny_wide_vocab()
    w = torch.rand(3000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dense = sum(m.weight.numel() for m in linear_targets(model).values()) + 3000 * 32
    messi.compress(model, method="messi", k=2, ratio=0.4, target="all", n_init=1, max_iter=5, calibration=CalibrationData(inputs=batches(), row_weights=w))
    info, layer = model.messi_config, model.get_input_embeddings()
    assert order[0] == "_fit_embedding_target" and order.count("_fit_embedding_target") == 1
    emb = info["embedding"]
    assert emb["rank"] == layer.rank and emb["k"] == getattr(layer, "n_clusters", 1)
    assert (emb["method"], type(layer).__name__) in (("messi", "ProjectiveEmbedding"), ("svd", "FactorizedEmbedding"))
    assert (emb["method"] == "messi") is (emb["k"] > 1)
    assert emb["embedding_params_after"] == sum(p.numel() for p in layer.parameters()) < 3000 * 32
    assert "weighted_rel_error" in emb  # the row weights reached the embedding's fit
    after = _targeted_params(model, info["linear_layers"]) + emb["embedding_params_after"]
    assert (info["targeted_params_before"], info["targeted_params_after"]) == (dense, after)
    assert info["compression"] == pytest.approx(1 - after / dense) and info["compression"] >= 0.4


def test_target_all_fits_the_embedding_under_its_output_metric():
    """The metric reaches the embedding's fit in the whole-model path: the recorded output-side
    error is the error under the metric of the table installed, and a metric that weighs some
    dimensions 100x changes the table against the plain weighted fit."""
    w = torch.rand(3000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G = torch.diag(torch.tensor([100.0] * 8 + [1.0] * 24, dtype=torch.float64))
    tables = {}
    for name, metric in (("plain", None), ("metric", G)):
        model = tiny_wide_vocab()
        A = model.get_input_embeddings().weight.detach().clone()
        messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches(), row_weights=w, embedding_metric=metric))
        with torch.no_grad():
            tables[name] = model.get_input_embeddings().weight.clone()
        emb = model.messi_config["embedding"]
    assert emb["output_rel_error"] == pytest.approx(relative_error(A, tables["metric"], w, G))
    assert relative_error(A, tables["metric"], w, G) < relative_error(A, tables["plain"], w, G)


def test_target_all_counts_an_embedding_it_keeps_dense():
    model = tiny("bert")  # 300 x 32 embedding: the allocator keeps it dense at -20%
    messi.compress(model, method="svd", ratio=0.2, target="all", calibration=CalibrationData(inputs=batches()))
    info = model.messi_config
    if "embedding" in info:
        pytest.fail("the embedding was compressed; pick a setting where it stays dense")
    after = _targeted_params(model, info["linear_layers"]) + 300 * 32
    assert info["targeted_params_after"] == after
    assert info["compression"] == pytest.approx(1 - after / info["targeted_params_before"])


def test_each_layer_is_fitted_to_its_inputs_in_the_model_as_compressed_so_far(monkeypatch):
    from messi.calibration import input_moments

    compress_module = sys.modules["messi.layerwise"]
    real, checked = compress_module._fit_linear_target, []

    def spy(model, name, lin, rank, method, k, search, moments, settings, *storage):
        if rank is not None:
            want = input_moments(model, batches(), [name])[name]
            assert torch.allclose(moments, want, rtol=1e-6, atol=1e-9), name
            checked.append(name)
        return real(model, name, lin, rank, method, k, search, moments, settings, *storage)

    monkeypatch.setattr(compress_module, "_fit_linear_target", spy)
    messi.compress(tiny("bert"), method="svd", ratio=0.5, target="linear", calibration=CalibrationData(inputs=batches()))
    assert len(checked) >= 10


def test_whole_model_progress_bars(capsys):
    kw = dict(method="messi", k=2, ratio=0.4, target="linear", n_init=1, max_iter=3)
    messi.compress(tiny("bert"), calibration=CalibrationData(inputs=batches()), verbose=True, **kw)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert re.search(r"(?m)^measuring sensitivities: 100%", err) and re.search(r"(?m)^fitting layers: 100%", err)
    assert "projective clustering" not in err  # one bar for all the layers, not one per fit
    messi.compress(tiny("bert"), verbose=False, **kw)
    assert capsys.readouterr().err == ""


# --- one matrix: the search of _best_fit and what _fit_linear_target installs ----------------

SETTINGS = dict(seed=0, n_init=2, max_iter=20, tol=1e-4, loss="l2", verbose=False)


def _lines(n_lines, rows=40, cols=8, seed=0):
    """``rows`` rows on ``n_lines`` random lines through the origin of R^cols."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_lines, cols, generator=g)
    return torch.cat([torch.randn(rows // n_lines, 1, generator=g) * directions[i] for i in range(n_lines)])


def test_best_fit_search_finds_the_k_and_rank_that_fit_exactly_at_the_svd_size():
    from messi.allocate import messi_params

    M = _lines(3)  # rank 3; three 1-dim subspaces fit it exactly
    best = _best_fit(M, 2, "messi", 3, True, ("rows",), None, None, SETTINGS)
    assert (best[1], best[2], best[3]) == (3, 1, "rows") and best[4] < 1e-10
    assert messi_params(40, 8, 3, 1) <= messi_params(40, 8, 1, 2)
    # asked for at most k = 2, it never tries 3 subspaces, and does better than SVD with two
    two = _best_fit(M, 2, "messi", 2, True, ("rows",), None, None, SETTINGS)
    svd = _best_fit(M, 2, "svd", 1, False, ("rows",), None, None, SETTINGS)
    assert two[1] <= 2 and two[4] <= svd[4]


def test_best_fit_search_tries_two_subspaces():
    g = torch.Generator().manual_seed(1)
    planes = [torch.linalg.qr(torch.randn(30, 2, generator=g))[0].T for _ in range(2)]
    M = torch.cat([torch.randn(30, 2, generator=g) @ P for P in planes])  # 60 rows on two planes of R^30
    # at the size of a rank-3 SVD (270 numbers): k = 2 has rank 2 (240), k = 3 only rank 1 (150)
    best = _best_fit(M, 3, "messi", 3, True, ("rows",), None, None, SETTINGS)
    svd = _best_fit(M, 3, "svd", 1, False, ("rows",), None, None, SETTINGS)
    assert (best[1], best[2]) == (2, 2) and best[4] < svd[4]


def test_best_fit_paths_equal_the_fits_they_name():
    from messi.factorize import factorize, messi_factorize, whitening

    g = torch.Generator().manual_seed(2)
    M = torch.randn(30, 12, generator=g)
    X = torch.randn(100, 12, generator=g) * torch.linspace(0.1, 3, 12)
    C, w = (X.T @ X / 100).double(), torch.rand(30, generator=g, dtype=torch.float64)
    # svd, whitened by the input moments: the truncated SVD of W S mapped back by S^-1
    f, kk, j, orientation, err = _best_fit(M, 4, "svd", 3, True, ("rows",), C, None, SETTINGS)
    S, S_inv = whitening(C)
    by_hand = svd_projection(M.double() @ S, 4) @ S_inv
    assert (kk, j, orientation) == (1, 4, "rows")
    assert torch.allclose(f.reconstruct().double(), by_hand, atol=1e-4)
    assert err == pytest.approx(relative_error(M, by_hand, moments=C), rel=1e-4)
    # messi without search: k subspaces of the rows at the given rank, weighted rows, these settings
    f, kk, j, orientation, err = _best_fit(M, 4, "messi", 3, False, ("rows",), None, w, SETTINGS)
    want = messi_factorize(M, 3, 4, sample_weight=w, **SETTINGS).reconstruct()
    assert (kk, j, orientation) == (3, 4, "rows") and torch.equal(f.reconstruct(), want)
    assert err == pytest.approx(relative_error(M, want, w), rel=1e-9)
    # columns: the input features' vectors, each weighted by its input energy
    cols = _lines(3, rows=24, cols=10, seed=3).T  # (10, 24): the columns near three lines
    cols = cols + 0.01 * torch.randn(cols.shape, generator=g)
    Cc = torch.diag(torch.linspace(0.5, 2.0, 24)).double()
    settings = {**SETTINGS, "loss": "l1"}  # not the default loss: the settings must be passed on
    f, kk, j, orientation, err = _best_fit(cols, 2, "messi", 3, True, ("columns",), Cc, None, settings)
    assert (orientation, kk, j) == ("columns", 3, 1)  # three lines: beyond a rank-2 SVD of the same size
    want = factorize(cols.T, "messi", 3, 1, Cc.diagonal().float(), **settings).reconstruct().T
    assert not torch.equal(want, factorize(cols.T, "messi", 3, 1, Cc.diagonal().float()).reconstruct().T)
    assert torch.equal(f.reconstruct().T, want)
    assert err == pytest.approx(relative_error(cols, want, moments=Cc), abs=1e-9)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("method, k", [("svd", 1), ("messi", 2)])
def test_fit_linear_target_installs_what_it_records(bias, method, k):
    from messi.fit import _fit_linear_target
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24, bias=bias)).eval()
    W = model[0].weight.detach().clone()
    b = model[0].bias.detach().clone() if bias else None
    entry = _fit_linear_target(model, "0", model[0], 4, method, k, False, None, SETTINGS)
    new = model[0]
    assert type(new) is (FactorizedLinear if method == "svd" else ProjectiveLinear)
    with torch.no_grad():
        rebuilt = (new(torch.eye(16)) - (0 if b is None else b)).T  # (24, 16), what the layer computes
    assert (new.bias is None) if b is None else torch.equal(new.bias, b)
    assert {k_: entry[k_] for k_ in ("name", "in_features", "out_features", "bias", "params_before", "k", "rank")} == \
        {"name": "0", "in_features": 16, "out_features": 24, "bias": bias, "params_before": 384, "k": k, "rank": 4}
    assert entry["method"] == method and entry["orientation"] == "rows"
    assert entry["params_after"] == 24 * 4 + k * 4 * 16
    assert entry["rel_error"] == pytest.approx(relative_error(W, rebuilt), rel=1e-4)
    if method == "svd":
        assert torch.allclose(rebuilt.double(), svd_projection(W, 4), atol=1e-5)


def test_a_layer_kept_dense_is_recorded_as_dense_and_left_alone():
    from messi.fit import _fit_linear_target

    model = nn.Sequential(nn.Linear(16, 24))
    lin = model[0]
    entry = _fit_linear_target(model, "0", lin, None, "messi", 3, True, None, SETTINGS)
    assert model[0] is lin
    assert entry == {"name": "0", "in_features": 16, "out_features": 24, "bias": True, "params_before": 384,
                     "method": "dense", "k": 0, "rank": 0, "orientation": "rows", "params_after": 384,
                     "rel_error": 0.0, "bytes_before": 4 * (384 + 24), "bytes_after": 4 * (384 + 24)}


def test_each_layer_is_searched_in_the_orientations_that_can_pay(monkeypatch):
    """k bases of the longer side cost k times more: rows for tall W (out > in), columns for wide
    W (in > out), both for square; the method and the layer's moments are passed on."""
    compress_module = sys.modules["messi.fit"]
    real, seen = compress_module._best_fit, {}

    def spy(M, rank, method, k, search, orientations, moments, weights, settings):
        seen[tuple(M.shape)] = (orientations, method, moments is not None)
        return real(M, rank, method, k, search, orientations, moments, weights, settings)

    monkeypatch.setattr(compress_module, "_best_fit", spy)
    messi.compress(tiny("bert"), method="messi", k=2, ratio=0.4, target="linear", n_init=1, max_iter=3, allocation="uniform", calibration=CalibrationData(inputs=batches()))  # uniform: every layer is fitted
    assert seen == {(32, 32): (("rows", "columns"), "messi", True), (64, 32): (("rows",), "messi", True),
                    (32, 64): (("columns",), "messi", True)}


def test_the_embedding_keeps_its_padding_row_exactly_under_target_all():
    model = tiny_wide_vocab()
    pad = model.config.pad_token_id
    row = model.get_input_embeddings().weight[pad].detach().clone()
    messi.compress(model, method="messi", k=2, ratio=0.4, target="all", n_init=1, max_iter=3, calibration=CalibrationData(inputs=batches()))
    assert "embedding" in model.messi_config
    with torch.no_grad():
        assert torch.equal(model.get_input_embeddings()(torch.tensor([pad]))[0], row)


def test_target_all_with_svd_fits_the_embedding_by_weighted_svd():
    model = tiny_wide_vocab()
    A = model.get_input_embeddings().weight.detach().double().clone()
    w = torch.rand(3000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    messi.compress(model, method="svd", ratio=0.4, target="all", calibration=CalibrationData(inputs=batches(), row_weights=w))
    emb, layer = model.messi_config["embedding"], model.get_input_embeddings()
    assert (emb["method"], emb["k"], type(layer).__name__) == ("svd", 1, "FactorizedEmbedding")
    by_hand = svd_projection(A, emb["rank"], w)  # every row projected on the top subspace of the weighted rows
    with torch.no_grad():
        rebuilt = layer.weight.double()
    rows = torch.arange(3000) != model.config.pad_token_id  # the padding row is kept exactly instead
    assert torch.allclose(rebuilt[rows], by_hand[rows], atol=1e-4)


def test_install_empty_gives_the_layers_the_models_dtype():
    original, other = tiny("bert").to(torch.bfloat16), tiny("bert", seed=5).to(torch.bfloat16)
    messi.compress(original, method="svd", ratio=0.4, target="linear", calibration=CalibrationData(inputs=batches()))
    install_empty(other, original.messi_config)
    assert {p.dtype for p in other.parameters()} == {torch.bfloat16}
    other.load_state_dict(original.state_dict())
    ids = torch.tensor([[3, 17, 42, 5]])
    assert torch.equal(outputs(original, ids), outputs(other, ids))


def test_given_moments_are_the_ones_the_fits_use_when_no_inputs_are_given():
    from messi.factorize import whitening

    model = tiny("bert")
    names = list(linear_targets(model))
    scales = torch.logspace(-2, 0.5, 32, dtype=torch.float64)
    moments = {n: torch.diag(scales if model.get_submodule(n).in_features == 32 else torch.ones(64, dtype=torch.float64))
               for n in names}
    name = "encoder.layer.0.attention.self.query"
    W = model.get_submodule(name).weight.detach().double().clone()
    messi.compress(model, method="svd", ratio=0.4, target="linear", allocation="uniform", calibration=CalibrationData(activations=moments))
    entry = next(e for e in model.messi_config["linear_layers"] if e["name"] == name)
    S, S_inv = whitening(moments[name])
    with torch.no_grad():
        rebuilt = model.get_submodule(name)(torch.eye(32)).T.double() - model.get_submodule(name).bias.double()[:, None]
    assert torch.allclose(rebuilt, svd_projection(W @ S, entry["rank"]) @ S_inv, atol=1e-4)
