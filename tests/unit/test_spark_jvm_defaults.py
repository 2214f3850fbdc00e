"""The worker's JVM defaults are passed to the JVM's launch only where nobody else decides."""

from pathlib import Path

from spark_detector.spark.session import (
    CLASS_PATH,
    JAVA_OPTIONS,
    WORKER_JVM_DEFAULTS,
    jvm_defaults,
    spark_defaults_keys,
)
from spark_detector.spark.speedups.class_archive import build_archive
from spark_detector.spark.speedups.launch import (
    ARCHIVE_ENV,
    DEFAULT_ARCHIVE,
    DEFAULT_JAR,
    JAR_ENV,
    archive_path,
    build_target,
    jar_path,
    optional_path,
)

NO_JAR = {JAR_ENV: ""}
NO_ARCHIVE = {ARCHIVE_ENV: "", **NO_JAR}


def test_a_plain_start_gets_every_jvm_default():
    assert jvm_defaults(NO_ARCHIVE, set()) == dict(WORKER_JVM_DEFAULTS)
    # a JVM out of heap exits: the worker notices, rather than waiting on a job that died
    assert "-XX:+ExitOnOutOfMemoryError" in WORKER_JVM_DEFAULTS[JAVA_OPTIONS].split()


def test_the_class_archive_is_mapped_when_it_exists(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    assert jvm_defaults({ARCHIVE_ENV: str(archive), **NO_JAR}, set()) == dict(WORKER_JVM_DEFAULTS)
    archive.write_bytes(b"archive")
    options = jvm_defaults({ARCHIVE_ENV: str(archive), **NO_JAR}, set())[JAVA_OPTIONS]
    assert options == f"{WORKER_JVM_DEFAULTS[JAVA_OPTIONS]} -XX:SharedArchiveFile={archive}"


def test_the_driver_chunks_jar_goes_on_the_class_path_when_it_exists(tmp_path):
    jar = tmp_path / "driver-chunks.jar"
    environ = {ARCHIVE_ENV: "", JAR_ENV: str(jar)}
    assert jvm_defaults(environ, set()) == dict(WORKER_JVM_DEFAULTS)
    jar.write_bytes(b"jar")
    assert jvm_defaults(environ, set()) == {**WORKER_JVM_DEFAULTS, CLASS_PATH: str(jar)}
    assert CLASS_PATH not in jvm_defaults(environ, {CLASS_PATH})  # spark-defaults.conf sets it
    assert jar_path({JAR_ENV: " "}) is None
    assert jar_path({}) == DEFAULT_JAR


def test_the_archive_build_writes_one_instead_of_mapping_it(tmp_path):
    archive = tmp_path / "spark-classes.jsa"
    archive.write_bytes(b"archive")
    options = jvm_defaults({ARCHIVE_ENV: str(archive), **NO_JAR}, set(),
                           "-XX:ArchiveClassesAtExit=x")
    assert options[JAVA_OPTIONS] == (
        f"{WORKER_JVM_DEFAULTS[JAVA_OPTIONS]} -XX:ArchiveClassesAtExit=x")


def test_no_archive_is_built_where_the_worker_would_not_map_it(tmp_path, monkeypatch):
    """Its JVM options left to spark-defaults.conf or PYSPARK_SUBMIT_ARGS, or a path with
    whitespace: nothing to build (and no JVM started: this returns before any)."""
    (tmp_path / "spark-defaults.conf").write_text(f"{JAVA_OPTIONS} -XX:+UseG1GC\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert build_archive(tmp_path / "a.jsa") is None
    monkeypatch.delenv("SPARK_CONF_DIR")
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--driver-memory 1g pyspark-shell")
    assert build_archive(tmp_path / "a.jsa") is None
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS")
    assert build_archive(tmp_path / "a b.jsa") is None  # whitespace: never mapped
    assert not list(tmp_path.glob("*.jsa"))


def test_no_class_archive_when_its_path_has_whitespace_or_the_variable_is_empty(tmp_path):
    spaced = tmp_path / "a b.jsa"  # Spark splits the JVM options on whitespace
    spaced.write_bytes(b"archive")
    assert jvm_defaults({ARCHIVE_ENV: str(spaced), **NO_JAR}, set()) == dict(WORKER_JVM_DEFAULTS)
    assert archive_path({ARCHIVE_ENV: " "}) is None
    assert archive_path({}) == DEFAULT_ARCHIVE


def test_spark_defaults_conf_keys_are_left_to_it():
    assert jvm_defaults(NO_ARCHIVE, {"spark.driver.memory"}) == {
        k: v for k, v in WORKER_JVM_DEFAULTS.items() if k != "spark.driver.memory"}


def test_spark_submit_and_pyspark_submit_args_decide_alone():
    assert jvm_defaults({"PYSPARK_GATEWAY_PORT": "4242"}, set()) == {}
    assert jvm_defaults({"PYSPARK_SUBMIT_ARGS": "--driver-memory 2g pyspark-shell"}, set()) == {}


def test_spark_defaults_keys_reads_both_separators_and_skips_comments(tmp_path):
    (tmp_path / "spark-defaults.conf").write_text(
        "# spark.driver.memory 9g\nspark.driver.memory 1g\n\nspark.executor.cores=2\n")
    assert spark_defaults_keys({"SPARK_CONF_DIR": str(tmp_path)}) == {
        "spark.driver.memory", "spark.executor.cores"}
    assert spark_defaults_keys({"SPARK_CONF_DIR": str(tmp_path / "none")}) == set()


def test_an_optional_file_is_the_default_unset_and_none_set_empty(capsys):
    default = Path("/opt/x.jar")
    assert optional_path({}, "X", default) == default
    assert optional_path({"X": "/tmp/y.jar"}, "X", default) == Path("/tmp/y.jar")
    assert optional_path({"X": " "}, "X", default) is None
    assert build_target(["/tmp/z.jar"], "X", None) == Path("/tmp/z.jar")
    assert build_target([], "X", default) == default
    assert build_target([], "X", None) is None
    assert "X is set empty: nothing to build" in capsys.readouterr().err
