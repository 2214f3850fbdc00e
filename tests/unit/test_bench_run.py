"""The bench's bookkeeping around phases (no services): load records, the peer's summary."""

from __future__ import annotations

from bench.run import LoadLog, summary_line


def test_each_phase_records_the_load_before_and_after_it_and_whether_it_was_noisy():
    quiet = LoadLog(threshold=1e9, quiet_wait_s=0)
    with quiet.phase("backlog-1") as first:
        pass
    assert first["after"] is None  # known only when the next phase begins
    with quiet.phase("nominal") as second:
        pass
    quiet.finish()
    assert first["after"] == second["before"]
    assert len(second["after"]) == 3 and second["at_end"] is not None
    assert first["noisy"] is False and second["noisy"] is False
    assert quiet.combined(["backlog-1", "nominal"]) == {"phases": ["backlog-1", "nominal"],
                                                        "noisy": False}

    busy = LoadLog(threshold=-1.0, quiet_wait_s=0)  # any load is above it
    with busy.phase("backlog-1"):
        pass
    busy.finish()
    assert busy.records["backlog-1"]["noisy"] is True
    assert busy.combined(["backlog-1", "not run"])["noisy"] is True


def test_the_peer_summary_is_its_last_json_line():
    out = 'Spark says hello\n{"message": "progress"}\n{"rows_per_s": 61234.5}\nbye\n'
    assert summary_line(out) == {"rows_per_s": 61234.5}
    assert summary_line("no json at all\n") is None
