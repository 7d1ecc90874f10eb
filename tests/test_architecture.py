"""The package's shape is checked, not hoped for: import-linter's contracts (pyproject.toml:
one-way layers, fitting apart from persistence, math apart from transformers), ruff's lint, no
module over 400 lines, and every `from_pretrained` call in src/ refusing remote code."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "messi"
BIN = Path(sys.executable).parent


def test_import_contracts_are_kept():
    r = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_ruff_passes():
    r = subprocess.run([str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "scripts"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_module_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_from_pretrained_in_src_refuses_remote_code():
    calls = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"\.from_pretrained\(", text):
            # the call's arguments: up to the matching parenthesis
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((path.name, text[m.end():i]))
    assert calls
    lacking = [(name, args) for name, args in calls
               if "trust_remote_code=False" not in args and "def " not in args]
    assert not lacking, lacking
