"""What the producer, the trigger and the worker agree on, written once.

- ``layout``: where things live in the data bucket, and how a chunk key is named (and read
  back: which keys carry a producer sequence number);
- ``listing``: the chunks under the chunk prefix as an S3 listing shows them;
- ``message``: the chunk message (the SQS body), versioned;
- ``sqs_batch``: sending chunk messages with SendMessageBatch (the trigger and the backfill),
  and the queue's DLQ;
- ``settings``: the environment reader of every component's settings (unset or empty is the
  default).

Standard library and botocore only: the Lambda package and the worker image both ship it.
"""
