# The Spark worker (Mechanism Y) for the SAM template's ECS service.
#   make image                      # docker when a Docker engine runs, else buildah (infra/image.py)
#   docker run --rm -e BUCKET=... -e QUEUE_URL=... -e DATABASE_URL=... txn-worker
# Configuration is by environment only (docs/configuration.md); on ECS the task definition
# sets BUCKET, QUEUE_URL, ... and injects DB_SECRET from Secrets Manager.
#
# Everything the build downloads is pinned: the base image by digest, the Debian packages by
# version, every Python package by version and hash (requirements/*.txt, the lock the tests'
# venv installs too), the RDS CA bundle by SHA-256. Each pin is a build argument, so a mirror,
# a stand-in base (the image test's, built from Debian packages) or a newer pin is one
# `--build-arg` away. Builds with docker (BuildKit) and with Debian bookworm's buildah 1.28.

# Python 3.11 on Debian bookworm: the Python the lock is resolved for, and the laptop's.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
FROM ${BASE_IMAGE}

# Spark 4 needs Java 17+; procps gives Spark's launch scripts `ps`. Debian keeps only the
# newest version of a package in a suite: when a security update replaces one of these, the
# build stops naming it, and the pin is bumped (`apt-cache policy NAME` in the base).
ARG JRE_VERSION=17.0.21.1+2-1~deb12u1
ARG PROCPS_VERSION=2:4.0.2-3
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "openjdk-17-jre-headless=${JRE_VERSION}" "procps=${PROCPS_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app \
    SPARK_MASTER=local[2]

# The locked dependencies first: this layer is rebuilt only when the lock changes. The build
# backend is locked too (pyspark is published as a source archive only), so nothing is
# fetched unpinned for a build environment. PIP_CERT: a CA bundle for pip, when the network
# between the builder and PyPI needs one (infra/image.py mounts the machine's).
ARG PIP_CERT
COPY requirements/build.txt requirements/worker.txt /opt/requirements/
RUN python3 -m venv /opt/venv \
    && pip install --require-hashes --no-deps -r /opt/requirements/build.txt \
    && pip install --require-hashes --no-deps --no-build-isolation --use-pep517 --no-compile \
        -r /opt/requirements/worker.txt

# The worker imports the contract it shares with the producer and the trigger (chunk_contract)
# and the JSON log setup; nothing of the trigger's Lambda package.
WORKDIR /app
COPY chunk_contract /app/chunk_contract
COPY json_logs /app/json_logs
COPY spark_detector /app/spark_detector
# spark-submit runs a file: `spark-submit [--master ...] /app/spark_submit_main.py run`
COPY infra/spark_submit_main.py /app/spark_submit_main.py
# The JVM class the driver hands each batch's chunks to in local mode
# (spark_detector/spark/speedups/driver_chunks.py), compiled against the image's Spark; then Spark's classes
# pre-parsed for the JVM (class-data sharing, spark_detector/spark/speedups/class_archive.py): each start of
# the worker maps them, ~2 s faster. The archive records the class path, so the jar comes
# first. Built with the image's own Java and Spark, which the JVM checks at each start (a
# mismatched archive is ignored, never fatal). SPARK_LOCAL_IP: a build container's host name
# need not resolve (buildah's does not), and Spark looks its own address up at start.
RUN export SPARK_LOCAL_IP=127.0.0.1 \
    && python -m spark_detector.spark.speedups.driver_chunks && python -m spark_detector.spark.speedups.class_archive

# The Amazon RDS certificate bundle: a URL built from DB_SECRET verifies the server's
# certificate and host name against it (sslmode=verify-full, spark_detector/config.py).
# Late in the build, so a new bundle rebuilds none of the layers above. Checked by its SHA-256
# in a step of its own, as `ADD --checksum` would: buildah 1.28 (Debian bookworm) does not know
# that flag. A bundle that does not match stops the build.
ARG RDS_CA_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ARG RDS_CA_SHA256=e5bb2084ccf45087bda1c9bffdea0eb15ee67f0b91646106e466714f9de3c7e3
ADD --chmod=644 ${RDS_CA_URL} /opt/rds/global-bundle.pem
RUN echo "${RDS_CA_SHA256}  /opt/rds/global-bundle.pem" | sha256sum --check --strict

RUN useradd --system --uid 10001 --home-dir /home/worker --create-home worker
USER 10001

# CMD, not ENTRYPOINT: the ECS task definition's Command ([python, -m, spark_detector, run])
# replaces CMD, so both start the same process. Python is PID 1 and handles SIGTERM itself:
# the worker finishes its batch and exits within ECS's StopTimeout.
CMD ["python", "-m", "spark_detector", "run"]
