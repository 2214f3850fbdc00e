"""The producer's test inputs (the BankSim sample) and its command run as a process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from producer.config import ProducerSettings
from producer.store import LocalStore, S3Store

REPO = Path(__file__).resolve().parent.parent.parent
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "banksim_sample"
TRANSACTIONS = SAMPLE / "transactions.csv"
IMPORTANCE = SAMPLE / "CustomerImportance.csv"
HEADER = b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n"
SETTINGS = ProducerSettings(bucket="data", rows_per_chunk=1000, interval=0.0)
# A generated row of each file, as the generator writes it.
TXN_ROW = re.compile(
    r"^\d{1,3},'C\d+','[0-6U]','[FMEU]','28007','M\d+','28007','es_[a-z]+',\d+\.\d{1,2},[01]$"
)
IMP_ROW = re.compile(r"^'C\d+','M\d+',\d+\.\d{1,2},'es_[a-z]+',[01]$")


def source_rows(path: Path = TRANSACTIONS) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)[1:]


def chunk_rows(store: LocalStore | S3Store) -> list[bytes]:
    """All data rows of all chunks, in key order; checks every chunk starts with the header."""
    rows: list[bytes] = []
    for key in sorted(store.keys(SETTINGS.chunk_prefix)):
        body = store.get(key)
        assert body is not None and body.startswith(HEADER), key
        rows.extend(body.splitlines(keepends=True)[1:])
    return rows


def producer_env(endpoint: str, bucket: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint, BUCKET=bucket,
    )
    return env


def stream_args(*extra: str) -> list[str]:
    return [sys.executable, "-m", "producer", "stream", str(TRANSACTIONS),
            "--importance", str(IMPORTANCE), "--rows-per-chunk", "500", *extra]
