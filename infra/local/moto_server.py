"""A moto server as a child process on a loopback port.

``python -m infra.local.moto_server [--port N]`` starts moto in server mode, prints one JSON
line ``{"endpoint": "http://127.0.0.1:PORT"}`` on stdout once it accepts requests, and runs
until SIGTERM/SIGINT. Port 0 (the default) lets the OS pick a free port, so parallel test
runs never collide; the parent learns the port from that first line.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

# moto needs credentials on every request but never checks them; these can reach nothing.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class MotoStartError(RuntimeError):
    """The moto server process did not come up."""


@dataclass
class MotoProcess:
    endpoint: str
    process: subprocess.Popen

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_moto(log_path: Path, *, port: int = 0, timeout: float = 30.0) -> MotoProcess:
    """Start the server and wait (by reading its first line, not by sleeping) until it is up."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FAKE_CREDENTIALS)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.local.moto_server", "--port", str(port)],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True,
            start_new_session=True,  # Ctrl-C in a terminal is for the demo to handle
        )
    try:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if not line:
            raise MotoStartError(f"moto server did not start within {timeout:.0f} s; see"
                                 f" {log_path}")
    except BaseException:  # not started, or a signal stopping the caller meanwhile
        process.kill()
        process.wait()
        raise
    return MotoProcess(endpoint=json.loads(line)["endpoint"], process=process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.moto_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(json.dumps({"endpoint": f"http://{host}:{port}"}), flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
