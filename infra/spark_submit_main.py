"""The worker's entry point for ``spark-submit``: the same ``main`` as ``python -m spark_detector``.

    spark-submit --master spark://HOST:7077 --conf spark.pyspark.python=/opt/exec-env/bin/python \
        infra/spark_submit_main.py run --drain

spark-submit runs a file, not a module; this file lives outside the package because running a
file puts its folder first on ``sys.path``, where a module of the package could shadow a
library of the same name. The driver imports ``spark_detector`` from its environment or from a
``--py-files`` zip; the worker ships it to the executors itself (docs/spark-cluster.md).
"""

import sys

from spark_detector.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
