"""Hashed CSV files of conversions (`csv`): the embedded default, ready for a manual offline
conversions upload, with no credentials at all.

Every acknowledged batch is one file, written atomically (temp file + rename) under
`<data dir>/conversions/<name>/`: `<time_ns>-<seq>.csv` (names sort in writing order), with
the header `event_id,conversion,event_time,value,currency,email,phone,fn,ln,country,gclid,
gbraid,wbraid,fbclid,li_fat_id`. E-mail, phone, names and country are normalized the Meta way
and SHA-256 hashed (no plain address ever lands in a file); the click ids are the platforms'
own opaque tokens — one that starts like a spreadsheet formula (`=`, `+`, `-`, `@`) is left
out. `event_id` is the de-duplication id every platform receives. An event with neither an
e-mail, a phone nor a click id is skipped (`no_identifier`).
conversions.yaml: `{destination: csv, name: won_deals}`.
"""
from __future__ import annotations

import csv
import io
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from nurture.conversions.destination import ConversionDestination, ConversionEvent, ConversionResult
from nurture.registry import IntegrationContext
from nurture.segments import identifiers

HEADER = ["event_id", "conversion", "event_time", "value", "currency", "email", "phone", "fn", "ln", "country",
          "gclid", "gbraid", "wbraid", "fbclid", "li_fat_id"]
CLICK_COLUMNS = HEADER[10:]
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_FORMULA = ("=", "+", "-", "@")


def folder_name(name: Any) -> str:
    return _SAFE.sub("_", str(name)).strip("._") or "conversions"


class CsvConversionsDestination(ConversionDestination):
    name = "conversions.csv"
    platform = "csv"
    required_keys = ("name",)
    max_batch = 10_000

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests_sent = 0  # files written
        self._seq = 0

    @classmethod
    def from_env(cls, context: IntegrationContext) -> "CsvConversionsDestination":
        return cls(context.data_dir / "conversions")

    def row(self, event: ConversionEvent) -> Optional[list[str]]:
        hashed = identifiers.meta_row(event) or ["", "", "", "", ""]
        clicks = [(v if v and not v.startswith(_FORMULA) else "") for v in
                  (event.click_ids.get(k) for k in CLICK_COLUMNS)]
        if not (hashed[0] or hashed[1] or any(clicks)):
            return None
        moment = event.occurred_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        value = "" if event.value is None else f"{event.value:.2f}"
        return [event.event_id, event.conversion, moment, value, event.currency if value else "", *hashed, *clicks]

    def path_for(self, target: Mapping[str, Any]) -> Path:
        self._seq += 1
        return self.folder / folder_name(target["name"]) / f"{time.time_ns():020d}-{self._seq:05d}.csv"

    def send(self, target: Mapping[str, Any], events: Sequence[ConversionEvent], now: datetime
             ) -> list[ConversionResult]:
        results, rows = [], []
        for event in events:
            row = self.row(event)
            if row is None:
                results.append(ConversionResult(event.event_pk, "skipped", "no_identifier"))
            else:
                rows.append((event, row))
        if not rows:
            return results
        path = self.path_for(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(row for _, row in rows)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self.requests_sent += 1
        return results + [ConversionResult(e.event_pk, "sent", request_id=path.name) for e, _ in rows]
