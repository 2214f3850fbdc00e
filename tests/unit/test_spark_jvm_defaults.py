"""The worker's JVM defaults are passed to the JVM's launch only where nobody else decides."""

from spark_detector.spark_session import WORKER_JVM_DEFAULTS, jvm_defaults, spark_defaults_keys


def test_a_plain_start_gets_every_jvm_default():
    assert jvm_defaults({}, set()) == dict(WORKER_JVM_DEFAULTS)


def test_spark_defaults_conf_keys_are_left_to_it():
    assert jvm_defaults({}, {"spark.driver.memory"}) == {
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
