"""How `make image` builds: the command for each engine, and the engine it picks."""

from __future__ import annotations

import argparse
import shutil

import pytest

from infra import image


def test_buildah_builds_with_layers_and_mounts_pips_ca_bundle_read_only(tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("certificates")
    command = image.build_command("buildah", "txn-worker:1", {"BASE_IMAGE": "base:1"},
                                  pip_cert=str(cert))
    assert command[:4] == ["buildah", "bud", "--layers", "--force-rm"]
    assert command[command.index("-v") + 1] == f"{cert}:{image.PIP_CERT_MOUNT}:ro"
    args = [command[i + 1] for i, word in enumerate(command) if word == "--build-arg"]
    assert args == ["BASE_IMAGE=base:1", f"PIP_CERT={image.PIP_CERT_MOUNT}"]
    assert command[-5:] == ["-f", "infra/worker.Dockerfile", "-t", "txn-worker:1", "."]


def test_docker_builds_for_the_tasks_platform_without_mounts():
    command = image.build_command("docker", "t:1", {}, pip_cert="/etc/ssl/ca.pem")
    assert command[:4] == ["docker", "build", "--platform", "linux/amd64"]
    assert "-v" not in command and "PIP_CERT" not in " ".join(command)


def test_a_docker_client_without_an_engine_builds_with_buildah(monkeypatch):
    monkeypatch.setattr(image, "docker_engine_runs", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert image.choose_engine() == "buildah"
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(image.ImageToolMissing, match="apt-get install buildah"):
        image.choose_engine()


def test_the_stand_in_base_is_tagged_by_its_recipe(monkeypatch):
    before = image.standin_key()
    monkeypatch.setattr(image, "STANDIN_PACKAGES", (*image.STANDIN_PACKAGES, "curl"))
    assert image.standin_key() != before


def test_a_push_copies_the_local_image_to_the_repository_tag():
    target = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/worker:abc"
    assert image.push_commands("buildah", "txn-worker:latest", target) == [
        ["buildah", "push", "txn-worker:latest", f"docker://{target}"]]
    assert image.push_commands("docker", "txn-worker:latest", target) == [
        ["docker", "tag", "txn-worker:latest", target], ["docker", "push", target]]


def test_build_arguments_must_be_name_equals_value():
    assert image.parse_build_args(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        image.parse_build_args(["JUSTANAME"])


def test_pip_in_the_build_uses_the_ca_bundle_this_machines_pip_uses(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("certificates")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\ncert = {bundle}\n")
    assert image.pip_cert_of({}, [str(tmp_path / "absent.conf"), str(config)]) == str(bundle)
    assert image.pip_cert_of({"PIP_CERT": str(bundle)}, []) == str(bundle)
    assert image.pip_cert_of({"PIP_CERT": str(tmp_path / "gone.pem")}, []) is None
