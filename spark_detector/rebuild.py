"""`replay --replace`: the rebuild of the live database, safe to interrupt.

The replay itself is the one of ``replay.py``; what this module adds is the guard around it:

1. ``LiveRebuild.lock`` takes the worker lock exclusively (refused while any worker is
   connected; kept for the rebuild's whole run). Once the replay is planned, ``begin``
   records the rebuild in ``rebuild_in_progress``, committed before anything is written.
   From then on a worker refuses to start (``db.RebuildInProgress``) and ``status`` shows
   the rebuild, until it is finished - by this run, or, when this one is interrupted or
   fails, by running it again.
2. The replay writes into a schema of the live database (``REBUILD_SCHEMA``), never into the
   live tables: they keep the live run's record (its apply order, rejections and sequence
   marks), which a second run reads again exactly as the first did.
3. ``LiveRebuild.install`` replaces the live engine tables by the rebuilt ones and deletes
   the ``rebuild_in_progress`` row, in ONE transaction: an interruption before its commit
   changes nothing live, one after it has nothing left to do.
"""

from __future__ import annotations

import csv
import getpass
import io
import logging
import os

import psycopg2.extensions
from psycopg2 import sql

from spark_detector import db, outbox
from spark_detector.replay_plan import RECORDED, ReplayRefused

logger = logging.getLogger(__name__)

REBUILD_SCHEMA = "spark_detector_rebuild"
# The tables a replay rebuilds, in an order that satisfies their foreign keys. The others stay
# as they are: chunk_failures (the worker's own record of failures and dead-letters, which a
# replay does not redo: its dead-lettered numbers are in sequence_marks) and the reference
# weight cache.
ENGINE_TABLES = ("processed_chunks", "rejected_chunks", "outbox_files", "detected_patterns",
                 "pair_state", "merchant_state", "pair_count_histogram", "merchant_rule_state",
                 "weight_order", "waiting_pairs", "sequence_marks", "stream_position")


def operator() -> str:
    """Who runs the command, for the audit columns."""
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return f"uid {os.getuid()}"


class LiveRebuild:
    """The live database's connection while it is rebuilt: it holds the worker lock."""

    def __init__(self, conn: psycopg2.extensions.connection,
                 unfinished: db.RebuildState | None) -> None:
        self.conn = conn
        self.unfinished = unfinished  # an earlier run's rebuild, not finished

    @classmethod
    def lock(cls, live_url: str) -> LiveRebuild:
        """Lock the live database against workers, for as long as this object's connection
        lives; ``ReplayRefused`` while a worker is connected."""
        conn = db.connect(live_url)
        try:
            if not db.try_rebuild_lock(conn):
                raise ReplayRefused("--replace: a worker is running against the live database"
                                    " (it holds the worker lock); stop every worker first")
            db.migrate(conn)
            unfinished = db.rebuild_in_progress(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, unfinished)

    def order(self, asked: str | None) -> str:
        """The replay order: as asked, else the unfinished rebuild's, else the recorded one."""
        return asked or (self.unfinished.replay_order if self.unfinished else RECORDED)

    def begin(self, order: str) -> db.RebuildState:
        """Record the rebuild (or one more run of the unfinished one), committed before the
        rebuild writes anything: from now on workers refuse to start until ``install``."""
        with db.transaction(self.conn), self.conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO rebuild_in_progress (started_by, replay_order) VALUES (%s, %s)
                ON CONFLICT (id) DO UPDATE SET runs = rebuild_in_progress.runs + 1,
                                               replay_order = excluded.replay_order
                RETURNING started_at, started_by, replay_order, runs
                """, (operator(), order))
            state = db.RebuildState(*cur.fetchone())
        if self.unfinished is not None:
            logger.warning("finishing an unfinished rebuild", extra={
                "started_at": state.started_at.isoformat(), "started_by": state.started_by,
                "run": state.runs, "order": state.replay_order})
        return state

    def install(self) -> None:
        """Replace the live engine tables by the rebuilt ones and end the rebuild, in one
        transaction; then drop the rebuild's schema."""
        schema = sql.Identifier(REBUILD_SCHEMA)
        with db.transaction(self.conn), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                        (db.LOCK_NAMESPACE, db.ENGINE_LOCK))
            cur.execute(sql.SQL("TRUNCATE {}").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in ENGINE_TABLES)))
            for table in ENGINE_TABLES:
                columns = sql.SQL(", ").join(map(sql.Identifier, _stored_columns(cur, table)))
                cur.execute(sql.SQL("INSERT INTO {table} ({columns}) SELECT {columns}"
                                    " FROM {schema}.{table}").format(
                    table=sql.Identifier(table), columns=columns, schema=schema))
            cur.execute("DELETE FROM rebuild_in_progress")
        with db.transaction(self.conn), self.conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))

    def close(self) -> None:
        self.conn.close()  # the worker lock goes with the session


def _stored_columns(cur: psycopg2.extensions.cursor, table: str) -> list[str]:
    """The live table's columns that hold values (generated ones are computed again)."""
    cur.execute("SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s"
                "   AND is_generated = 'NEVER' ORDER BY ordinal_position", (table,))
    return [name for (name,) in cur.fetchall()]


def adopt_live_files(conn: psycopg2.extensions.connection, s3, bucket: str, prefix: str
                     ) -> tuple[int, list[str]]:
    """Rebuild the outbox from the detection files already in S3.

    The lost run's files need not be 50 each (a drain or an idle flush writes a partial one),
    so the rebuild's own grouping is dropped and the live files are matched in order instead:
    file n is adopted (recorded as written, with its key) when it holds exactly the next
    detections, by seq, with the same keys. The first file that differs stops the matching;
    the detections after the last adopted file are grouped in files of 50 again, which the
    worker writes when it starts (rewriting the differing file, reported here). Returns
    (files adopted, keys of the files that differ).
    """
    with db.transaction(conn), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (db.LOCK_NAMESPACE, db.ENGINE_LOCK))
        cur.execute("UPDATE detected_patterns SET file_no = NULL, s3_key = NULL")
        cur.execute("DELETE FROM outbox_files")
        cur.execute("SELECT seq, pattern_id, customer_name, merchant_id FROM detected_patterns"
                    " ORDER BY seq")
        rebuilt = cur.fetchall()
        position, file_no, differing = 0, 0, []
        while position < len(rebuilt):
            key = outbox.file_key(file_no + 1, prefix)
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                break
            rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
            mine = rebuilt[position:position + len(rows)]
            if not rows or [(r["patternId"], r["customerName"], r["MerchantId"])
                            for r in rows] != [tuple(d[1:]) for d in mine]:
                differing.append(key)
                break
            file_no += 1
            first, last = mine[0][0], mine[-1][0]
            cur.execute(
                "INSERT INTO outbox_files (file_no, first_seq, last_seq, detections, s3_key,"
                " written_at) VALUES (%s, %s, %s, %s, %s, clock_timestamp())",
                (file_no, first, last, len(mine), key))
            cur.execute("UPDATE detected_patterns SET file_no = %s, s3_key = %s"
                        " WHERE seq BETWEEN %s AND %s", (file_no, key, first, last))
            position += len(rows)
        outbox.close_full_files(cur, prefix=prefix)
    return file_no, differing
