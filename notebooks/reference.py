"""Regenerate the lessons' reference results in data/ from one run of each with its defaults.

Run from anywhere, on an otherwise idle machine (each lesson takes up to two minutes)::

    python3 notebooks/reference.py                    # every lesson: 07 to 10
    python3 notebooks/reference.py 09_group_commit    # one lesson

Each notebook runs headless (nbclient, a fresh ``python3`` kernel, ``MPLBACKEND=Agg``) in
a temporary folder with ``SAVE_REFERENCE = True`` set after its parameters cell, so it
writes ``data/<lesson>.csv`` (``djq.reference.save``) and nothing else in the
repository. The cells that print the notebook's verdicts are echoed here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent
LESSONS = ("07_scaling_laws", "08_leases", "09_group_commit", "10_open_vs_closed")
INJECTED = "SAVE_REFERENCE = True  # injected by notebooks/reference.py"


def run(lesson: str, timeout: float) -> None:
    """Execute one lesson notebook with its defaults and SAVE_REFERENCE set; print its verdicts."""
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{lesson}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(INJECTED, metadata={"tags": ["injected-parameters"]}))
    os.environ["MPLBACKEND"] = "Agg"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"djq-{lesson}-") as folder:
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": folder}}
        )
        client.execute()
    print(f"{lesson}: {time.perf_counter() - started:.0f} s")
    printed = [
        o["text"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    ]
    verdicts = [text for text in printed if "reproduced:" in text]
    print("".join(verdicts or printed[-1:]))  # the cells that print verdicts; else the last output


def main() -> int:
    """Run the lessons named on the command line (all by default); 1 at the first that fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "lessons", nargs="*", metavar="LESSON", help=f"lessons to run (default: {', '.join(LESSONS)})"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one cell may run (default 600)")
    args = parser.parse_args()
    unknown = sorted(set(args.lessons) - set(LESSONS))
    if unknown:
        parser.error(f"unknown lesson(s) {', '.join(unknown)}; choose from {', '.join(LESSONS)}")
    for lesson in args.lessons or LESSONS:
        try:
            run(lesson, args.timeout)
        except Exception as exc:  # a failed cell: say which lesson and how, then stop
            print(f"{lesson}: failed: {type(exc).__name__}: {str(exc)[-2000:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
