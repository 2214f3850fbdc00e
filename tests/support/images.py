"""The worker image's recipe read as data (its Dockerfile's instructions, the lock's pins), and the
stream an image's worker is given to apply."""

from __future__ import annotations

import re
from pathlib import Path

from producer.generate import generate
from tests.support.workers import AwsResources, split_chunks

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "infra" / "worker.Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def lock_pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a lock file (requirements/*.txt, hashes on continuation lines)."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", path.read_text(), re.MULTILINE))


def queued_stream(folder: Path, endpoint: str) -> tuple[dict[str, bytes], bytes, AwsResources]:
    """3,000 generated rows as three chunks in a new bucket, their messages queued, and the
    CustomerImportance at the reference key: what an image's worker is given to apply."""
    generate(folder, rows=3_000, seed=3)
    chunks = split_chunks((folder / "transactions.csv").read_bytes(), 1000)
    importance = (folder / "CustomerImportance.csv").read_bytes()
    resources = AwsResources.create(endpoint)
    resources.upload(chunks)
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=importance)
    resources.enqueue(sorted(chunks))
    return chunks, importance, resources
