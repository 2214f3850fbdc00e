"""The worker's Spark jobs (``worker.spark_jobs``) with a fake aggregator: one job for the
chunks not aggregated yet, the next batch's job run ahead on the Spark thread, and what a
failed job is."""

from __future__ import annotations

import threading

import pytest

from infra.local.stack import poll_until
from spark_detector.config import WorkerSettings
from spark_detector.worker.chunk_queue import InFlight
from spark_detector.worker.errors import SparkJobFailed, SparkRuntimeLost
from spark_detector.worker.hand import Hand
from spark_detector.worker.spark_jobs import SparkJobs
from spark_detector.worker.summary import BatchSummary
from tests.support.fakes import (
    BUCKET,
    QUEUE_URL,
    FakeAggregator,
    InMemoryQueue,
    chunk_message,
)

SETTINGS = WorkerSettings(bucket=BUCKET, queue_url=QUEUE_URL, database_url="postgresql://x/y",
                          max_batch_chunks=2, max_chunk_bytes=1000)


def key(seq: int) -> str:
    return f"stream_chunks/chunk-{seq:08d}-20261201T000000.000Z.csv"


def jobs_over(aggregator: FakeAggregator, *seqs: int, alive: bool = True,
              settings: WorkerSettings = SETTINGS, size: int = 100) -> SparkJobs:
    hand = Hand(settings, InFlight(InMemoryQueue(), QUEUE_URL, every_seconds=60,
                                   extend_to_seconds=60))
    for seq in seqs:
        hand.chunks[key(seq)] = chunk_message(key(seq), size=size, etag=f"v{seq}")
    return SparkJobs(settings, hand, aggregator, runtime_alive=lambda: alive)


def test_the_chunks_not_aggregated_yet_go_in_one_job_naming_each_version():
    aggregator = FakeAggregator()
    jobs = jobs_over(aggregator, 1, 2)
    summary = BatchSummary()

    results = jobs.results_for([key(1), key(2)], summary)

    assert aggregator.jobs == [{key(1): "v1", key(2): "v2"}]
    assert set(results) == {key(1), key(2)} and summary.fetch_ms == 1
    assert jobs.results_for([key(1)], BatchSummary()) == {key(1): results[key(1)]}
    assert len(aggregator.jobs) == 1  # kept in hand: not aggregated again


def test_chunks_larger_in_all_than_the_byte_limit_run_as_several_jobs():
    aggregator = FakeAggregator()
    jobs = jobs_over(aggregator, 1, 2, 3, size=600)
    jobs.results_for([key(1), key(2), key(3)], BatchSummary())
    assert [list(job) for job in aggregator.jobs] == [[key(1)], [key(2)], [key(3)]]


def test_a_failed_job_is_the_batchs_fault_unless_the_runtime_is_gone():
    failing = FakeAggregator(fail_when=lambda keys: True)
    with pytest.raises(SparkJobFailed) as failed:
        jobs_over(failing, 1, 2).results_for([key(1), key(2)], BatchSummary())
    assert failed.value.keys == [key(1), key(2)]
    assert "job failed" in str(failed.value.__cause__)
    with pytest.raises(SparkRuntimeLost):
        jobs_over(failing, 1, alive=False).results_for([key(1)], BatchSummary())


def test_the_next_batch_is_aggregated_ahead_while_this_one_is_applied():
    aggregator = FakeAggregator()
    jobs = jobs_over(aggregator, 1, 2, 3)
    jobs.results_for([key(1), key(2)], BatchSummary())

    def top_up() -> None:  # a full batch means a backlog: the next messages are received now
        jobs.hand.chunks[key(4)] = chunk_message(key(4), etag="v4")

    jobs.overlap_next([key(1), key(2)], top_up)
    assert jobs.pending
    summary = BatchSummary()
    jobs.results_for([key(3), key(4)], summary)

    assert aggregator.jobs[1] == {key(3): "v3", key(4): "v4"} and len(aggregator.jobs) == 2
    assert summary.overlapped == 2


def test_a_failed_job_run_ahead_is_dropped_and_its_chunks_run_again_in_their_turn():
    aggregator = FakeAggregator(fail_when=lambda keys: key(3) in keys)
    jobs = jobs_over(aggregator, 1, 3)
    jobs.results_for([key(1)], BatchSummary())
    jobs.overlap_next([key(1)], top_up=lambda: None)
    summary = BatchSummary()

    with pytest.raises(SparkJobFailed):  # in its turn, its failure is its own
        jobs.results_for([key(3)], summary)
    assert [list(job) for job in aggregator.jobs] == [[key(1)], [key(3)], [key(3)]]
    assert summary.overlapped == 0


def test_the_job_running_now_is_watched_and_closing_waits_for_it():
    release = threading.Event()
    aggregator = FakeAggregator()
    aggregator.gate = release.wait
    jobs = jobs_over(aggregator, 1, 2)
    jobs.overlap_next([], top_up=lambda: None)
    poll_until(lambda: jobs.job is not None, 30, "the job started on the Spark thread")
    assert jobs.job[0] == [key(1), key(2)]
    release.set()
    jobs.close()
    assert jobs.job is None and not jobs.pending
