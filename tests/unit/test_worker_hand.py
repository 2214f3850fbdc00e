"""The chunks in hand (``worker.hand``) against an in-memory queue: what is held, what is
poison, what happens to messages when SQS refuses a delete, and what goes back on a stop."""

from __future__ import annotations

from spark_detector.config import WorkerSettings
from spark_detector.worker.chunk_queue import DEAD_LETTER_REASON, InFlight, receive_batch
from spark_detector.worker.hand import Hand
from spark_detector.worker.summary import BatchSummary
from tests.support.fakes import BUCKET, QUEUE_URL, InMemoryQueue, chunk_message, result_of

SETTINGS = WorkerSettings(bucket=BUCKET, queue_url=QUEUE_URL, database_url="postgresql://x/y",
                          max_batch_chunks=5, max_held_chunks=8, max_chunk_bytes=1000)


def key(seq: int) -> str:
    return f"stream_chunks/chunk-{seq:08d}-20261201T000000.000Z.csv"


def hand_over(queue: InMemoryQueue) -> Hand:
    hand = Hand(SETTINGS, InFlight(queue, QUEUE_URL, every_seconds=60, extend_to_seconds=60))
    hand.take(receive_batch(queue, QUEUE_URL, max_messages=10, wait_time_seconds=0,
                            window_seconds=0))
    return hand


def test_received_chunks_are_held_once_each_and_poison_is_set_apart():
    queue = InMemoryQueue()
    queue.send_chunk(key(2))
    queue.send_chunk(key(1))
    queue.send_chunk(key(1))  # a duplicate delivery: one chunk, two messages
    queue.send("not json")
    queue.send(chunk_message(key(3)).to_json().replace(BUCKET, "another-bucket"))
    hand = Hand(SETTINGS, InFlight(queue, QUEUE_URL, every_seconds=60, extend_to_seconds=60))

    poison = hand.take(receive_batch(queue, QUEUE_URL, max_messages=10, wait_time_seconds=0,
                                     window_seconds=0))

    assert list(hand.chunks) == [key(2), key(1)]  # arrival order
    assert len(hand.inflight.messages(key(1))) == 2
    assert sorted(p.received.body for p in poison)[0] == "not json"
    assert "another-bucket" in poison[1].reason
    assert hand.redriven == set()


def test_a_message_redriven_from_the_dlq_is_known_as_such():
    queue = InMemoryQueue()
    queue.send(chunk_message(key(1)).to_json(),
               **{DEAD_LETTER_REASON: {"DataType": "String", "StringValue": "failed"}})
    assert hand_over(queue).redriven == {key(1)}


def test_applied_chunks_messages_stay_held_while_sqs_refuses_the_delete():
    queue = InMemoryQueue()
    for seq in (1, 2):
        queue.send_chunk(key(seq))
    hand = hand_over(queue)
    hand.forget(key(1), delete_now=False)
    queue.refuse_deletes = True

    hand.delete_applied(BatchSummary())
    assert hand.applied_unacked == [key(1)] and queue.deleted == []

    queue.refuse_deletes = False
    hand.delete_applied(BatchSummary())  # the next loop's try
    assert hand.applied_unacked == [] and queue.deleted == ["h1"]


def test_giving_back_makes_held_messages_visible_and_deletes_the_applied_ones():
    queue = InMemoryQueue()
    for seq in (1, 2, 3):
        queue.send_chunk(key(seq))
    hand = hand_over(queue)
    assert queue.visible() == []
    hand.forget(key(1), delete_now=False)
    hand.aggregated[key(2)] = result_of(key(2))

    hand.give_back_all("stopping")

    assert queue.visible() == ["h2", "h3"] and queue.deleted == ["h1"]
    assert hand.chunks == {} and hand.aggregated == {}


def test_candidates_for_the_next_job_are_in_production_order_and_leave_suspects_out():
    queue = InMemoryQueue()
    queue.send_chunk("stream_chunks/by-hand.csv")
    for seq in (5, 3, 4, 2):
        queue.send_chunk(key(seq))
    queue.send_chunk(key(6), size=5000)  # over max_chunk_bytes: rejected whole, never run
    hand = hand_over(queue)
    hand.failed_before = {key(4)}
    hand.aggregated[key(2)] = result_of(key(2))

    assert hand.candidates([key(3)]) == [key(5), "stream_chunks/by-hand.csv"]
    assert len(hand.chunks) == 6 and hand.room() == 2  # WORKER_MAX_HELD_CHUNKS=8
