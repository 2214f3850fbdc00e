"""The worker's bounds on a Spark job, as pure decisions: how a batch is cut into jobs the
driver's memory is sized for, and when a job counts as a dead runtime."""

from __future__ import annotations

from spark_detector.config import WorkerSettings
from spark_detector.spark.batch_result import BatchResult, merged_results
from spark_detector.spark.job import bounded_groups, line_groups
from spark_detector.worker.loop import Worker
from spark_detector.worker.spark_jobs import broken_gateway

MiB = 2**20


def test_a_batch_is_cut_into_jobs_of_at_most_the_byte_limit_a_chunk_alone_may_reach():
    sizes = {"a": 10 * MiB, "b": 6 * MiB, "c": 1, "d": 16 * MiB, "e": 1 * MiB}
    assert bounded_groups(list(sizes), sizes.get, 16 * MiB) == [["a", "b"], ["c"], ["d"], ["e"]]
    small = {f"k{i}": 700_000 for i in range(20)}  # the producer's chunks: one job
    assert bounded_groups(list(small), small.get, 16 * MiB) == [list(small)]
    assert bounded_groups([], len, 1) == []


def fetched(key: str, lines: int) -> tuple:
    return (key, "ok", None, lines, 10, 1, 5, 7, 3, 8, "")


def test_fetched_chunks_are_cut_into_jobs_of_at_most_the_row_limit():
    rows = [fetched("a", 150_000), fetched("b", 50_000), fetched("c", 0), fetched("d", 1),
            fetched("e", 200_000)]
    assert [[r[0] for r in group] for group in line_groups(rows, 200_000)] == [
        ["a", "b", "c"], ["d"], ["e"]]
    batch = [fetched(f"k{i}", 10_000) for i in range(20)]  # a backlog batch: one job
    assert line_groups(batch, 200_000) == [batch]


def test_the_results_of_a_batch_run_in_parts_are_one_result():
    first = BatchResult({"a": 1}, {"a": ()}, {}, {}, {"a": "copy a"}, fetch_ms=2.0)
    second = BatchResult({}, {}, {"b": "too large"}, {"c": "gone"}, {}, fetch_ms=None)
    assert merged_results([first, second]) == BatchResult(
        {"a": 1}, {"a": ()}, {"b": "too large"}, {"c": "gone"}, {"a": "copy a"}, fetch_ms=2.0)
    assert merged_results([second]) is second


def worker(alive: bool = True, timeout: float = 30) -> Worker:
    settings = WorkerSettings(bucket="b", queue_url="q", database_url="postgresql://x/y",
                              spark_job_timeout_seconds=timeout)
    return Worker(settings, s3=None, sqs=None, connect=lambda: None, aggregate=lambda k: None,
                  runtime_alive=lambda: alive)


def test_a_job_running_longer_than_its_bound_is_a_dead_runtime():
    w = worker(timeout=30)
    assert w.runtime_lost(1000.0) is None  # no job running
    w.jobs.job = (["stream_chunks/chunk-00000001-x.csv"], 1000.0)
    assert w.runtime_lost(1030.0) is None
    assert w.runtime_lost(1030.5) == (
        "the Spark job of 1 chunk(s) ran longer than WORKER_SPARK_JOB_TIMEOUT_SECONDS=30:"
        " the runtime is taken for dead")
    w.jobs.job = ([], 1000.0)  # the start-up warm-up is bounded too
    assert w.runtime_lost(2000.0).startswith("the warm-up job ran longer")
    assert worker(alive=False).runtime_lost(0.0) == "the Spark JVM has exited"


class Py4JNetworkError(Exception):
    """Named as py4j's own: the worker does not import py4j to recognise it."""


def test_an_error_of_the_jvms_connection_is_told_from_a_chunks_own():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise Py4JNetworkError("An error occurred while trying to connect") from exc
    except Py4JNetworkError as gateway:
        assert broken_gateway(gateway)
        try:
            raise RuntimeError("the job failed") from gateway
        except RuntimeError as wrapped:
            assert broken_gateway(wrapped)
    assert not broken_gateway(ConnectionRefusedError(111, "an S3 endpoint refused"))
    assert not broken_gateway(ValueError("bad row"))
