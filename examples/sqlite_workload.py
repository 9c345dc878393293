"""A write-heavy SQLite workload (through Python's sqlite3 module) to watch with writewatch:

    writewatch run --heatmap heatmap.png -- python3 examples/sqlite_workload.py

It builds a table in an in-memory database with a large page cache, updates random rows,
builds an index, and deletes, in phases of about a second each, so the heatmap shows each
phase writing different memory.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time


def main(seconds: float = 8.0) -> None:
    rng = random.Random(0)
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA cache_size = -262144")  # up to 256 MiB of page cache
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
    phases = ("insert", "update", "index", "delete")
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        phase = phases[int((seconds - (end - time.monotonic())) // (seconds / 4)) % 4]
        with db:
            if phase == "insert":
                db.executemany("INSERT INTO t (k, v) VALUES (?, ?)",
                               ((rng.randrange(1 << 30), rng.randbytes(200)) for _ in range(2000)))
                n += 2000
            elif phase == "update":
                db.executemany("UPDATE t SET v = ? WHERE id = ?",
                               ((rng.randbytes(200), rng.randrange(1, n + 1)) for _ in range(2000)))
            elif phase == "index":
                db.execute("DROP INDEX IF EXISTS tk")
                db.execute("CREATE INDEX tk ON t (k)")
            else:
                db.execute("DELETE FROM t WHERE id IN "
                           "(SELECT id FROM t ORDER BY random() LIMIT 500)")
        time.sleep(0.01)
    print(f"{n} rows inserted", file=sys.stderr)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0)
