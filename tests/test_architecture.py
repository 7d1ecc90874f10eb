"""The package's shape is checked, not hoped for: import-linter's contracts (pyproject.toml:
one-way layers, fitting apart from persistence, math apart from transformers), ruff's lint, no
module over 400 lines, and every `from_pretrained` call in src/ refusing remote code."""

import ast
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
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                calls.append((path.name, node.lineno, {k.arg: getattr(k.value, "value", None) for k in node.keywords}))
    assert len(calls) >= 5
    lacking = [(name, line) for name, line, kw in calls if kw.get("trust_remote_code", "missing") is not False]
    assert not lacking, lacking
