"""Which interpreter Spark's Python workers run (issue: PATH's python3 is not the venv's)."""

from spark_detector.spark.session import python_for_workers

DRIVER = "/opt/app/.venv/bin/python"


def test_local_mode_uses_the_drivers_own_interpreter():
    assert python_for_workers("local[2]", {}, None, DRIVER) == DRIVER
    assert python_for_workers("local", {}, None, DRIVER) == DRIVER


def test_pyspark_python_in_the_environment_is_left_to_spark():
    assert python_for_workers("local[2]", {"PYSPARK_PYTHON": "/usr/bin/python3"}, None,
                              DRIVER) is None


def test_spark_pyspark_python_setting_wins_everywhere():
    conf = "/opt/executor-env/bin/python"
    assert python_for_workers("local[2]", {}, conf, DRIVER) == conf
    assert python_for_workers("spark://h:7077", {"PYSPARK_PYTHON": "x"}, conf, DRIVER) == conf


def test_on_a_cluster_the_driver_path_is_never_imposed_on_executors():
    assert python_for_workers("spark://10.0.0.1:7077", {}, None, DRIVER) is None
    assert python_for_workers("yarn", {}, None, DRIVER) is None
    assert python_for_workers("k8s://https://api:443", {}, None, DRIVER) is None
