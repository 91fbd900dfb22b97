"""Plain-text tables for the commands' readable output."""
from __future__ import annotations


def table(rows: list[dict], cols: list[tuple[str, str, str]], left: tuple[int, ...] = (0,)) -> str:
    """cols: (header, key, format spec); columns in `left` (negative: from the end) are aligned
    left, the others right; a missing value (None) is shown as "-"."""
    left = {i % len(cols) for i in left}
    cells = [[h for h, _, _ in cols]] + [[format(r[k], f) if r[k] is not None else "-" for _, k, f in cols]
                                         for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    out = ["  ".join(c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()
           for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
