# The Spark worker (Mechanism Y) for the SAM template's ECS service.
#   docker build -f infra/worker.Dockerfile -t txn-worker .
#   docker run --rm -e BUCKET=... -e QUEUE_URL=... -e DATABASE_URL=... txn-worker
# Configuration is by environment only (docs/configuration.md); on ECS the
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

# The Amazon RDS certificate bundle: a URL built from DB_SECRET verifies the server's
# certificate and host name against it (sslmode=verify-full, spark_detector/config.py).
ADD --chmod=644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /opt/rds/global-bundle.pem

WORKDIR /app
# Dependencies first: this layer is rebuilt only when the pins change.
COPY infra/worker-requirements.txt /app/requirements.txt
RUN pip install --no-compile -r /app/requirements.txt

# The worker imports the contract it shares with the producer and the trigger (chunk_contract)
# and the JSON log setup; nothing of the trigger's Lambda package.
COPY chunk_contract /app/chunk_contract
COPY json_logs /app/json_logs
COPY spark_detector /app/spark_detector
# spark-submit runs a file: `spark-submit [--master ...] /app/spark_submit_main.py run`
COPY infra/spark_submit_main.py /app/spark_submit_main.py
# The JVM class the driver hands each batch's chunks to in local mode
# (spark_detector/driver_chunks.py), compiled against the image's Spark; then Spark's classes
# pre-parsed for the JVM (class-data sharing, spark_detector/class_archive.py): each start of
# the worker maps them, ~2 s faster. The archive records the class path, so the jar comes
# first. Built with the image's own Java and Spark, which the JVM checks at each start (a
# mismatched archive is ignored, never fatal).
RUN python -m spark_detector.driver_chunks && python -m spark_detector.class_archive

RUN useradd --system --uid 10001 --home-dir /home/worker --create-home worker
USER 10001

# CMD, not ENTRYPOINT: the ECS task definition's Command ([python, -m, spark_detector, run])
# replaces CMD, so both start the same process. Python is PID 1 and handles SIGTERM itself:
# the worker finishes its batch and exits within ECS's StopTimeout.
CMD ["python", "-m", "spark_detector", "run"]
