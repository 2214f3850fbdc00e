"""Time ``python -m spark_detector replay`` on the full generated data set (60 chunks).

    .venv/bin/python -m bench.bench_replay [--rows 594643] [--work-dir .local]

On the local stack (moto S3 in its own process, embedded PostgreSQL), with the data set
``python -m producer generate --rows 594643 --seed 0`` writes (cached under
``<work-dir>/data/``, shared with ``make bench`` and ``make demo``), uploaded as the producer
names chunks (10,000 rows each). Three real ``replay`` processes, each timed wall-clock from
process start to exit (Spark start included), with the process tree's peak RSS:

1. ``rebuild``: ``--replace --order keys`` - the live database is gone; rebuild it;
2. ``same``: ``--into <db> --compare`` - the recorded order, the live settings: the diff must
   be empty;
3. ``what-if``: ``--into <db> --reset --rule PATID2_MIN_COUNT=60 --compare``.

Each replay logs a ``replay done`` JSON line with its stages in ms; the Spark share is
``spark_start + reference + spark_job``, the PostgreSQL share ``apply_chunk`` (the engine's
transactions, summed) plus ``target``, ``live_read`` and ``outbox``. ``apply`` is the wall
time of the apply loop; ``assemble`` (one chunk's Python objects from the job's Arrow result,
on a thread, overlapping the previous chunk's ``apply_chunk``) is part of it.
Output: ``bench/results/replay-<UTC>/results.json`` and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from bench.memory import RssSampler, classify
from chunk_contract.layout import chunk_key
from infra.local import postgres
from infra.local.demo import sample_data
from infra.local.interrupt import stops_cleanly
from infra.local.stack import REPO_ROOT, LocalServices, stopped_on_exit

SPARK_STAGES = ("spark_start", "reference", "spark_job")
POSTGRES_STAGES = ("target", "live_read", "apply_chunk", "outbox")


def upload_chunks(s3, bucket: str, prefix: str, transactions: Path, rows_per_chunk: int
                  ) -> int:
    header, *lines = transactions.read_bytes().decode().splitlines(keepends=True)
    start = datetime(2026, 11, 27, tzinfo=UTC)
    n = 0
    for n, i in enumerate(range(0, len(lines), rows_per_chunk), start=1):
        body = (header + "".join(lines[i: i + rows_per_chunk])).encode()
        s3.put_object(Bucket=bucket, Key=chunk_key(prefix, n, start + timedelta(seconds=n)),
                      Body=body)
    return n


class CpuSampler:
    """CPU seconds (user + system) of a process tree, from its last sample of each process:
    on a shared machine a steadier measure of the work than the wall-clock time."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.seconds: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in processes:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    t = p.cpu_times()
                    part = "driver" if p.pid == self.root.pid else classify(p)
                    self.seconds[p.pid] = (part, t.user + t.system)
            self._stop.wait(self.every)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def totals(self) -> dict[str, float]:
        parts: dict[str, float] = {}
        for part, seconds in self.seconds.values():
            parts[part] = round(parts.get(part, 0.0) + seconds, 1)
        return parts


def run_replay(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> dict:
    log = log_dir / f"replay-{name}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "spark_detector", "replay", *args],
                                   cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        with stopped_on_exit(process, timeout=60), \
                RssSampler(process.pid, every=0.1, label=name) as memory, \
                CpuSampler(process.pid) as cpu:
            rc = process.wait()
    wall_s = time.perf_counter() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    if rc != 0:
        raise SystemExit(f"replay {name} exited with {rc}; see {log}")
    done = next(json.loads(line) for line in text.splitlines()
                if line.startswith("{") and '"replay done"' in line)
    stages = {k: v for k, v in done.items() if k in (*SPARK_STAGES, *POSTGRES_STAGES,
                                                      "list", "apply", "assemble", "compare")}
    return {
        "args": args,
        "wall_s": round(wall_s, 2),
        "stages_ms": stages,
        "spark_ms": sum(stages.get(k, 0) for k in SPARK_STAGES),
        "postgres_ms": sum(stages.get(k, 0) for k in POSTGRES_STAGES),
        "chunks": done["chunks"],
        "detections": done["detections"],
        "cpu_s": cpu.totals(),
        "peak_rss_mib": round(memory.peak_total / 2**20),
        "peak_rss_parts_mib": {k: round(v / 2**20) for k, v in memory.peaks.items()},
        "summary": [line for line in text.splitlines() if not line.startswith("{")],
        "log": str(log),
    }


@stops_cleanly("bench.bench_replay")
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=594_643)
    parser.add_argument("--rows-per-chunk", type=int, default=10_000)
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".local")
    parser.add_argument("--rule", default="PATID2_MIN_COUNT=60", help="the what-if rule")
    parser.add_argument("--only-rebuild", action="store_true",
                        help="run phase 1 alone (one full replay; ~1/3 of the time)")
    args = parser.parse_args()
    transactions, importance = sample_data(args.work_dir, args.rows)
    out_dir = REPO_ROOT / "bench" / "results" / f"replay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out_dir.mkdir(parents=True)
    results: dict = {"rows": args.rows, "load_average_start": os.getloadavg(),
                     "cpus": os.cpu_count()}
    with LocalServices.start(args.work_dir / "bench-replay", database="replay_live") as stack:
        s3, _ = stack.clients()
        results["chunks"] = upload_chunks(s3, stack.bucket, stack.spec.chunk_prefix,
                                          transactions, args.rows_per_chunk)
        s3.put_object(Bucket=stack.bucket, Key="reference/CustomerImportance.csv",
                      Body=importance.read_bytes())
        server = postgres.with_database(stack.database_url, "postgres")
        into = postgres.with_database(server, "replay_whatif")
        env = stack.env()
        phases = {
            "rebuild": ["--replace", "--order", "keys"],
            "same": ["--into", into, "--reset", "--compare", str(out_dir / "same.csv")],
            "what-if": ["--into", into, "--reset", "--rule", args.rule,
                        "--compare", str(out_dir / "what-if.csv")],
        }
        if args.only_rebuild:
            phases = {"rebuild": phases["rebuild"]}
        for name, phase_args in phases.items():
            print(f"[bench] replay {name}: {' '.join(phase_args)}", flush=True)
            results[name] = run_replay(name, phase_args, env, out_dir)
    results["load_average_end"] = os.getloadavg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{'phase':<8} {'wall s':>7} {'Spark ms':>9} {'PG ms':>7} {'peak MiB':>9}  stages")
    for name in phases:
        r = results[name]
        print(f"{name:<8} {r['wall_s']:>7} {r['spark_ms']:>9} {r['postgres_ms']:>7}"
              f" {r['peak_rss_mib']:>9}  {r['stages_ms']}\n{'':<8} CPU s: {r['cpu_s']}")
    for name in phases:
        print(f"\n[{name}]\n" + "\n".join(results[name]["summary"]))
    print(f"\nload average {results['load_average_start']} -> {results['load_average_end']};"
          f" results: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
