"""The speed-ups' one interface to the rest of ``spark``: what they add to the driver JVM's
launch (``launch_options``), and where their files are.

- The driver-chunks jar (``driver_chunks``), on the driver's class path: in local mode the
  driver hands a batch's chunks to a query planned once. The chunk source is picked once per
  session (``spark.job.driver_chunks``): that query where the jar is loaded, else a DataFrame
  per batch (the same results, slower).
- The class archive (``class_archive``), mapped by the JVM: ~2 s off Spark's start.

Each is used only where its file exists; a variable set empty switches it off
(``SPARK_DRIVER_CHUNKS_JAR=`` / ``SPARK_CLASS_ARCHIVE=``), which the suite does once to run
the worker without them. Nothing here imports the session or the job: the two build commands
(``python -m spark_detector.spark.speedups.driver_chunks`` / ``.class_archive``) do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

JAR_ENV = "SPARK_DRIVER_CHUNKS_JAR"
ARCHIVE_ENV = "SPARK_CLASS_ARCHIVE"
# Beside the installed pyspark they were built from: a virtual environment or the image's.
DEFAULT_JAR = Path(sys.prefix) / "share" / "spark_detector" / "driver-chunks.jar"
DEFAULT_ARCHIVE = Path(sys.prefix) / "share" / "spark_detector" / "spark-classes.jsa"


def optional_path(env: Mapping[str, str], name: str, default: Path) -> Path | None:
    """The file the variable ``name`` names: ``default`` when it is unset, None (no file)
    when it is set empty."""
    value = env.get(name)
    if value is None:
        return default
    return Path(value) if value.strip() else None


def build_target(argv: list[str], name: str, default: Path | None) -> Path | None:
    """Where a build command writes: its argument, else ``default`` (the file the variable
    ``name`` names); None, said on stderr, when the variable is set empty."""
    if argv:
        return Path(argv[0])
    if default is None:
        print(f"{name} is set empty: nothing to build", file=sys.stderr)
    return default


def build_command_target(argv: list[str] | None, module: str, doc: str, what: str, name: str,
                         default: Path | None) -> Path | None:
    """``python -m MODULE [PATH]`` of a build command (with ``--help``): ``build_target``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}",
                                     description=doc.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("path", nargs="?", help=f"where to write {what} (default: ${name}, "
                        "else under this Python's prefix)")
    args = parser.parse_args(argv)
    return build_target([args.path] if args.path else [], name, default)


def jar_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the jar is: ``SPARK_DRIVER_CHUNKS_JAR``, else ``DEFAULT_JAR``; None when the
    variable is set empty (no jar)."""
    return optional_path(environ, JAR_ENV, DEFAULT_JAR)


def usable_jar(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The jar to put on the driver's class path, if it exists."""
    path = jar_path(environ)
    return path if path is not None and path.is_file() else None


def archive_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the archive is: ``SPARK_CLASS_ARCHIVE``, else ``DEFAULT_ARCHIVE``; None when the
    variable is set empty (no archive)."""
    return optional_path(environ, ARCHIVE_ENV, DEFAULT_ARCHIVE)


def splits(path: Path) -> bool:
    """Whether ``path`` would break up as a JVM option: Spark splits them on whitespace."""
    return any(c.isspace() for c in str(path))


def usable_archive(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The archive to start the JVM with: it exists, and its path has no whitespace."""
    path = archive_path(environ)
    if path is None or not path.is_file() or splits(path):
        return None
    return path


def launch_options(environ: Mapping[str, str],
                   archive_options: str | None = None) -> tuple[Path | None, str]:
    """What the speed-ups add to the driver JVM's launch: the jar for its class path (None:
    no jar), and the JVM option mapping the class archive ('': none). ``archive_options``
    replaces that option (the archive's own build writes one instead)."""
    if archive_options is None:
        archive = usable_archive(environ)
        archive_options = "" if archive is None else f"-XX:SharedArchiveFile={archive}"
    return usable_jar(environ), archive_options
