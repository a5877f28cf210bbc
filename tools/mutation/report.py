"""Mutation score per file and the surviving mutants, from mutmut's results in mutants/.

Run from the repository root after `mutmut run` (tools/mutation/run.sh does both):

    python tools/mutation/report.py                  # scores + survivor names
    python tools/mutation/report.py --diffs FILE     # also write every survivor's diff to FILE

Score = (killed + timeout) / (total - skipped), as mutmut's own badge counts it: a mutant that
hangs the tests is detected. "no tests" means no selected test ever called the function; those
are listed by name only in the --diffs file, every other not-killed mutant with its diff.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.file_utils import walk_mutatable_files

NOT_KILLED = ("survived", "suspicious", "segfault", "timeout", "no tests", "not checked")
NAME_ONLY = ("no tests", "not checked")


def load() -> dict[str, dict[str, str]]:
    """{source path: {mutant name: status}} for every mutated file that has results."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(walk_mutatable_files(), key=str):
        m = SourceFileMutationData(path=path)
        m.load()
        if m.exit_code_by_key:
            out[str(path)] = {k: status_by_exit_code[v] for k, v in m.exit_code_by_key.items()}
    return out


def score_table(results: dict[str, dict[str, str]]) -> list[str]:
    lines = [f"{'file':34} {'killed':>6} {'timeout':>7} {'total':>6} {'score':>7}  survived no-tests other"]
    total = Counter()
    for path, by_key in list(results.items()) + [("TOTAL", None)]:
        c = Counter(by_key.values()) if by_key is not None else total
        if by_key is not None:
            total.update(c)
        n = sum(c.values()) - c["skipped"]
        other = n - c["killed"] - c["survived"] - c["timeout"] - c["no tests"]
        score = 100.0 * (c["killed"] + c["timeout"]) / n if n else 0.0
        lines.append(f"{path:34} {c['killed']:6} {c['timeout']:7} {n:6} {score:6.1f}%  {c['survived']:8} "
                     f"{c['no tests']:8} {other:5}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffs", metavar="FILE", help="write the not-killed mutants (diffs of the survivors) to FILE, grouped by file")
    ap.add_argument("--names", action="store_true", help="print the not-killed mutant names")
    args = ap.parse_args(argv)
    if not Path("mutants").is_dir():
        print("no mutants/ folder here: run tools/mutation/run.sh first", file=sys.stderr)
        return 2
    results = load()
    table = score_table(results)
    print("\n".join(table))
    if args.names:
        for path, by_key in results.items():
            for key, status in by_key.items():
                if status != "killed" and status != "skipped":
                    print(f"  {status:10} {key}")

    if args.diffs:
        with open(args.diffs, "w") as f:
            f.write("Mutants not killed by the selected tests (mutmut 3.8.1), grouped by file: first the\n"
                    "survivors with their diffs (`mutmut show NAME`), then the names of mutants of functions\n"
                    "that no selected test calls. Regenerate: bash tools/mutation/run.sh --report FILE\n\n")
            f.write("\n".join(table) + "\n\n")
            for path, by_key in results.items():
                left = [(k, s) for k, s in by_key.items() if s in NOT_KILLED]
                c = Counter(by_key.values())
                f.write("=" * 100 + "\n")
                f.write(f"{path}: {c['killed']} killed / {len(by_key) - c['skipped']} mutants; "
                        f"{len(left)} not killed ({', '.join(f'{s} {c[s]}' for s in NOT_KILLED if c[s])})\n")
                f.write("=" * 100 + "\n\n")
                for status in NOT_KILLED:
                    for key, s in left:
                        if s != status:
                            continue
                        f.write(f"# {key}: {status}\n")
                        if status in NAME_ONLY:
                            continue
                        try:
                            f.write(get_diff_for_mutant(key, path=path) + "\n\n")
                        except Exception as e:  # noqa: BLE001 - a report line, not a crash
                            f.write(f"(no diff: {e!r})\n\n")
                f.write("\n")
        print(f"wrote {args.diffs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
