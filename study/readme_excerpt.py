"""The README's sample of the report, cut by rule from the quick start's own report.md (`run.py all --out runs/tiny`).

    python -m study.readme_excerpt runs/tiny            # print the excerpt
    python -m study.readme_excerpt runs/tiny --write    # put it into README.md between its two markers

The cut: the induction section's heading and its SCORES rows (definitions shortened to DEFINITION_CHARS), the
table of where the induction heads rank under each importance denominator (its first shot count), and
the synthetic copy task's table. tests/test_quickstart.py runs the quick start and fails when README.md's excerpt
differs from this cut of what it wrote, so the README shows exactly what a fresh clone gets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- excerpt of runs/tiny/report.md, cut by: python -m study.readme_excerpt runs/tiny --write -->"
END = "<!-- end of the excerpt -->"
DEFINITION_CHARS = 70
SCORES = ("| prefix_matching_paper", "| prefix_matching_corrected")  # the score rows shown


def _table_after(lines: list[str], start: int) -> tuple[int, int]:
    """(first, end) line indices of the first markdown table at or after `start`."""
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return first, end


def _shorten(row: str) -> str:
    cells = row.split(" | ")
    if len(cells) == 3 and len(cells[1]) > DEFINITION_CHARS:
        cells[1] = cells[1][:DEFINITION_CHARS].rstrip() + " ..."
    return " | ".join(cells)


def cut(report: str) -> str:
    """The excerpt (markdown) of a report.md; KeyError naming the part a report lacks."""
    lines = report.splitlines()

    def find(prefix: str) -> int:
        at = next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)
        if at is None:
            raise KeyError(f"report.md has no line starting {prefix!r}: run the quick start whole")
        return at

    heading = find("## Induction heads")
    first, end = _table_after(lines, heading)
    scores = lines[first:first + 2] + [_shorten(r) for r in lines[first + 2:end] if r.split(" | ")[0] in SCORES]
    first, end = _table_after(lines, find("The induction heads (prefix_matching_paper"))
    rows = lines[first + 2:end]
    ranks = lines[first:first + 2] + [r for r in rows if r.split(" | ")[0] == rows[0].split(" | ")[0]]
    copy = find("## Synthetic in-context copying")
    first, end = _table_after(lines, copy)
    return "\n".join([lines[heading], "", *scores, "", lines[find("The induction heads (prefix_matching_paper")], "",
                      *ranks, "", lines[copy], "", *lines[first:end]])


def in_readme(text: str) -> str:
    """The excerpt README.md holds between its markers (inside one ```markdown block)."""
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return body.strip().removeprefix("```markdown").removesuffix("```").strip()


def write(readme: Path, excerpt: str) -> None:
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{BEGIN}\n```markdown\n{excerpt}\n```\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m study.readme_excerpt", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the quick start's run directory (python run.py all --out runs/tiny)")
    ap.add_argument("--write", action="store_true", help="replace README.md's excerpt with this one")
    args = ap.parse_args(argv)
    try:
        excerpt = cut((args.run / "report.md").read_text(encoding="utf-8"))
    except (OSError, KeyError) as err:
        print(f"readme_excerpt: error: {err}", file=sys.stderr)
        return 2
    if args.write:
        write(README, excerpt)
    else:
        print(excerpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
