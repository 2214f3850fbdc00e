# The Spark worker (Mechanism Y) for the SAM template's ECS service.
#   docker build -f infra/worker.Dockerfile -t txn-worker .
#   docker run --rm -e BUCKET=... -e QUEUE_URL=... -e DATABASE_URL=... txn-worker
# Configuration is by environment only (README, "Configuration reference"); on ECS the
# task definition sets BUCKET, QUEUE_URL, ... and injects DB_SECRET from Secrets Manager.
FROM python:3.12-slim-bookworm

# Spark 4 needs Java 17+; procps gives Spark's launch scripts `ps`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    SPARK_MASTER=local[2]

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the pins change.
COPY infra/worker-requirements.txt /app/requirements.txt
RUN pip install --no-compile -r /app/requirements.txt

# The worker imports the shared chunk-message contract and the trigger's batch sender.
COPY lambda_trigger /app/lambda_trigger
COPY spark_detector /app/spark_detector
# ...and the chunk key contract, which the producer owns (spark_detector.ordering reads the
# sequence number from a chunk's name with it); nothing else of the producer.
COPY producer/__init__.py producer/chunks.py /app/producer/
# spark-submit runs a file: `spark-submit [--master ...] /app/spark_submit_main.py run`
COPY infra/spark_submit_main.py /app/spark_submit_main.py

RUN useradd --system --uid 10001 --home-dir /home/worker --create-home worker
USER 10001

# CMD, not ENTRYPOINT: the ECS task definition's Command ([python, -m, spark_detector, run])
# replaces CMD, so both start the same process. Python is PID 1 and handles SIGTERM itself:
# the worker finishes its batch and exits within ECS's StopTimeout.
CMD ["python", "-m", "spark_detector", "run"]
