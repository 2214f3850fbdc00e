"""The stream loop end to end in-process: a local folder (dry run) or moto S3 as the target."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import boto3
import pytest

from producer.__main__ import main
from producer.config import ProducerSettings
from producer.state import SourceChanged
from producer.store import LocalStore, S3Store, StoreError
from producer.stream import ChunkReport, StreamOptions, run_stream
from tests.support.producers import (
    HEADER,
    IMPORTANCE,
    SETTINGS,
    TRANSACTIONS,
    chunk_rows,
    source_rows,
)


class FailingStateWrites(LocalStore):
    """A local store whose state writes fail after the first few, as if the process died
    right after a chunk (the failed release leaves its lease held, as a crash would)."""

    def __init__(self, root: Path, fail_after_writes: int) -> None:
        super().__init__(root)
        self.writes_left = fail_after_writes

    def put_if(self, key, body, etag):
        if key == SETTINGS.state_key:
            if self.writes_left == 0:
                raise StoreError("state write failed")
            self.writes_left -= 1
        return super().put_if(key, body, etag)


class RecordingStore(S3Store):
    def __init__(self, s3, bucket: str) -> None:
        super().__init__(s3, bucket)
        self.written: list[str] = []

    def put(self, key, body, metadata=None):
        self.written.append(key)
        return super().put(key, body, metadata)

    def upload_file(self, key, path, metadata):
        self.written.append(key)
        super().upload_file(key, path, metadata)


@pytest.fixture
def bucket(aws: None):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data")
    return s3


def test_every_row_is_sent_once_in_order_in_standalone_chunks(tmp_path: Path):
    store = LocalStore(tmp_path)
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store)
    assert (result.chunks_sent, result.rows_sent, result.next_row, result.next_seq) == (
        3, 3000, 3000, 4
    )
    keys = sorted(store.keys("stream_chunks/"))
    assert [k.split("-")[1] for k in keys] == ["00000001", "00000002", "00000003"]
    assert chunk_rows(store) == source_rows()


def test_reference_is_uploaded_before_the_first_chunk_and_skipped_when_identical(bucket):
    store = RecordingStore(bucket, "data")
    options = StreamOptions(str(TRANSACTIONS), importance=str(IMPORTANCE), max_chunks=1)
    first = run_stream(SETTINGS, options, store)
    assert first.reference_uploaded
    assert store.written[0] == "reference/CustomerImportance.csv"
    assert store.written[1].startswith("stream_chunks/chunk-00000001-")
    stored = bucket.get_object(Bucket="data", Key="reference/CustomerImportance.csv")
    assert stored["Body"].read() == IMPORTANCE.read_bytes()

    second = run_stream(SETTINGS, options, store)
    assert not second.reference_uploaded
    assert "reference/CustomerImportance.csv" not in store.written[2:]


def test_a_changed_reference_file_is_uploaded_again(bucket, tmp_path: Path):
    store = S3Store(bucket, "data")
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), str(IMPORTANCE), max_chunks=1), store)
    changed = tmp_path / "ci.csv"
    changed.write_bytes(IMPORTANCE.read_bytes() + b"'C1','M1',1.0,'es_food',0\n")
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), str(changed), 1), store)
    assert result.reference_uploaded


def test_chunks_in_s3_carry_their_position_and_resume_continues_exactly(bucket):
    store = S3Store(bucket, "data")
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), max_chunks=2), store)
    state = json.loads(store.get(SETTINGS.state_key))
    assert (state["next_row"], state["next_seq"]) == (2000, 3)
    head = store.head(sorted(store.keys("stream_chunks/"))[1])
    assert head.metadata["first-row"] == "1000" and head.metadata["rows"] == "1000"

    rest = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store)
    assert (rest.chunks_sent, rest.next_row) == (1, 3000)
    assert chunk_rows(store) == source_rows()


def test_a_crash_between_chunk_upload_and_state_write_neither_duplicates_nor_skips(tmp_path):
    failing = FailingStateWrites(tmp_path, fail_after_writes=2)  # the lease's, chunk 1's
    with pytest.raises(StoreError):
        run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), failing)
    assert len(failing.keys("stream_chunks/")) == 2  # chunk 2 is there, its state is not

    # restarted at once: the crashed run's lease has not expired
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), take_over=True),
                        LocalStore(tmp_path))
    assert result.chunks_sent == 1
    assert chunk_rows(LocalStore(tmp_path)) == source_rows()


def test_nothing_left_to_send_is_not_an_error(tmp_path: Path):
    store = LocalStore(tmp_path)
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store)
    again = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store)
    assert (again.chunks_sent, again.next_row) == (0, 3000)


def test_from_start_sends_everything_again_with_later_sequence_numbers(tmp_path: Path):
    store = LocalStore(tmp_path)
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), max_chunks=2), store)
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), from_start=True), store)
    assert result.chunks_sent == 3
    keys = sorted(store.keys("stream_chunks/"))
    assert [k.split("-")[1] for k in keys] == [f"{i:08d}" for i in range(1, 6)]
    assert chunk_rows(store) == source_rows()[:2000] + source_rows()


def test_passes_send_the_file_again_from_its_top_with_increasing_sequence_numbers(
        tmp_path: Path):
    store = LocalStore(tmp_path)
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), max_chunks=2), store)
    # resumed at row 2000: the rest of this pass, then two whole passes
    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), passes=3), store)
    assert (result.chunks_sent, result.rows_sent, result.next_seq) == (7, 7000, 10)
    keys = sorted(store.keys("stream_chunks/"))
    assert [k.split("-")[1] for k in keys] == [f"{i:08d}" for i in range(1, 10)]
    assert chunk_rows(store) == source_rows() * 3
    assert json.loads(store.get(SETTINGS.state_key))["next_row"] == 3000


def test_passes_below_one_are_refused_before_anything_is_written(tmp_path: Path, capsys):
    code = main(["stream", str(TRANSACTIONS), "--passes", "0", "--dry-run", str(tmp_path)])
    assert code == 2 and "passes must be >= 1" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_a_different_source_is_refused_without_from_start(tmp_path: Path):
    store = LocalStore(tmp_path / "out")
    run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS), max_chunks=1), store)
    other = tmp_path / "other.csv"
    other.write_bytes(HEADER + b"".join(source_rows()[500:]))
    with pytest.raises(SourceChanged, match="--from-start"):
        run_stream(SETTINGS, StreamOptions(str(other)), store)


def test_a_stop_request_finishes_the_current_chunk_and_saves_the_position(tmp_path: Path):
    import threading

    stop = threading.Event()
    store = LocalStore(tmp_path)

    def stop_after_first(report: ChunkReport) -> None:
        stop.set()

    result = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store, stop=stop,
                        report=stop_after_first)
    assert (result.chunks_sent, result.next_row, result.stopped_by_signal) == (1, 1000, True)
    assert json.loads(store.get(SETTINGS.state_key))["next_row"] == 1000
    rest = run_stream(SETTINGS, StreamOptions(str(TRANSACTIONS)), store)
    assert rest.chunks_sent == 2
    assert chunk_rows(store) == source_rows()


def test_chunks_follow_the_fixed_rate_schedule_on_the_injected_clock(tmp_path: Path):
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    def clock() -> float:
        now[0] += 0.25  # every clock reading costs time, like a slow upload would
        return now[0]

    settings = ProducerSettings(rows_per_chunk=1000, interval=1.0)
    lags: list[float] = []
    run_stream(settings, StreamOptions(str(TRANSACTIONS)), LocalStore(tmp_path), clock=clock,
               sleep=sleep, report=lambda r: lags.append(r.lag))
    assert len(sleeps) == 2 and all(0 < s < 1.0 for s in sleeps)
    assert lags == [0.0, 0.0, 0.0]


# --- bad input through the CLI: one line naming the source, exit code 2, nothing written ---


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "file is empty"),
        (b"step,customer,age,gender\n0,'C1','4','M'\n", "lacks required column(s)"),
        (HEADER, "has a header but no data rows"),
    ],
)
def test_bad_master_file_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys, content: bytes, reason: str
):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    out = tmp_path / "out"
    code, err = run_cli(["stream", str(path), "--dry-run", str(out)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and str(path) in err and reason in err
    assert_nothing_written(out)


def test_missing_master_file_exits_2(tmp_path: Path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["stream", str(tmp_path / "nope.csv"), "--dry-run", str(out)], capsys)
    assert (code, err) == (2, f"error: {tmp_path / 'nope.csv'}: file not found\n")
    assert_nothing_written(out)


def test_unreadable_url_exits_2(tmp_path: Path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["stream", "http://127.0.0.1:9/t.csv", "--dry-run", str(out)], capsys)
    assert code == 2 and err.startswith("error: http://127.0.0.1:9/t.csv: cannot open URL")
    assert_nothing_written(out)


def test_bad_importance_file_exits_2_before_any_chunk(tmp_path: Path, capsys):
    bad = tmp_path / "ci.csv"
    bad.write_bytes(b"Source,Weight\n'C1',1.0\n")
    out = tmp_path / "out"
    code, err = run_cli(
        ["stream", str(TRANSACTIONS), "--importance", str(bad), "--dry-run", str(out)], capsys
    )
    assert code == 2 and str(bad) in err and "Target, typeTrans" in err
    assert_nothing_written(out)


def test_missing_bucket_names_the_variable(monkeypatch, capsys, aws_credentials):
    monkeypatch.delenv("BUCKET", raising=False)
    code, err = run_cli(["stream", str(TRANSACTIONS)], capsys)
    assert code == 2 and "BUCKET" in err


def test_cli_streams_into_the_bucket_with_json_lines(bucket, monkeypatch, capsys):
    monkeypatch.setenv("BUCKET", "data")
    code, err = run_cli(
        ["stream", str(TRANSACTIONS), "--importance", str(IMPORTANCE), "--interval", "0",
         "--rows-per-chunk", "1500"],
        capsys,
    )
    assert code == 0
    events = [json.loads(line) for line in err.splitlines()]
    written = [e for e in events if e["message"] == "chunk_written"]
    assert [e["rows"] for e in written] == [1500, 1500]
    assert all(e["key"].startswith("stream_chunks/chunk-") for e in written)
    assert events[-1]["message"] == "stream_finished"
    listed = bucket.list_objects_v2(Bucket="data")["Contents"]
    assert sorted(o["Key"].split("/")[0] for o in listed) == [
        "_state", "reference", "stream_chunks", "stream_chunks"
    ]


def _report(lag: float, chunks: int = 3) -> ChunkReport:
    return ChunkReport(key=f"stream_chunks/chunk-{chunks:08d}-x.csv", seq=chunks, first_row=0,
                       rows=10_000, size=800_000, lag=lag, upload_seconds=0.3,
                       chunks_sent=chunks, rows_sent=chunks * 10_000, elapsed=chunks - 1.0)


def test_reporter_warns_once_when_falling_behind_and_when_back_on_schedule(caplog):
    import io

    from producer.__main__ import ChunkReporter

    out = io.StringIO()
    reporter = ChunkReporter(out, interval=1.0, progress=False)
    with caplog.at_level(logging.INFO, logger="producer"):
        for lag in (0.0, 2.5, 3.0, 0.0):
            reporter(_report(lag))
    assert out.getvalue() == ""  # no progress line off a terminal
    events = [record.getMessage() for record in caplog.records]
    assert caplog.records[1].levelname == "WARNING"
    assert events == ["chunk_written", "behind_schedule", "chunk_written", "chunk_written",
                      "back_on_schedule", "chunk_written"]


def test_reporter_on_a_terminal_rewrites_one_progress_line():
    import io

    from producer.__main__ import ChunkReporter

    out = io.StringIO()
    reporter = ChunkReporter(out, interval=1.0, progress=True)
    reporter(_report(0.0, chunks=3))
    reporter.finish()
    assert out.getvalue().startswith("\rchunks 3  rows 30,000  rate 10,000 rows/s  lag 0.00 s")
    assert out.getvalue().endswith("\n")


def test_a_connection_cut_mid_file_exits_2_without_a_partial_chunk(tmp_path: Path, capsys):
    import http.server
    import threading

    body = HEADER + b"".join(source_rows()[:2500])

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body) + 10_000))  # promises more
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/t.csv"
    out = tmp_path / "out"
    try:
        code, err = run_cli(["stream", url, "--dry-run", str(out), "--interval", "0",
                             "--rows-per-chunk", "1000"], capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2 and f"error: {url}: read failed" in err.splitlines()[-1]
    store = LocalStore(out)
    assert chunk_rows(store) == source_rows()[:2000]  # two whole chunks, not the cut third
    assert json.loads(store.get(SETTINGS.state_key))["next_row"] == 2000
