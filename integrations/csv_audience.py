"""Hashed CSV files per audience (`csv`): the embedded default destination, ready for a
manual upload to an ad platform's customer-list screen, with no credentials at all.

Every acknowledged batch is one file, written atomically (temp file + rename) under
`<data dir>/audiences/<audience>/`: `<time_ns>-<seq>-add.csv` or `…-remove.csv` (names sort in writing order), with
the header `email,phone,fn,ln,country` and values normalized and SHA-256 hashed the Meta
way (the format Meta's customer-list upload and most platforms accept).
segments.yaml: `{destination: csv, audience: newsletter_fans}`.
"""
from __future__ import annotations

import csv
import io
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from nurture.registry import AudienceDestination, IntegrationContext, MemberResult, SyncBatch, SyncMember
from nurture.segments import identifiers
from nurture.settings import EnvSettings, setting

HEADER = ["email", "phone", "fn", "ln", "country"]
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CsvAudienceSettings(EnvSettings):
    """Where the hashed CSV files go."""
    directory: Optional[str] = setting("NURTURE_CSV_AUDIENCE_DIR",
                                       doc="The folder of the `csv` destination's files (unset: <data dir>/audiences).")
    folder: Path  # the directory in use: NURTURE_CSV_AUDIENCE_DIR or <data dir>/audiences

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "CsvAudienceSettings":
        directory = cls.values_in(context.env).get("directory")
        return cls(directory=directory, folder=Path(directory or context.data_dir / "audiences"))


class CsvAudienceDestination(AudienceDestination):
    name = "csv"
    required_keys = ("audience",)
    identifier_columns = ("email", "phone")
    max_batch = 10_000

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests_sent = 0  # files written

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "CsvAudienceDestination":
        return cls(CsvAudienceSettings.from_env(context).folder)

    def identifiers(self, member: SyncMember) -> Optional[dict]:
        row = identifiers.meta_row(member)
        return {"row": row} if row else None

    def path_for(self, target: dict[str, Any], batch: SyncBatch, action: str) -> Path:
        audience = _SAFE.sub("_", str(target["audience"])).strip("._") or "audience"
        # names sort in the order the files were written: replaying them rebuilds the audience
        return self.folder / audience / f"{time.time_ns():020d}-{batch.seq:05d}-{action}.csv"

    def _write(self, path: Path, rows: list[list[str]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.requests_sent += 1

    def add(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        results, rows = [], []
        for member in members:
            ident = self.identifiers(member)
            if ident is None:
                results.append(MemberResult(member.contact_id, False, reason="no e-mail or phone"))
            else:
                rows.append(ident["row"])
                results.append(MemberResult(member.contact_id, True, ident))
        if rows:
            self._write(self.path_for(target, batch, "add"), rows)
        return results

    def remove(self, target: dict[str, Any], members: Sequence[SyncMember], batch: SyncBatch) -> list[MemberResult]:
        rows = [list(m.payload["row"]) for m in members if m.payload.get("row")]
        if rows:
            self._write(self.path_for(target, batch, "remove"), rows)
        return [MemberResult(m.contact_id, True) for m in members]
