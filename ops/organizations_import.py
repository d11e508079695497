"""`sir-engine admin organizations import FILE.csv`: load the nonprofit directory from a CSV.

Columns (header row required): `name`, `slug`, `ein`, `logoUrl` (or `logo_url`), and optionally
`status` (ACTIVE or INACTIVE). Every row is checked first; if any is wrong, the errors are listed
by line and nothing is written. Then rows are upserted by slug in batches of `BATCH`, each batch
in its own transaction, with a progress bar (tqdm, on a terminal). Running it again changes
nothing: equal rows are left alone.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from engine.organization_import import ImportCounts, row_problems, upsert_organizations

BATCH = 500
SEED_CSV = Path(__file__).resolve().parent / "seed" / "organizations.csv"
_COLUMNS = {
    "name": "name",
    "slug": "slug",
    "ein": "ein",
    "logourl": "logo_url",
    "logo_url": "logo_url",
    "status": "status",
}


class ImportRefused(Exception):
    """The file cannot be imported; `errors` lists what is wrong, by line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} problem(s)")
        self.errors = errors


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows as directory columns. Raises ImportRefused listing every problem."""
    errors: list[str] = []
    rows: list[dict[str, Any]] = []
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ImportRefused([f"{path}: {exc.strerror}"]) from None
    with handle:
        reader = csv.DictReader(handle)
        header = [(h or "").strip().lower() for h in reader.fieldnames or []]
        unknown = [h for h in header if h not in _COLUMNS]
        if "name" not in header or "slug" not in header or unknown:
            raise ImportRefused(
                [
                    "line 1: the header needs name and slug, may have ein, logoUrl, status"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                ]
            )
        seen: dict[str, int] = {}
        for line, raw in enumerate(reader, start=2):
            row = {
                _COLUMNS[(k or "").strip().lower()]: (v or "").strip()
                for k, v in raw.items()
                if k is not None
            }
            found = row_problems(row)
            for field, messages in found.items():
                errors.append(f"line {line}: {field} {'; '.join(messages)}")
            slug = row.get("slug", "")
            if slug in seen:
                errors.append(f"line {line}: slug {slug!r} repeats line {seen[slug]}")
            seen.setdefault(slug, line)
            rows.append(row)
    if errors:
        raise ImportRefused(errors)
    return rows


async def import_file(
    db: AsyncEngine, path: Path, *, actor: str, progress: bool | None = None
) -> ImportCounts:
    """Validate then upsert `path`. `progress=None` shows the bar only on a terminal."""
    rows = read_rows(path)
    total = ImportCounts()
    with tqdm(
        total=len(rows),
        unit="org",
        desc="organizations",
        file=sys.stderr,
        disable=(not sys.stderr.isatty() if progress is None else not progress),
    ) as bar:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            async with db.begin() as conn:
                counts = await upsert_organizations(conn, chunk, actor=actor)
            for name, value in asdict(counts).items():
                setattr(total, name, getattr(total, name) + value)
            bar.update(len(chunk))
    return total
