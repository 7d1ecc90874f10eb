"""Mutation score per module from ``mutmut results --all true``, equivalent mutants set aside.

    python scripts/mutation_score.py EQUIVALENT.txt RESULTS.txt [RESULTS.txt ...]
    python scripts/mutation_score.py --merge BEFORE.txt AFTER.txt   (after a --survivors rerun)

EQUIVALENT.txt (scripts/mutation_equivalent.txt) lists explained survivors, one per line:
``NAME equivalent: reason`` (cannot change behaviour) or ``NAME cosmetic: reason`` (changes only
how a figure looks). They count neither as killed nor as survived and are shown in their own
columns. The score is
killed (timeouts included) / (killed + survived + no tests), per module and in all; mutants that
were not checked are shown and never counted as killed.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {"killed", "timeout", "segfault"}
FAILED = {"survived", "no tests"}


def read_results(path: Path) -> dict[str, str]:
    """mutant name -> status ("killed", "survived", "no tests", "not checked", ...)."""
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*(\S+): (.+?)\s*$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def read_equivalent(path: Path) -> dict[str, str]:
    """mutant name -> category ("equivalent" or "cosmetic"), from lines ``NAME CATEGORY: why``."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            category = reason.split(":", 1)[0].strip()
            if category not in ("equivalent", "cosmetic"):
                raise SystemExit(f"{path}: {name}: say 'equivalent: why' or 'cosmetic: why'")
            out[name] = category
    return out


def module_of(name: str) -> str:
    return name.split(".x")[0].split(".xǁ")[0]


def table(results: dict[str, str], explained: dict[str, str]) -> str:
    """Markdown table: per module, mutants, killed, survived, explained, score."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in results.items():
        key = explained[name] if name in explained and status in FAILED else status
        counts[module_of(name)][key] += 1
        counts["all"][key] += 1
    rows = ["| module | mutants | killed | survived | no tests | equivalent | cosmetic | not checked | score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for module in sorted(counts, key=lambda m: (m == "all", m)):
        c = counts[module]
        killed = sum(c[s] for s in KILLED)
        failed = sum(c[s] for s in FAILED)
        score = f"{100 * killed / (killed + failed):.1f}%" if killed + failed else "—"
        rows.append(f"| {module} | {sum(c.values())} | {killed} | {c['survived']} | {c['no tests']} | "
                    f"{c['equivalent']} | {c['cosmetic']} | {c['not checked']} | {score} |")
    return "\n".join(rows)


def merge(before: Path, after: Path) -> None:
    """Rewrite ``after`` with each "not checked" verdict taken from ``before`` (a rerun of the
    survivors leaves every other mutant unchecked; its earlier verdict still holds, as the rerun
    only added tests)."""
    old, new = read_results(before), read_results(after)
    merged = {n: old.get(n, s) if s == "not checked" else s for n, s in new.items()}
    after.write_text("".join(f"    {n}: {s}\n" for n, s in merged.items()))


def main(argv: list[str]) -> None:
    if argv[1] == "--merge":
        merge(Path(argv[2]), Path(argv[3]))
        return
    equivalent = read_equivalent(Path(argv[1]))
    results = {}
    for path in argv[2:]:
        results.update(read_results(Path(path)))
    print(table(results, equivalent))
    survivors = [n for n, s in results.items() if s in FAILED and n not in equivalent]
    killed_but_listed = sorted(n for n in equivalent if results.get(n) in KILLED)
    if killed_but_listed:
        print("\nlisted as explained but killed (remove them from the list): " + ", ".join(killed_but_listed))
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (not listed as equivalent):")
        print("\n".join(f"- {n} ({results[n]})" for n in sorted(survivors)))
    unused = sorted(set(equivalent) - set(results))
    if unused:
        print(f"\n{len(unused)} listed as equivalent but not in these results (renamed by a code change?): "
              + ", ".join(unused))


if __name__ == "__main__":
    main(sys.argv)
