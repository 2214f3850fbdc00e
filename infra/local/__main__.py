"""``python -m infra.local up|down|env``: the local stack in the background, for manual use.

``up`` starts moto (S3 + SQS set up as template.yaml does), the Lambda runner with the real
trigger handler, and PostgreSQL (``DATABASE_URL`` or the embedded server under
``.local/pgdata``, database ``txn_pipeline`` recreated empty), records them in
``.local/stack.json`` and prints the environment to use them. ``down`` stops what ``up``
started. ``env`` prints the exports again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from infra.local import postgres
from infra.local.interrupt import stops_cleanly
from infra.local.stack import REPO_ROOT, LocalServices, _Handles, launch
from infra.local.template import spec_from_template

STATE_FILE = "stack.json"
EXPORTED = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION", "BUCKET", "QUEUE_URL", "DLQ_URL", "DATABASE_URL")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def exports(stack: LocalServices) -> str:
    env = stack.env({})
    return "\n".join(f"export {name}={shlex.quote(env[name])}" for name in EXPORTED)


# Where `make demo` generates the full-size data set (infra/local/demo.py); `make up` names it.
DEMO_DATA = ".local/data/banksim-594643"


def instructions(stack: LocalServices) -> str:
    r = stack.resources
    return "\n".join([
        "# the local stack is up; paste these into your shell:",
        exports(stack),
        "",
        "# then, for example (the generate step makes the data set once; `make demo` makes",
        "# the same one):",
        f"#   .venv/bin/python -m producer generate --out {DEMO_DATA}",
        f"#   .venv/bin/python -m producer stream {DEMO_DATA}/transactions.csv"
        f" --importance {DEMO_DATA}/CustomerImportance.csv",
        "#   .venv/bin/python -m spark_detector run --drain",
        "#   .venv/bin/python -m spark_detector status",
        "#   aws s3 ls s3://$BUCKET/ --recursive          (honours AWS_ENDPOINT_URL)",
        f"#   aws sqs get-queue-attributes --queue-url {r.queue_url} --attribute-names All",
        f"#   {postgres.psql_command(stack.database_url)}",
        f"# logs: {stack.logs}/ (moto.log, lambda.log); stop with: make down",
    ])


def read_state(work_dir: Path) -> LocalServices | None:
    path = work_dir / STATE_FILE
    return LocalServices.from_json(path.read_text()) if path.exists() else None


def cmd_up(work_dir: Path, port: int) -> int:
    running = read_state(work_dir)
    if running is not None and all(alive(pid) for pid in running.pids.values()):
        print(instructions(running))
        return 0
    if running is not None:
        cmd_down(work_dir)  # half dead: clean up before starting again
    handles = _Handles()
    try:
        stack = launch(work_dir, database="txn_pipeline", database_url=None,
                       spec=spec_from_template(), handler="lambda_trigger.app.handler",
                       runner_env=None, handles=handles, port=port)
    except BaseException:
        handles.stop()
        raise
    (stack.work_dir / STATE_FILE).write_text(stack.to_json())
    print(instructions(stack))
    return 0


def cmd_down(work_dir: Path) -> int:
    stack = read_state(work_dir)
    if stack is None:
        print("the local stack is not up (no .local/stack.json)")
        return 0
    for name, pid in stack.pids.items():
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
            print(f"stopped {name} (pid {pid})")
    if stack.pgdata is not None and postgres.stop_embedded(stack.pgdata):
        print(f"stopped embedded PostgreSQL ({stack.pgdata})")
    (work_dir / STATE_FILE).unlink()
    return 0


@stops_cleanly("infra.local")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local")
    parser.add_argument("command", choices=["up", "down", "env"])
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".local")
    parser.add_argument("--port", type=int, default=0, help="moto's port (default: any free)")
    args = parser.parse_args(argv)
    work_dir = args.work_dir.resolve()
    if args.command == "up":
        return cmd_up(work_dir, args.port)
    if args.command == "down":
        return cmd_down(work_dir)
    stack = read_state(work_dir)
    if stack is None:
        print("the local stack is not up: run `make up`", file=sys.stderr)
        return 1
    print(exports(stack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
