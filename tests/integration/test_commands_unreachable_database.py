"""Every command that meets an unreachable PostgreSQL says so in one line, naming the database
without its password, and exits 4 (docs/worker.md): no traceback."""

from __future__ import annotations

import socket

import pytest

from tests.support.workers import AwsResources, command, error_lines, worker_env

PASSWORD = "s3cret-Pa55"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def unreachable(moto_endpoint: str) -> tuple[dict[str, str], str]:
    """The worker's environment with a DATABASE_URL that nothing answers, and that URL as
    messages must show it."""
    port = closed_port()
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/live"
    resources = AwsResources.create(moto_endpoint)
    # a usable CustomerImportance: replay checks it before it connects to anything
    resources.s3.put_object(Bucket=resources.bucket, Key="reference/CustomerImportance.csv",
                            Body=b"Source,Target,Weight,typeTrans,fraud\n'C1','M1',1,'x',0\n")
    env = worker_env(resources, url, WORKER_DB_RETRY_ATTEMPTS="1")
    return env, f"postgresql://app:***@127.0.0.1:{port}/live"


@pytest.mark.parametrize("args", [
    ("status",), ("skip-seq", "3", "--reason", "lost"), ("backfill",), ("migrate",), ("run",),
    ("replay", "--into", "whatif"), ("replay", "--replace"),
], ids=lambda args: "-".join(args[:2]))
def test_a_command_meeting_an_unreachable_database_names_it_in_one_line(unreachable, args):
    env, shown = unreachable

    result = command(env, *args, timeout=120)

    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout
    (said,) = error_lines(result)
    assert said.startswith(f"spark_detector: cannot connect to the database {shown}: ")


def test_an_unreachable_replay_target_is_named_in_one_line(unreachable):
    env, _ = unreachable
    port = closed_port()

    result = command(env, "replay", "--into", f"postgresql://r:{PASSWORD}@127.0.0.1:{port}/what",
                     "--order", "keys", timeout=120)

    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"spark_detector: cannot connect to the database postgresql://r:***@127.0.0.1:{port}/")
