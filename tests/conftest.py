"""Shared fixtures: the real shipped model and its embedding matrix, loaded once."""

import os

import pytest
import torch
from hypothesis import settings
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A quick pass for every run; HYPOTHESIS_PROFILE=thorough searches the property tests far longer.
settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# MESSI_TEST_THREADS=1 for runs that fork test processes (mutation testing: OpenMP pools do not
# survive a fork)
torch.set_num_threads(int(os.environ.get("MESSI_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))
# no tqdm monitor thread: a process forked while it holds tqdm's lock (mutation runs fork the test
# process per mutant) would wait on that lock for ever
tqdm.monitor_interval = 0


@pytest.fixture(scope="session")
def minilm_dir():
    from messi.models import resolve_model

    return resolve_model("minilm")


@pytest.fixture(scope="session")
def minilm_embedding(minilm_dir):
    """The real 30522 x 384 word-embedding matrix of all-MiniLM-L6-v2."""
    from safetensors.torch import load_file

    return load_file(str(minilm_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]


def planted(n_per=120, k=3, j=2, d=8, noise=1e-3, seed=0, dtype=torch.float64):
    """Rows drawn from k random j-dim subspaces of R^d plus small noise; returns (X, labels)."""
    g = torch.Generator().manual_seed(seed)
    X, labels = [], []
    for i in range(k):
        basis = torch.linalg.qr(torch.randn(d, j, generator=g, dtype=dtype))[0].T
        X.append(torch.randn(n_per, j, generator=g, dtype=dtype) @ basis)
        labels += [i] * n_per
    X = torch.cat(X)
    return X + noise * torch.randn(X.shape, generator=g, dtype=dtype), torch.tensor(labels)


def svd_projection(A, rank, weights=None):
    """The rows of ``A`` (n, d) projected on the top-``rank`` right singular subspace of
    diag(sqrt(weights)) A, in float64: the (weighted) truncated SVD, worked out with torch.linalg."""
    A = A.double()
    X = A if weights is None else A * weights.double().sqrt()[:, None]
    V = torch.linalg.svd(X, full_matrices=False).Vh[:rank]
    return A @ V.T @ V


def resign(folder):
    """Recompute a messi folder's manifest after a test edited it, as a crafted folder would: the
    checks beneath the manifest (field types, shapes, config against messi.json) are then what
    catches the edit. Returns the folder."""
    import json
    from pathlib import Path

    from messi.folder import CONFIG_NAME, FILES_KEY, SELF_KEY, with_manifest

    folder = Path(folder)
    info = json.loads((folder / CONFIG_NAME).read_text())
    info = {k: v for k, v in info.items() if k not in (FILES_KEY, SELF_KEY)}
    (folder / CONFIG_NAME).write_text(json.dumps(with_manifest(info, folder)))
    return folder
