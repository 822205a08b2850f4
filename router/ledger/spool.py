"""A bounded on-disk spool for ledger rows the database could not take.

When the database is down, the writer appends each failed batch as one JSON-lines file here and
keeps serving; once writes succeed again the files are replayed oldest first and deleted. The
bound is in bytes (``capacity_bytes``); a batch that does not fit stays in memory and is retried.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson

from router.ledger.records import LedgerRecord

_DATETIME_FIELDS = ("created_at", "finished_at", "started_at")


def _revive(row: dict) -> dict:
    for key in _DATETIME_FIELDS:
        if isinstance(row.get(key), str):
            row[key] = datetime.fromisoformat(row[key])
    return row


class LedgerSpool:
    def __init__(self, directory: Path, *, capacity_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.capacity_bytes = capacity_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seq = 0

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("batch-*.jsonl"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def rows(self) -> int:
        return sum(sum(1 for _ in p.open("rb")) for p in self.files())

    def append(self, batch: list[LedgerRecord]) -> bool:
        """Write a batch durably; False if the spool is full."""
        data = b"".join(orjson.dumps({"request": r.request, "attempts": r.attempts, "settlement": r.settlement}) + b"\n" for r in batch)
        with self._lock:
            if self.size_bytes() + len(data) > self.capacity_bytes:
                return False
            self._seq += 1
            final = self.directory / f"batch-{time.time_ns():020d}-{self._seq:06d}.jsonl"
            tmp = final.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(final)  # a reader never sees half a batch
        return True

    @staticmethod
    def read(path: Path) -> list[LedgerRecord]:
        out = []
        for line in path.read_bytes().splitlines():
            obj = orjson.loads(line)
            out.append(LedgerRecord(request=_revive(obj["request"]), attempts=[_revive(a) for a in obj["attempts"]],
                                    settlement=obj.get("settlement")))
        return out
