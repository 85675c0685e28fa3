"""Where benchmark results go: ``results/<date>-<name>.json``, one file per benchmark and
day, which ``report.py`` gathers into the machine's report."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(name: str, day: str | None = None) -> Path:
    return RESULTS / f"{day or date.today().isoformat()}-{name}.json"


def write_result(name: str, data: Any) -> Path:
    out = result_path(name)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written to {out}")
    return out
