# The README's commands. Each target creates .venv on first use and installs the locked
# dependencies (requirements/dev.txt, with hashes: the worker image installs the same pins from
# requirements/worker.txt) and the project, so a fresh clone needs only Python 3.11 and Java 17+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Spark's classes pre-parsed for the worker's JVM (spark_detector/class_archive.py): ~2 s off
# each Spark start. Built once per virtual environment; Java must be there first.
CLASS_ARCHIVE := $(VENV)/share/spark_detector/spark-classes.jsa
# The JVM class the driver hands each batch's chunks to (spark_detector/driver_chunks.py),
# compiled with the Java compiler in Spark's jars. Built before the archive, which records
# the class path it was built with.
DRIVER_CHUNKS_JAR := $(VENV)/share/spark_detector/driver-chunks.jar
ARGS   ?=

LOCKS  := requirements/build.txt requirements/worker.txt requirements/dev.txt
IMAGE  ?= txn-worker:latest
IMAGE_ARGS ?=

.PHONY: test lint demo up down bench bench-state-size bench-growing clean check-java build-TriggerFunction lock audit image push image-test

# pip installs exactly the lock (--require-hashes, --no-deps); the build backend is locked
# too and used without build isolation, so nothing unpinned is fetched to build pyspark.
$(STAMP): pyproject.toml $(LOCKS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, the Python of the lock, the image and the Lambda (found " + sys.version.split()[0] + "): make PYTHON=python3.11 ...")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/build.txt
	$(PY) -m pip install --quiet --require-hashes --no-deps --no-build-isolation --use-pep517 -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Re-resolve the lock files after a change to pyproject.toml's dependencies (or to take new
# releases): the worker's first, then the dev venv's constrained to it, so both hold the same
# version of every package they share (tests/unit/test_lock_files.py checks it).
UV_COMPILE := $(VENV)/bin/uv pip compile --quiet --python-version 3.11 --generate-hashes
lock: $(STAMP)
	$(UV_COMPILE) requirements/build.in -o requirements/build.txt
	$(UV_COMPILE) pyproject.toml -o requirements/worker.txt
	$(UV_COMPILE) --extra trigger --extra local --extra dev -c requirements/worker.txt pyproject.toml -o requirements/dev.txt

# Known vulnerabilities in the locked packages. pip-audit asks PyPI's and OSV's vulnerability
# databases, so it runs where they are reachable (the GitHub workflow does).
AUDIT_VENV := .venv-audit
audit:
	@test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install --quiet 'pip-audit==2.10.1'; }
	$(AUDIT_VENV)/bin/pip-audit --strict --disable-pip --require-hashes -r requirements/worker.txt
	$(AUDIT_VENV)/bin/pip-audit --strict --disable-pip --require-hashes -r requirements/dev.txt

# The worker image (infra/worker.Dockerfile) as $(IMAGE): docker where a Docker engine runs,
# else buildah (no daemon; `python -m infra.image tools` installs it as root). Build arguments:
# make image IMAGE_ARGS="--build-arg BASE_IMAGE=..." (docs/deploy.md).
image:
	$(PYTHON) -m infra.image build --tag $(IMAGE) $(IMAGE_ARGS)

# The image, pushed to the stack's ECR repository under the commit's tag (docs/deploy.md):
#   make push REPOSITORY=<the stack's WorkerRepositoryUri output>
push: image $(STAMP)
	@test -n "$(REPOSITORY)" || { echo "REPOSITORY is not set: the stack's WorkerRepositoryUri output"; exit 2; }
	$(PY) -m infra.image push --repository $(REPOSITORY) --image $(IMAGE)

# The image built from a stand-in base (Debian packages, cached) and run against moto and
# PostgreSQL (tests/image/). Needs root for buildah and debootstrap, which it installs.
image-test: $(STAMP)
	$(PYTHON) -m infra.image tools
	$(PY) -m pytest -m image tests/image $(ARGS)

check-java:
	@$(PY) -m infra.java_check

$(DRIVER_CHUNKS_JAR): $(STAMP) spark_detector/jvm/DriverChunks.java | check-java
	$(PY) -m spark_detector.driver_chunks

$(CLASS_ARCHIVE): $(STAMP) $(DRIVER_CHUNKS_JAR) | check-java
	$(PY) -m spark_detector.class_archive

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) check-java lint $(CLASS_ARCHIVE)
	$(PY) -m pytest $(ARGS)

# The whole pipeline locally, with a live view: `make demo ARGS="--rows 60000 --interval 0.5"`.
demo: $(STAMP) check-java $(CLASS_ARCHIVE)
	@$(PY) -m infra.local.demo $(ARGS)

# The local stack (moto S3/SQS + Lambda runner + PostgreSQL) in the background, for manual use.
up: $(STAMP)
	@$(PY) -m infra.local up $(ARGS)

down: $(STAMP)
	@$(PY) -m infra.local down $(ARGS)

# The performance targets (docs/performance.md) on the local stack, with plots: `make bench` (the data set
# streamed 5 times: 3 backlog drains, 300 s at 1 chunk/s, recovery, peer, baseline; ~20-25 min) or
# `make bench ARGS="--quick"` (a few minutes); `python -m bench --help` lists the options.
# Output: bench/results/<UTC timestamp>/.
bench: $(STAMP) check-java $(CLASS_ARCHIVE)
	@$(PY) -m bench $(ARGS)

# The third wave (docs/performance.md): (a) apply_chunk against the state's size (~5 min), and
# (b) 30 minutes at 1 chunk/s on a stream growing to 2,000,000 customers then (c) a backlog
# drain at that state (~45 min). ARGS as for the modules (`python -m bench.state_size --help`).
bench-state-size: $(STAMP)
	@$(PY) -m bench.state_size $(ARGS)

bench-growing: $(STAMP) check-java $(CLASS_ARCHIVE)
	@$(PY) -m bench.growing $(ARGS)

# Called by `sam build` (template.yaml: TriggerFunction, BuildMethod: makefile) with
# ARTIFACTS_DIR set. The package is lambda_trigger/ and the shared chunk_contract/: boto3 is in
# the Lambda runtime and Powertools comes from its public layer, so nothing of the worker
# (Spark, psycopg2) ships.
LAMBDA_PACKAGES := lambda_trigger chunk_contract
build-TriggerFunction:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)"; exit 1; }
	for package in $(LAMBDA_PACKAGES); do \
		mkdir -p "$(ARTIFACTS_DIR)/$$package" && cp $$package/*.py "$(ARTIFACTS_DIR)/$$package/"; \
	done

clean:
	rm -rf $(VENV) $(AUDIT_VENV) .pytest_cache .ruff_cache .hypothesis
