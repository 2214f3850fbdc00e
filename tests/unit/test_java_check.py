import pytest

from infra import java_check


@pytest.mark.parametrize("output, major", [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "21" 2023-09-19', 21),
    ("no version here", None),
])
def test_java_major_reads_old_and_new_version_strings(output, major):
    assert java_check.java_major(output) == major


def test_missing_java_fails_with_how_to_install(monkeypatch, capsys):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(java_check.shutil, "which", lambda _: None)
    assert java_check.main() == 1
    assert "Java not found" in capsys.readouterr().err


def test_a_java_home_without_java_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert java_check.main() == 1
    assert f"JAVA_HOME={tmp_path} has no bin/java" in capsys.readouterr().err
