"""The replay command run in-process against the test stack, and its tables read back."""

from __future__ import annotations

import psycopg2

from spark_detector.config import WorkerSettings
from spark_detector.ops.replay import ReplayOptions, run_replay
from spark_detector.spark.fetch import FetchSpec
from tests.support.workers import AwsResources


def fetch_spec(resources: AwsResources) -> FetchSpec:
    return FetchSpec(resources.bucket, endpoint_url=resources.endpoint,
                     access_key_id="testing", secret_access_key="testing")


def replay(spark, settings: WorkerSettings, resources: AwsResources, **options):
    return run_replay(settings, ReplayOptions(**options), s3=resources.s3,
                      spark_factory=lambda: spark, fetch_spec=fetch_spec(resources))


def query(url: str, sql: str, schema: str | None = None) -> list[tuple]:
    conn = psycopg2.connect(url, options=f"-c search_path={schema}" if schema else "")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()
