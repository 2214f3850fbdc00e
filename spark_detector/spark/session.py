"""The worker's SparkSession: Spark's own settings first, the worker's defaults under them,
and the worker's code shipped to the executors.

Settings come from where Spark users put them: ``spark-submit --conf`` / ``--master`` and
``spark-defaults.conf`` (both also apply under ``python -m spark_detector``, whose session
is launched through spark-submit by PySpark). ``WORKER_SPARK_DEFAULTS`` fill in only what
nobody set. ``SPARK_MASTER``, when set, is a convenience that names the master, like
``--master``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

import spark_detector
from spark_detector.spark.speedups.launch import launch_options

logger = logging.getLogger(__name__)

# Tuned for micro-batches of 10,000-row chunks; each applies only when the key is unset.
WORKER_SPARK_DEFAULTS: Mapping[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.python.worker.reuse": "true",  # keeps each Python worker's S3 client between batches
    # Adaptive execution re-plans after each stage and runs each stage as its own job; on
    # batches this small that costs ~100-300 ms and gains nothing.
    "spark.sql.adaptive.enabled": "false",
}
# The driver JVM's own settings, which only count when the JVM starts. In local mode the
# executors live in it too; these keep its heap and footprint to what micro-batches of
# 10,000-row chunks need (measured RSS 1,058 -> 749 MiB with the same work): Spark's 1 GiB
# default heap and G1's regions grow the process to ~1.1-1.3 GiB. The chunk limits
# (config.DEFAULT_MAX_CHUNK_*) are sized to this heap. A JVM out of heap exits at once
# rather than going on with threads that died of it (a job that then never ends): the worker
# notices the exit and gives its messages back.
JAVA_OPTIONS = "spark.driver.extraJavaOptions"
EXIT_ON_OOM = "-XX:+ExitOnOutOfMemoryError"
WORKER_JVM_DEFAULTS: Mapping[str, str] = {
    "spark.driver.memory": "512m",
    JAVA_OPTIONS: f"-XX:+UseSerialGC {EXIT_ON_OOM}",
}
CLASS_PATH = "spark.driver.extraClassPath"
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"
PYFILES = "spark.submit.pyFiles"


def spark_defaults_keys(environ: Mapping[str, str]) -> set[str]:
    """The keys set in the spark-defaults.conf that spark-submit will read, if any."""
    conf_dir = environ.get("SPARK_CONF_DIR")
    if not conf_dir:
        from pyspark.find_spark_home import _find_spark_home

        conf_dir = os.path.join(_find_spark_home(), "conf")
    path = Path(conf_dir) / "spark-defaults.conf"
    if not path.is_file():
        return set()
    keys = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.add(line.replace("=", " ", 1).split(None, 1)[0])
    return keys


def jvm_defaults(environ: Mapping[str, str], defaults_keys: set[str],
                 archive_options: str | None = None) -> dict[str, str]:
    """The ``WORKER_JVM_DEFAULTS`` to pass to the JVM's launch: none when the JVM is not the
    worker's to launch (under spark-submit) or the user says how (PYSPARK_SUBMIT_ARGS), and
    none that spark-defaults.conf sets (a launch --conf would win over it). The JVM options
    map the class archive when there is one (``class_archive``: ~2 s off Spark's start);
    ``archive_options`` replaces that flag (the archive's own build writes one instead). The
    class path gets the driver chunks' jar when there is one (``driver_chunks``)."""
    if "PYSPARK_GATEWAY_PORT" in environ or environ.get("PYSPARK_SUBMIT_ARGS"):
        return {}
    defaults = dict(WORKER_JVM_DEFAULTS)
    jar, archive_options = launch_options(environ, archive_options)
    if jar is not None:
        defaults[CLASS_PATH] = str(jar)
    if archive_options:
        defaults[JAVA_OPTIONS] += f" {archive_options}"
    return {k: v for k, v in defaults.items() if k not in defaults_keys}


def spark_conf(launch: Mapping[str, str] | None = None) -> SparkConf:
    """Spark's configuration as spark-submit resolved it: spark-defaults, --conf, --master.

    Those reach the driver as JVM system properties, which ``SparkConf()`` reads only once
    the JVM gateway is up; starting it here is what ``SparkContext`` would do anyway, with
    the worker's JVM defaults where nobody set them (``launch``, only where this call starts
    the JVM: ``jvm_defaults`` unless the caller computed them).
    """
    if SparkContext._gateway is None:
        if launch is None:
            launch = jvm_defaults(os.environ, spark_defaults_keys(os.environ))
        SparkContext._ensure_initialized(
            conf=SparkConf(loadDefaults=False).setAll(list(launch.items())) if launch else None)
    return SparkConf()


def build_spark(master: str | None = None, app_name: str = "spark_detector") -> SparkSession:
    """The worker's SparkSession, with its code shipped to the executors.

    ``master`` (``SPARK_MASTER``) wins when given; otherwise Spark's own (``--master``,
    ``spark.master`` in spark-defaults, else spark-submit's default ``local[*]``).
    ``spark.sql.shuffle.partitions``, unless set by the user, follows the cluster's default
    parallelism batch by batch (``follow_parallelism``), not Spark's fixed 200.
    """
    conf = spark_conf()
    if master:
        conf.setMaster(master)
    if conf.get("spark.app.name", "pyspark-shell") == "pyspark-shell":  # PySpark's placeholder
        conf.setAppName(app_name)
    # PySpark's own launch turns the progress bar on as for its shell; the worker logs JSON
    # lines, which a progress bar on stderr would break up, so it is always off.
    conf.set("spark.ui.showConsoleProgress", "false")
    for key, value in WORKER_SPARK_DEFAULTS.items():
        conf.setIfMissing(key, value)
    user_partitions = conf.contains(SHUFFLE_PARTITIONS)
    session = SparkSession.builder.config(conf=conf).getOrCreate()
    context = session.sparkContext
    python = python_for_workers(context.master or "", os.environ,
                                context.getConf().get("spark.pyspark.python", None),
                                sys.executable)
    if python is not None:
        context.pythonExec = python  # read when each job's Python function is built
    if not user_partitions:
        follow_parallelism(session)
    ship_code(context)
    return session


def follow_parallelism(spark: SparkSession) -> None:
    """Shuffle partitions = the cluster's default parallelism (its executor cores) right now.

    On a cluster, executors register after the session starts, so the caller repeats this
    before each batch; setting a SQL option is one call to the JVM.
    """
    spark.conf.set(SHUFFLE_PARTITIONS, str(spark.sparkContext.defaultParallelism))


def user_set_shuffle_partitions(spark: SparkSession) -> bool:
    """Whether ``spark.sql.shuffle.partitions`` was set by spark-submit or spark-defaults."""
    return spark.sparkContext.getConf().contains(SHUFFLE_PARTITIONS)


def python_for_workers(master: str, environ: Mapping[str, str], conf_python: str | None,
                       driver_python: str) -> str | None:
    """The interpreter Spark's Python workers must run, or None to leave Spark's choice.

    PySpark starts its workers with ``$PYSPARK_PYTHON``, else the ``python3`` on PATH, which
    need not be the venv holding boto3. In local mode the workers run on this machine, so the
    driver's own interpreter is the right one. On a cluster the executors' Python is theirs to
    name (``spark.pyspark.python`` / ``PYSPARK_PYTHON``): a driver path may not exist there.
    ``spark.pyspark.python`` wins over the environment, as it does under ``spark-submit``.
    """
    if conf_python:
        return conf_python
    if environ.get("PYSPARK_PYTHON"):
        return None
    return driver_python if master.startswith("local") else None


def package_dir() -> Path:
    """Where the driver imported ``spark_detector`` from (a folder, or a path inside a zip)."""
    return Path(spark_detector.__file__).resolve().parent


def zip_package(destination: Path, source: Path | None = None) -> Path:
    """``spark_detector``'s modules as a zip for ``addPyFile`` / ``--py-files``.

    The whole package, not only the modules the executors import (``spark.fetch``, ``spark.job``,
    ``parsing`` and what they import): the rest is small and never imported there, so the
    executors need none of the driver's other packages (psycopg2, Powertools).
    """
    source = source or package_dir()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*.py")):
            archive.write(path, Path("spark_detector") / path.relative_to(source))
    return destination


def ship_code(context: SparkContext) -> Path | None:
    """Send ``spark_detector`` to the executors, unless spark-submit ``--py-files`` did.

    A driver that imported the package from a zip was started with ``--py-files``: Spark
    ships that zip itself. Otherwise the package is zipped (a few hundred ms) into a
    temporary folder and added with ``addPyFile``, which executors that join later receive
    too. Returns the zip shipped, or None.
    """
    source = package_dir()
    if not source.is_dir():
        logger.info("code shipped by spark-submit --py-files", extra={"package": str(source)})
        return None
    archive = zip_package(Path(tempfile.mkdtemp(prefix="spark_detector-")) / "spark_detector.zip",
                          source)
    context.addPyFile(str(archive))
    logger.info("code shipped with addPyFile", extra={"package": str(source),
                                                      "py_file": str(archive)})
    return archive
