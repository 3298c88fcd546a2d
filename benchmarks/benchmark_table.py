"""The one way the benchmark scripts print their results: a title line, then a Markdown table
(for docs/benchmarks.md) or the same rows in aligned columns (for a terminal)."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> None:
    print(title)
    cells = [[str(cell) for cell in row] for row in rows]
    if markdown:
        print("\n| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [list(header), *cells]) for i in range(len(header))]
    for row in [list(header), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
