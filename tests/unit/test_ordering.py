"""Production order as pure decisions: which chunks in hand may be applied now."""

from spark_detector.engine.ordering import (
    Turn,
    consecutive_from,
    number_holder,
    ready_run,
    turn_of,
)


def key(seq: int) -> str:
    return f"stream_chunks/chunk-{seq:08d}-20261127T000000.000Z.csv"


def held(*seqs: int | None, extra: dict | None = None) -> dict:
    return {**{key(s): s for s in seqs if s is not None}, **(extra or {})}


def test_turns():
    assert turn_of(None, 5) is Turn.UNSEQUENCED
    assert turn_of(5, 5) is Turn.NOW
    assert turn_of(6, 5) is Turn.EARLY
    assert turn_of(4, 5) is Turn.LATE


def test_a_run_of_consecutive_numbers_from_next_seq_is_ready_in_order():
    plan = ready_run(held(7, 5, 6, 9), next_seq=5, limit=10)
    assert plan.ready == (key(5), key(6), key(7))
    assert plan.waiting == (key(9),)
    assert plan.look_from == 8  # 9 is held: S3 may have 8, whose event is late or lost


def test_nothing_is_ready_before_the_awaited_chunk_and_s3_is_asked_for_it():
    plan = ready_run(held(3, 4), next_seq=2, limit=10)
    assert plan.ready == ()
    assert set(plan.waiting) == {key(3), key(4)}
    assert plan.look_from == 2


def test_the_run_is_capped_and_s3_is_not_asked_when_the_batch_is_full():
    plan = ready_run(held(1, 2, 3, 4), next_seq=1, limit=2)
    assert plan.ready == (key(1), key(2))
    assert plan.look_from is None


def test_unsequenced_and_late_chunks_are_ready_as_they_came():
    hand = "stream_chunks/uploaded by hand.csv"
    plan = ready_run(held(2, 10, extra={hand: None}), next_seq=10, limit=10)
    assert plan.ready == (key(2), hand, key(10))


def test_a_failing_chunk_waiting_for_its_retry_stops_the_run_without_a_lookup():
    plan = ready_run(held(5, 6, 7), next_seq=5, limit=10, blocked=[key(5)])
    assert plan.ready == ()
    assert plan.look_from is None  # 5 is in hand: nothing to look for
    plan = ready_run(held(5, 6, 7), next_seq=5, limit=10, blocked=[key(6)])
    assert plan.ready == (key(5),)


def test_nothing_held_beyond_means_nothing_to_look_for():
    assert ready_run(held(5), next_seq=5, limit=10).look_from is None
    assert ready_run({}, next_seq=5, limit=10).look_from is None


def test_consecutive_from_a_listing_stops_at_the_first_gap():
    listing = {**held(4, 5, 6, 8), "stream_chunks/other.csv": None}
    assert consecutive_from(5, listing, 10) == [key(5), key(6)]
    assert consecutive_from(5, listing, 1) == [key(5)]
    assert consecutive_from(7, listing, 10) == []
    copy = key(5).replace("20261127", "20261128")  # a second chunk 5: the first one counts
    assert consecutive_from(5, {**listing, copy: 5}, 10) == [key(5), key(6)]


def test_a_settled_number_belongs_to_its_chunk_and_any_other_is_a_duplicate():
    # applied, rejected or dead-lettered: the chunk it was settled with holds it
    for outcome in ("applied", "rejected", "dead_lettered"):
        assert number_holder(key(5), outcome, key(5), None) is None
        assert number_holder("copy", outcome, key(5), None) == key(5)
    # skipped: the first chunk that turns up after all takes it, then holds it
    assert number_holder(key(5), "skipped", None, None) is None
    assert number_holder(key(5), "skipped", None, key(5)) is None
    assert number_holder("copy", "skipped", None, key(5)) == key(5)
    # dead-lettered, its chunk redriven and applied late: a third chunk is a duplicate
    assert number_holder("copy", "dead_lettered", key(5), key(5)) == key(5)


def test_a_spark_errors_cause_is_recorded_not_its_wrapper():
    from spark_detector.engine.failures import failure_text

    wrapped = RuntimeError("An exception was thrown from the Python worker:\nTraceback:\n"
                           "  File x\nspark_detector.failpoints.InjectedFailure: injected at"
                           " spark_fetch for k\n")
    assert failure_text(wrapped) == "InjectedFailure: injected at spark_fetch for k"
    assert failure_text(ValueError("plain\nsecond")) == "ValueError: plain"
