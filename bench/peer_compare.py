"""The peer's detections (``bench.peer_streaming``) against the reference model of the rules.

    python -m bench.peer_compare --out OUT --chunks-dir DIR --importance PATH

Run from the repository root: the expectation is ``tests/reference_model.py`` (the plain-Python
model every worker test compares against), over the chunk files in ``--chunks-dir`` and the
thresholds of the ``PATID*`` environment variables, as the peer used them. Two expectations:

- ``worker``: the chunks one at a time in production order (file name order) - what the worker
  detects, and after which chunk;
- ``peer_batches``: the peer's own micro-batches (``peer_chunks.jsonl``) in the order it
  committed them, each applied as ONE chunk named after its last file - what the peer must
  detect if it implements the rules right, whatever its batching and file order.

Prints one JSON line: per expectation, the detections in both, only in the peer, only in the
expectation, and those that fired after another chunk (key, peer's chunk, expected chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

Key = tuple[str, str, str]  # (pattern_id, merchant_id, customer_name)


def diff_detections(peer: Iterable[tuple[Key, str]], expected: Iterable[tuple[Key, str]]
                    ) -> dict:
    """Compare (detection key, chunk it fired at) lists; keys are unique in each."""
    peer_at, expected_at = dict(peer), dict(expected)
    both = peer_at.keys() & expected_at.keys()
    other_chunk = sorted([*k, peer_at[k], expected_at[k]] for k in both
                         if peer_at[k] != expected_at[k])
    return {
        "peer": len(peer_at),
        "expected": len(expected_at),
        "same_key": len(both),
        "same_key_and_chunk": len(both) - len(other_chunk),
        "only_peer": sorted([*k, peer_at[k]] for k in peer_at.keys() - both),
        "only_expected": sorted([*k, expected_at[k]] for k in expected_at.keys() - both),
        "other_chunk": other_chunk,
        "exact": peer_at == expected_at,
    }


def peer_batches(chunks: Sequence[dict]) -> list[list[str]]:
    """The peer's micro-batches, each its files in name order, in commit order."""
    batches: dict[int, list[str]] = {}
    for chunk in sorted(chunks, key=lambda c: (c["committed_at"], c["batch_id"])):
        batches.setdefault(chunk["batch_id"], []).append(chunk["chunk_key"])
    return [sorted(files) for files in batches.values()]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reference_detections(batches: Sequence[Sequence[str]], chunks_dir: Path, importance: Path,
                         thresholds) -> list[tuple[Key, str]]:
    """The reference model over ``batches`` (each applied as one chunk, named after its last
    file): (key, chunk) in detection order."""
    from tests.reference_model import ReferenceEngine, read_chunk, read_weights

    weights = read_weights(importance.read_bytes())
    model = ReferenceEngine(thresholds)
    for files in batches:
        rows = [row for name in files
                for row in read_chunk((chunks_dir / name).read_bytes()).rows]
        model.apply_rows(files[-1], rows, weights)
    return model.fired_keys()


def compare(out_dir: Path, chunks_dir: Path, importance: Path, thresholds=None) -> dict:
    from spark_detector.engine.rules import thresholds_from_env

    thresholds = thresholds or thresholds_from_env(os.environ)
    chunks = read_jsonl(out_dir / "peer_chunks.jsonl")
    peer = [((d["pattern_id"], d["merchant_id"], d["customer_name"]), d["chunk_key"])
            for d in read_jsonl(out_dir / "peer_detections.jsonl")]
    names = sorted(c["chunk_key"] for c in chunks)
    batches = peer_batches(chunks)
    return {
        "chunks": len(names),
        "batches": len(batches),
        "batches_in_production_order": [n for b in batches for n in b] == names,
        "worker": diff_detections(peer, reference_detections(
            [[n] for n in names], chunks_dir, importance, thresholds)),
        "peer_batches": diff_detections(peer, reference_detections(
            batches, chunks_dir, importance, thresholds)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_compare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the peer's --out folder")
    parser.add_argument("--chunks-dir", type=Path, required=True,
                        help="the chunk files the peer read")
    parser.add_argument("--importance", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.out, args.chunks_dir, args.importance)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
