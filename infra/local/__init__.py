"""The local stack: the pipeline's AWS resources in a moto server, a local Lambda runner that
feeds S3 events to the real trigger handler, and PostgreSQL (embedded or ``DATABASE_URL``).

``LocalServices.start(...)`` (in ``infra.local.stack``) is the one entry point used by
``make demo``, ``make up`` / ``make down`` and the end-to-end test.
"""
