"""A local Lambda runner: S3 events from the events queue -> the real trigger handler.

It plays the part of Lambda's asynchronous invocation for S3 notifications:
- each S3 event (one SQS message on the events queue) is one invocation of the handler, with
  the event JSON exactly as S3 delivered it and a LambdaContext-shaped object;
- a handler that raises is retried twice (``max_attempts`` = 3 invocations in all), after
  increasing delays, as Lambda does; then the event goes to the on-failure queue in Lambda's
  destination record format, and the runner goes on;
- the attempt number is the message's receive count and a retry is a visibility change, so
  retries never block other events and survive a restart of the runner.

``s3:TestEvent`` messages, which S3 sends only to queue destinations when a notification is
configured, are dropped: Lambda never sees them.

Run as ``python -m infra.local.lambda_runner`` with the handler's own environment (BUCKET,
QUEUE_URL, ...) plus the runner's settings below, so the handler runs in its own process
with its own module-level caches, as in a Lambda container.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import json_logs

Handler = Callable[[dict, Any], Any]

# Not __name__: run as `python -m infra.local.lambda_runner` this module is "__main__".
logger = logging.getLogger("infra.local.lambda_runner")


class RunnerConfigError(ValueError):
    """A required runner setting is missing or malformed."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise RunnerConfigError(f"environment variable {name} is required")
    return value


@dataclass(frozen=True)
class RunnerSettings:
    events_queue_url: str  # LAMBDA_EVENTS_QUEUE_URL
    on_failure_queue_url: str  # LAMBDA_ON_FAILURE_QUEUE_URL
    handler: str = "lambda_trigger.app.handler"  # LAMBDA_HANDLER, module.attribute
    function_name: str = "chunk-trigger"  # LAMBDA_FUNCTION_NAME
    max_attempts: int = 3  # LAMBDA_MAX_ATTEMPTS: Lambda's async default, 1 + 2 retries
    # LAMBDA_RETRY_DELAYS: seconds before retry 1, 2, ... (Lambda waits ~1 and ~2 minutes;
    # locally the same shape, shorter).
    retry_delays: tuple[int, ...] = (1, 2)
    wait_time_seconds: int = 20  # LAMBDA_WAIT_TIME_SECONDS: the events queue long poll
    timeout_seconds: int = 60  # LAMBDA_TIMEOUT_SECONDS: reported by get_remaining_time_in_millis
    region: str = field(default="us-east-1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunnerSettings:
        env = os.environ if env is None else env
        try:
            delays = tuple(int(d) for d in env.get("LAMBDA_RETRY_DELAYS", "1,2").split(","))
            return cls(
                events_queue_url=_required(env, "LAMBDA_EVENTS_QUEUE_URL"),
                on_failure_queue_url=_required(env, "LAMBDA_ON_FAILURE_QUEUE_URL"),
                handler=env.get("LAMBDA_HANDLER") or cls.handler,
                function_name=env.get("LAMBDA_FUNCTION_NAME") or cls.function_name,
                max_attempts=int(env.get("LAMBDA_MAX_ATTEMPTS") or cls.max_attempts),
                retry_delays=delays,
                wait_time_seconds=int(env.get("LAMBDA_WAIT_TIME_SECONDS") or 20),
                timeout_seconds=int(env.get("LAMBDA_TIMEOUT_SECONDS") or 60),
                region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            )
        except ValueError as exc:
            if isinstance(exc, RunnerConfigError):
                raise
            raise RunnerConfigError(f"bad runner setting: {exc}") from exc

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:123456789012:function:{self.function_name}"


@dataclass
class LocalLambdaContext:
    """The attributes Powertools and handlers read from a real LambdaContext."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str
    deadline: float  # time.monotonic() when the invocation would time out
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128
    log_group_name: str = ""
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Retry:
    delay_seconds: int


@dataclass(frozen=True)
class GiveUp:
    pass


def after_failure(attempt: int, settings: RunnerSettings) -> Retry | GiveUp:
    """What Lambda does after invocation number ``attempt`` (1-based) raised."""
    if attempt >= settings.max_attempts:
        return GiveUp()
    delays = settings.retry_delays or (0,)
    return Retry(delays[min(attempt - 1, len(delays) - 1)])


def is_test_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("Event") == "s3:TestEvent"


def failure_record(event: dict, settings: RunnerSettings, request_id: str, attempts: int,
                   error: BaseException | None, condition: str) -> dict[str, Any]:
    """Lambda's on-failure destination record for an asynchronous invocation."""
    response: dict[str, Any] = {}
    if error is not None:
        response = {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_exception(error)[-5:],
        }
    return {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{settings.function_arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                            "functionError": "Unhandled"},
        "responsePayload": response,
    }


def invoke(handler: Handler, event: dict, settings: RunnerSettings,
           request_id: str) -> BaseException | None:
    """One invocation; the error it raised, or None."""
    context = LocalLambdaContext(
        function_name=settings.function_name,
        invoked_function_arn=settings.function_arn,
        aws_request_id=request_id,
        deadline=time.monotonic() + settings.timeout_seconds,
        log_group_name=f"/aws/lambda/{settings.function_name}",
    )
    try:
        handler(event, context)
    except Exception as exc:  # a function error, as Lambda sees it: any exception
        return exc
    return None


def process_message(sqs: Any, settings: RunnerSettings, handler: Handler,
                    message: dict) -> str:
    """Invoke the handler for one events-queue message; returns the outcome's name."""
    receipt = message["ReceiptHandle"]
    attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
    # The SQS message id is stable across retries, like Lambda's request id for one event.
    request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, message["MessageId"]))
    try:
        event = json.loads(message["Body"])
    except json.JSONDecodeError as exc:
        logger.warning("event_unreadable",
                       extra={"message_id": message["MessageId"], "error": str(exc)})
        sqs.delete_message(QueueUrl=settings.events_queue_url, ReceiptHandle=receipt)
        return "unreadable"
    if is_test_event(event):
        sqs.delete_message(QueueUrl=settings.events_queue_url, ReceiptHandle=receipt)
        logger.info("test_event_dropped", extra={"bucket": event.get("Bucket")})
        return "test_event"

    keys = [unquote_plus(r.get("s3", {}).get("object", {}).get("key", ""))
            for r in event.get("Records", [])]
    if attempt > settings.max_attempts:
        # Invocations already used up (the runner died mid-retry): straight to on-failure.
        error, outcome = None, GiveUp()
    else:
        started = time.monotonic()
        error = invoke(handler, event, settings, request_id)
        if error is None:
            sqs.delete_message(QueueUrl=settings.events_queue_url, ReceiptHandle=receipt)
            logger.info("invoked", extra={
                "request_id": request_id, "attempt": attempt, "keys": keys,
                "duration_ms": round((time.monotonic() - started) * 1000, 1)})
            return "ok"
        outcome = after_failure(attempt, settings)
    if isinstance(outcome, Retry):
        sqs.change_message_visibility(QueueUrl=settings.events_queue_url,
                                      ReceiptHandle=receipt,
                                      VisibilityTimeout=outcome.delay_seconds)
        logger.warning("invoke_failed_will_retry", extra={
            "request_id": request_id, "attempt": attempt, "keys": keys,
            "retry_in_s": outcome.delay_seconds, "error": repr(error)})
        return "retry"
    record = failure_record(event, settings, request_id, min(attempt, settings.max_attempts),
                            error, "RetriesExhausted")
    sqs.send_message(QueueUrl=settings.on_failure_queue_url, MessageBody=json.dumps(record))
    sqs.delete_message(QueueUrl=settings.events_queue_url, ReceiptHandle=receipt)
    logger.error("invoke_failed_gave_up", extra={
        "request_id": request_id, "attempts": attempt, "keys": keys, "error": repr(error)})
    return "failed"


def run(sqs: Any, settings: RunnerSettings, handler: Handler, stop: threading.Event,
        busy: threading.Lock | None = None) -> None:
    """Long-poll the events queue until ``stop`` is set.

    Messages are handled while holding ``busy``, so a caller that takes the lock after
    setting ``stop`` knows no invocation is half done.
    """
    busy = busy or threading.Lock()
    logger.info("runner_started", extra={"handler": settings.handler,
                                         "events_queue": settings.events_queue_url})
    while not stop.is_set():
        try:
            response = sqs.receive_message(
                QueueUrl=settings.events_queue_url, MaxNumberOfMessages=10,
                WaitTimeSeconds=settings.wait_time_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            with busy:
                for message in response.get("Messages", []):
                    process_message(sqs, settings, handler, message)
        except Exception:  # the outermost loop: log with context and go on
            logger.exception("runner_error")
            stop.wait(1.0)


def load_handler(path: str) -> Handler:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise RunnerConfigError(f"LAMBDA_HANDLER={path!r} is not module.attribute")
    return getattr(importlib.import_module(module_name), attribute)


def main() -> int:
    import boto3

    # Before the handler is imported: Powertools' Logger then keeps its records off this
    # handler (it filters the root's handlers), so no line is written twice.
    json_logs.configure(logger.name)
    settings = RunnerSettings.from_env()
    handler = load_handler(settings.handler)
    stop = threading.Event()
    busy = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sqs = boto3.client("sqs")
    poller = threading.Thread(target=run, args=(sqs, settings, handler, stop, busy),
                              daemon=True)
    poller.start()
    stop.wait()
    # Finish the invocation in progress, but do not sit out a 20 s long poll: a message
    # received and not yet handled becomes visible again, as with a Lambda poller.
    with busy:
        logger.info("runner_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
