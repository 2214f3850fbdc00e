"""Fail fast, with a fix, when the Java runtime Spark needs is missing or too old."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

MIN_JAVA = 17
HOW_TO_INSTALL = (
    "Install a Java 17+ runtime, e.g. 'sudo apt-get install openjdk-17-jre-headless' "
    "(Debian/Ubuntu), 'brew install openjdk@17' (macOS), or set JAVA_HOME to one."
)


def java_major(version_output: str) -> int | None:
    """The major version in `java -version` output ('1.8.0_392' -> 8, '17.0.15' -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


def find_java() -> str | None:
    """The java Spark will run: $JAVA_HOME/bin/java when JAVA_HOME is set, else the PATH's."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def main() -> int:
    java = find_java()
    if java is None:
        where = f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java" if os.environ.get(
            "JAVA_HOME") else "no java on PATH"
        print(f"Java not found ({where}): Spark needs Java {MIN_JAVA}+. {HOW_TO_INSTALL}",
              file=sys.stderr)
        return 1
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    major = java_major(result.stderr + result.stdout)
    if major is None or major < MIN_JAVA:
        print(f"{java} is Java {major}: Spark needs Java {MIN_JAVA}+. {HOW_TO_INSTALL}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
