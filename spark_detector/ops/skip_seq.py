"""`python -m spark_detector skip-seq SEQ [--through LAST]`: the operator's decision that chunks
will never come, so that the stream moves on (docs/operations.md). The decision itself, who and
why, is ``engine.sequence.skip_seq``; this is what is checked before it."""

from __future__ import annotations

from chunk_contract.layout import seq_key_prefix
from chunk_contract.listing import list_chunks
from spark_detector import db
from spark_detector.config import WorkerSettings
from spark_detector.engine.sequence import SeqAlreadySettled, skip_seq


class SkipRefused(RuntimeError):
    """The skip was refused and nothing changed; ``exit_code`` says why (docs/worker.md)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def present_in_s3(s3, settings: WorkerSettings, seq: int) -> str | None:
    """The key of a chunk of number ``seq`` under the chunk prefix, if one is there."""
    for chunk in list_chunks(s3, settings.bucket, settings.chunk_prefix, settings.chunk_suffix,
                             within=seq_key_prefix(seq)):
        if chunk.seq == seq:
            return chunk.key
    return None


def refuse_present(s3, settings: WorkerSettings, first: int, last: int, *,
                   force: bool = False) -> None:
    """``SkipRefused`` unless ``first``..``last`` is a range none of whose chunks is in S3
    (``force``: whatever is there). Every number is checked before any is skipped: a refused
    range changes nothing."""
    if last < first:
        raise SkipRefused("--through must not be below SEQ")
    for seq in range(first, last + 1):
        key = present_in_s3(s3, settings, seq)
        if key is not None and not force:
            raise SkipRefused(f"chunk {seq} exists in S3 ({key}): it will be applied; skipping"
                              " it would lose it (--force to insist)")


def skip_numbers(conn, first: int, last: int, *, reason: str, decided_by: str) -> int:
    """Skip ``first``..``last`` and return the number the stream now waits for; refused
    (``SkipRefused``) while a ``replay --replace`` is unfinished or a number is settled."""
    unfinished = db.rebuild_in_progress(conn)
    if unfinished is not None:  # the rebuild would not see the skip: finish it first
        raise SkipRefused(f"refused: {unfinished.describe()}", db.EXIT_REBUILD_IN_PROGRESS)
    try:
        return skip_seq(conn, first, through=last, reason=reason, decided_by=decided_by)
    except (SeqAlreadySettled, ValueError) as exc:
        raise SkipRefused(str(exc)) from exc
