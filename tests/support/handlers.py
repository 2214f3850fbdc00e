"""Stand-in Lambda handlers for testing the local runner as a real process.

The runner imports its handler by dotted path in its own process; these record what they
got in the file named by ``RECORD_PATH`` so the test can read it back.
"""

from __future__ import annotations

import json
import os


def recording_handler(event: dict, context) -> dict:
    with open(os.environ["RECORD_PATH"], "a") as out:
        out.write(json.dumps({"event": event, "request_id": context.aws_request_id}) + "\n")
    return {"ok": True}


def failing_handler(event: dict, context) -> dict:
    recording_handler(event, context)
    raise RuntimeError("enqueue failed")
