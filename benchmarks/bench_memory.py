"""The memory store's figures: remember throughput, recall latency at scale, recall quality.

Rows: remember() one call at a time (one transaction each) and the bulk helper
(``store.add_memories``, one transaction); recall() p50/p95 at 10,000 and 100,000 memories with
keyword ranking, for queries of typical words and of the corpus's most common words (the
worst case); and the top-3 hit rate of a small labelled set (50 memories, 30 queries, most of
them paraphrases, a third sharing no word with their answer) with keyword ranking and, when
the embeddings extra is installed, hybrid ranking.

Both backends: SQLite (FTS5) always; PostgreSQL (tsvector, ts_rank_cd) when a server answers at
ATHENA_TEST_POSTGRES_URL (default: the one scripts/ensure-postgres.sh sets up), each store in
a schema of its own, dropped afterwards. The server is on this machine (loopback), so its
figures include a client round trip per statement but no network.

No Docker is needed: runs are not measured here (see bench_latency.py). Prints a Markdown
table and writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from athena.mcp.memory_api import MemoryAPI
from memory_store import NewMemory
from memory_store.embeddings import extra_installed
from memory_store.postgres.connection import PostgresTarget
from orchestrator.settings import Settings
from orchestrator.testing import FakeBackend

OUT = Path(__file__).resolve().parent / "results" / "memory.json"
POSTGRES_URL = (
    os.environ.get("ATHENA_TEST_POSTGRES_URL")
    or "postgresql://athena:athena@127.0.0.1:5432/athena_test"
)
SIZES = tuple(int(n) for n in os.environ.get("BENCH_MEMORY_SIZES", "10000,100000").split(","))
QUERIES = int(os.environ.get("BENCH_MEMORY_QUERIES", "200"))
SINGLE_REMEMBERS = 500
TARGET_P50_MS = 20.0
SEED = 20261126

# --------------------------------------------------------------------------- labelled set

MEMORIES = [
    "The staging deploy fails when AWS_REGION is not set in the environment.",
    "Production deploys happen on Tuesdays and Thursdays after the 10:00 stand-up.",
    "The weekly sales report raises ZeroDivisionError when a region has no orders.",
    "Use the read replica, not the primary, for analytics queries.",
    "The primary Postgres database runs version 16 on db-main-1.",
    "Nightly backups go to the archive bucket and are kept for 35 days.",
    "Ada prefers answers as bullet points with the conclusion first.",
    "Ben is on call this week; page him for production incidents.",
    "The billing service owns invoices and talks to the payment provider.",
    "Rate limit of the public API is 100 requests per minute per token.",
    "The CI pipeline caches pip wheels; clear the cache when dependencies change.",
    "Docker builds need the debootstrap base image when the registry is unreachable.",
    "The warm pool keeps two containers per language ready.",
    "Timeouts in the payments webhook were caused by a slow DNS resolver.",
    "Customer emails must never be written to logs; mask them.",
    "The data team meets every Monday at 9:30 to review dashboards.",
    "Invoices are generated on the first business day of each month.",
    "The mobile app crashes on Android 12 when the camera permission is denied.",
    "Feature flags live in the config service under the flags/ prefix.",
    "Redis is used only as a cache; losing it is safe.",
    "Kafka topic orders.v2 has 12 partitions and 7 days of retention.",
    "The search index is rebuilt every night at 02:00 UTC.",
    "Passwords are hashed with argon2id; never store them in plain text.",
    "The CSV export breaks on names containing commas unless fields are quoted.",
    "Memory usage of the worker grows when the image thumbnails are cached in process.",
    "Python 3.11 is the minimum version for the backend services.",
    "Frontend builds use Node 20 and take about four minutes.",
    "The on-call runbook is in the wiki under Operations/Runbooks.",
    "Latency of the checkout endpoint rose after the ORM upgrade; the N+1 query was fixed.",
    "Staging uses a copy of production data that is anonymised weekly.",
    "Legal requires deleting user data within 30 days of an erasure request.",
    "The recommendation model is retrained every Sunday on the last 90 days of clicks.",
    "Disk on the log server fills up when debug logging is left on.",
    "TLS certificates renew automatically 30 days before expiry.",
    "The marketing site is static and hosted on the CDN.",
    "Carol owns the data warehouse and approves schema changes.",
    "Use UTC timestamps everywhere; convert to local time only in the UI.",
    "Unit tests must not reach the network; use the fake backend.",
    "The translation files are in locales/ and are synced from the vendor weekly.",
    "Batch jobs run on the spot instances and must be restartable.",
    "The SLA for the public API is 99.9% monthly availability.",
    "Image uploads larger than 10 MB are rejected by the gateway.",
    "Dependency updates are grouped into one pull request every Friday.",
    "The monthly finance close needs the revenue report by the third working day.",
    "Error budgets are reviewed at the end of each quarter.",
    "The VPN is required to reach the admin dashboard.",
    "Slack channel #incidents is where outages are coordinated.",
    "Pagination of the list endpoints uses opaque cursor tokens, not page numbers.",
    "The JSON parser rejects NaN values; send null instead.",
    "Backfills must be announced in #data a day in advance.",
]
LABELLED = [
    ("why does deploying to staging break", 0),
    ("which days can we ship to prod", 1),
    ("division by zero in the weekly sales report", 2),
    ("where should reporting queries run", 3),
    ("what version is the main database", 4),
    ("how long are database dumps retained", 5),
    ("how does Ada like her answers formatted", 6),
    ("who should I call about an outage right now", 7),
    ("which service handles invoices", 8),
    ("request quota for external developers", 9),
    ("build uses stale packages after changing requirements", 10),
    ("webhook requests for payments time out", 13),
    ("can we put customer email addresses in the logs", 14),
    ("Android app crash when taking a photo", 17),
    ("consequences of the key value store crashing", 19),
    ("how do we protect login secrets at rest", 22),
    ("spreadsheet export is broken for some names", 23),
    ("worker process uses more and more RAM", 24),
    ("minimum Python version for backend", 25),
    ("checkout got slower after upgrading the ORM", 28),
    ("GDPR deletion deadline for user data", 30),
    ("when is the recommender retrained", 31),
    ("storage exhausted on the logging machine", 32),
    ("will our HTTPS certs lapse", 33),
    ("who signs off on analytics table migrations", 35),
    ("which clock zone for stored dates", 36),
    ("tests must not call the internet", 37),
    ("maximum size of an uploaded picture", 41),
    ("how do we page through list results", 47),
    ("NaN in JSON payload rejected", 48),
]


def hit_rate(api: MemoryAPI, ids: Sequence[int]) -> dict[str, Any]:
    """Top-1 and top-3 hit rates of the labelled queries; the misses, for reading."""
    top1 = top3 = 0
    misses = []
    for query, expected in LABELLED:
        found = [h["id"] for h in api.recall(query, limit=3, kinds=["memory"])]
        top1 += bool(found) and found[0] == ids[expected]
        if ids[expected] in found:
            top3 += 1
        else:
            misses.append(query)
    n = len(LABELLED)
    return {"top1": round(top1 / n, 3), "top3": round(top3 / n, 3), "n": n, "misses": misses}


# --------------------------------------------------------------------------- where stores live


class SQLitePlace:
    """Stores as files in a temporary directory."""

    name = "SQLite"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @contextmanager
    def target(self, label: str) -> Iterator[str]:
        """A fresh store location."""
        yield str(self.tmp / f"{label}.db")

    def memories(self, target: str) -> int:
        with sqlite3.connect(target) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    def size_mb(self, target: str) -> float:
        return round(Path(target).stat().st_size / 2**20, 1)


class PostgresPlace:
    """Stores as schemas of the test database, each dropped when done."""

    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.url = url

    def problem(self) -> str | None:
        """Why the server cannot be used, or None."""
        try:
            import psycopg
        except ImportError:
            return "the postgres extra is not installed"
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                self.version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        except psycopg.Error as exc:
            return PostgresTarget.parse(self.url).scrub(str(exc).strip())
        return None

    def _sql(self, statement: str) -> Any:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement)  # type: ignore[arg-type]
            row = cursor.fetchone() if cursor.description else None
            return None if row is None else row[0]

    @contextmanager
    def target(self, label: str) -> Iterator[str]:
        """A fresh schema; dropped afterwards."""
        schema = f"athena_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        self._sql(f"CREATE SCHEMA {schema}")
        try:
            yield f"{self.url}{'&' if '?' in self.url else '?'}options=-csearch_path%3D{schema}"
        finally:
            self._sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def _schema(self, target: str) -> str:
        return target.rsplit("%3D", 1)[1]

    def memories(self, target: str) -> int:
        return int(self._sql(f"SELECT COUNT(*) FROM {self._schema(target)}.memories"))

    def size_mb(self, target: str) -> float:
        schema = self._schema(target)
        total = self._sql(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            f"ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r'"
        )
        return round(int(total) / 2**20, 1)


Place = SQLitePlace | PostgresPlace


def recall_quality(place: Place, mode: str) -> dict[str, Any]:
    """Load the labelled memories into a fresh store, score the queries, time both calls."""
    with place.target(f"quality-{mode}") as target, open_api(target, mode) as api:
        api.recall("warm up")  # hybrid: the model loads here, once per process
        ids: list[int] = []
        remember_ms = timed_each(lambda text: ids.append(api.remember(text)), MEMORIES, warm_up=0)
        figures = hit_rate(api, ids)
        queries = [query for query, _ in LABELLED]
        recall_ms = timed_each(lambda q: api.recall(q, limit=3), queries)
        return {**figures, "remember_ms": remember_ms, "recall_ms": recall_ms}


# --------------------------------------------------------------------------- scale


def open_api(target: str, embeddings: str = "off") -> MemoryAPI:
    """A MemoryAPI on a fresh store; no runs happen here, so the backend is a fake."""
    return MemoryAPI.create(
        target,
        settings=Settings(pool_size=0),
        backends=[FakeBackend()],
        embeddings=embeddings,  # type: ignore[arg-type]
    )


class Corpus:
    """Synthetic memories: 12 to 30 words from a Zipf-weighted vocabulary of 20,000 words."""

    def __init__(self, seed: int = SEED) -> None:
        self.random = random.Random(seed)
        topics = " ".join(MEMORIES).lower().replace(".", " ").replace(",", " ").split()
        self.vocabulary = list(dict.fromkeys(topics)) + [f"term{i}" for i in range(20_000)]
        self.weights = [1 / (rank + 10) for rank in range(len(self.vocabulary))]

    def text(self, low: int = 12, high: int = 30) -> str:
        """One memory's text."""
        return " ".join(
            self.random.choices(self.vocabulary, self.weights, k=self.random.randint(low, high))
        )

    def queries(self, count: int, top: int | None = None) -> list[str]:
        """Queries of 2 to 4 words, drawn like the text (or from the ``top`` commonest words)."""
        words = self.vocabulary[:top] if top else self.vocabulary
        weights = self.weights[:top] if top else self.weights
        return [
            " ".join(self.random.choices(words, weights, k=self.random.randint(2, 4)))
            for _ in range(count)
        ]


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p95 and the count of samples (ms)."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "n": len(ordered)}


def timed_each(
    action: Callable[[str], object], inputs: list[str], warm_up: int = 2
) -> dict[str, float]:
    """Time ``action`` on each input (after ``warm_up`` untimed calls)."""
    for item in inputs[:warm_up]:
        action(item)
    samples = []
    for item in inputs:
        start = time.perf_counter()
        action(item)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def at_scale(place: Place, size: int) -> dict[str, Any]:
    """Bulk-load ``size`` memories, then time remember() and recall() through MemoryAPI."""
    corpus = Corpus()
    texts = [corpus.text() for _ in range(size)]
    with place.target(f"scale-{size}") as target:
        with open_api(target) as api:
            start = time.perf_counter()
            memories = [NewMemory.create(t) for t in texts]
            api.store.add_memories(memories)
            bulk_seconds = time.perf_counter() - start
            singles = [corpus.text() for _ in range(SINGLE_REMEMBERS)]
            start = time.perf_counter()
            for text in singles:
                api.remember(text)
            single_seconds = time.perf_counter() - start
            typical = timed_each(api.recall, corpus.queries(QUERIES))
            common = timed_each(api.recall, corpus.queries(QUERIES, top=50))
        return {
            "memories": place.memories(target),
            "bulk_per_s": round(size / bulk_seconds),
            "remember_per_s": round(SINGLE_REMEMBERS / single_seconds),
            "recall_typical_ms": typical,
            "recall_common_words_ms": common,
            "file_mb": place.size_mb(target),
        }


# --------------------------------------------------------------------------- report


def measure() -> dict[str, Any]:
    """Run every measurement and return the figures."""
    figures: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        "queries_per_size": QUERIES,
        "scale": {},
        "quality": {},
    }
    with tempfile.TemporaryDirectory(prefix="athena-bench-memory-") as tmp:
        sqlite = SQLitePlace(Path(tmp))
        figures["quality"]["keyword"] = recall_quality(sqlite, "off")
        if extra_installed():
            figures["quality"]["hybrid"] = recall_quality(sqlite, "on")
        for size in SIZES:
            figures["scale"][str(size)] = at_scale(sqlite, size)
    figures["postgres"] = measure_postgres()
    return figures


def measure_postgres() -> dict[str, Any]:
    """The same figures on PostgreSQL (keyword ranking), or why there are none."""
    place = PostgresPlace(POSTGRES_URL)
    problem = place.problem()
    shown = PostgresTarget.parse(POSTGRES_URL).shown
    if problem is not None:
        return {"skipped": f"no PostgreSQL server answers at {shown}: {problem}"}
    figures: dict[str, Any] = {"server": f"PostgreSQL {place.version} at {shown}"}
    figures["quality"] = {"keyword": recall_quality(place, "off")}
    figures["scale"] = {str(size): at_scale(place, size) for size in SIZES}
    return figures


def scale_rows(name: str, scale: dict[str, Any]) -> list[str]:
    """One table row per size of one backend."""
    lines = []
    for row in scale.values():
        typical, common = row["recall_typical_ms"], row["recall_common_words_ms"]
        lines.append(
            f"| {name} | {row['memories']:,} | {row['bulk_per_s']:,} | {row['remember_per_s']:,} | "
            f"{typical['p50']} | {typical['p95']} | {common['p50']} | {common['p95']} | {row['file_mb']} |"
        )
    return lines


def quality_row(name: str, mode: str, row: dict[str, Any]) -> str:
    """One row of the labelled-set table."""
    return (
        f"| {name} | {mode} | {row['top1']:.0%} | {row['top3']:.0%} | {row['n']} | "
        f"{row['remember_ms']['p50']} | {row['recall_ms']['p50']} |"
    )


def table(figures: dict[str, Any]) -> str:
    """Render the figures as Markdown."""
    postgres = figures.get("postgres", {})
    lines = [
        "| store | memories | bulk load /s | remember() /s | recall p50 ms | recall p95 ms | common words p50 ms | common words p95 ms | size MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *scale_rows("SQLite", figures["scale"]),
        *scale_rows("PostgreSQL", postgres.get("scale", {})),
    ]
    if "skipped" in postgres:
        lines.append(f"| PostgreSQL | ({postgres['skipped']}) | | | | | | | |")
    lines += [
        "",
        "| store | ranking (labelled set) | top-1 | top-3 | queries | remember() p50 ms | recall() p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [quality_row("SQLite", mode, row) for mode, row in figures["quality"].items()]
    if "hybrid" not in figures["quality"]:
        lines.append("| SQLite | hybrid | (embeddings extra not installed) | | | | |")
    lines += [
        quality_row("PostgreSQL", mode, row) for mode, row in postgres.get("quality", {}).items()
    ]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    largest = figures["scale"].get("100000")
    if largest:
        p50 = largest["recall_typical_ms"]["p50"]
        met = "yes" if p50 <= TARGET_P50_MS else "NO"
        lines.append(
            f"| recall p50 at 100k memories, SQLite, keyword (ms) | {p50} | <= {TARGET_P50_MS} | {met} |"
        )
    machine = figures["machine"]
    if "server" in postgres:
        machine += f"; {postgres['server']} on the same machine"
    lines += ["", f"Measured {figures['when']} on {machine}."]
    return "\n".join(lines)


def main() -> int:
    """Measure, print the table, write the JSON."""
    figures = measure()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(table(figures))
    print(f"\nfigures written to {OUT}")
    largest = figures["scale"].get("100000")
    return 0 if not largest or largest["recall_typical_ms"]["p50"] <= TARGET_P50_MS else 1


if __name__ == "__main__":
    sys.exit(main())
