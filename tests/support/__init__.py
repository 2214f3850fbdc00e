"""Helpers shared by the test modules (no tests here): the worker and the AWS stand-ins of
the integration tests, lock contention, the producer's inputs, replays, the image's recipe,
random streams for the engine, and the Lambda handlers the local runner imports."""
