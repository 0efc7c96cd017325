"""Where the capacity table goes: between two markers in docs/performance.md."""

from __future__ import annotations

from pathlib import Path

from bench.benchlib import Row, machine, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = "<!-- capacity-table:begin -->", "<!-- capacity-table:end -->"


def document(rows: list[Row], *, began: str, load_before: str, load_after: str, busy: str,
             seconds: float) -> str:
    return f"""{BEGIN}
Measured {began} on {machine()}; load average (1/5/15 min) {load_before} at the start and
{load_after} at the end{f" (busiest processes then: {busy})" if busy else ""}; the whole run
took {seconds / 60:.1f} min. Rerun: `make bench`, or
`.venv/bin/python bench/capacity_bench.py --write` for this table alone.

{render(rows)}
{END}"""


def write_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    DOC.write_text(doc, encoding="utf-8")
