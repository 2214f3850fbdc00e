"""Build the worker image (``infra/worker.Dockerfile``): with docker where a Docker engine
runs, otherwise with buildah, which needs no daemon (Debian's ``buildah`` package).

    python -m infra.image build [--tag txn-worker:latest] [--build-arg NAME=VALUE ...]
    python -m infra.image push --repository URI [--tag TAG]   # to ECR; TAG: the commit
    python -m infra.image standin-base      # the image test's base, from Debian packages
    python -m infra.image tools             # apt-get install buildah debootstrap where missing

``make image`` runs ``build``. The stand-in base is what the image test builds the image
from where the real base (``python:3.11-slim-bookworm``) cannot be pulled: Debian bookworm
made by ``debootstrap`` with Debian's Python 3.11, the same distribution and Python as the
real base. It is kept in buildah's image store under a tag naming a hash of its inputs, so
it is made once per machine (about 80-150 s) and reused until its recipe changes.

Only the standard library: ``make image`` needs no virtual environment.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "infra" / "worker.Dockerfile"
DEFAULT_TAG = "txn-worker:latest"
# Where pip's CA bundle is mounted in a buildah build: a path of its own, read-only. Mounting
# the machine's whole certificate folder over the base's would break apt-get in the build.
PIP_CERT_MOUNT = "/run/pip-ca-bundle.pem"

# The stand-in base: what debootstrap gets, and the apt sources the official Debian images
# carry (so the Dockerfile's pinned packages, security updates included, resolve alike).
STANDIN_SUITE = "bookworm"
STANDIN_MIRROR = "http://deb.debian.org/debian"
STANDIN_PACKAGES = ("python3", "python3-venv")
STANDIN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
STANDIN_REPOSITORY = "localhost/txn-worker-standin-base"


class ImageToolMissing(RuntimeError):
    """Neither a Docker engine nor buildah is there to build with."""


def docker_engine_runs() -> bool:
    """A docker client answers even without an engine; ``docker info`` needs the engine."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def choose_engine() -> str:
    if docker_engine_runs():
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise ImageToolMissing(
        "no Docker engine runs and buildah is not installed: start Docker, or "
        "'apt-get install buildah' (Debian/Ubuntu; as root, `python -m infra.image tools`)")


def buildah_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """chroot isolation: builds and runs as root without user namespaces or a daemon."""
    return {**environ, "BUILDAH_ISOLATION": environ.get("BUILDAH_ISOLATION", "chroot")}


def build_command(engine: str, tag: str, build_args: Mapping[str, str],
                  pip_cert: str | None = None) -> list[str]:
    """The command that builds the worker image from the repository's root.

    ``pip_cert``: a CA bundle on this machine that pip in the build needs to reach PyPI
    (buildah only: mounted read-only at ``PIP_CERT_MOUNT`` and named by ``PIP_CERT``).
    """
    args = dict(build_args)
    if engine == "docker":
        command = ["docker", "build", "--platform", "linux/amd64"]
    elif engine == "buildah":
        # --layers: reuse each step's layer while its inputs are unchanged, as docker does;
        # --force-rm: a failed build leaves no working container behind
        command = ["buildah", "bud", "--layers", "--force-rm"]
        if pip_cert:
            command += ["-v", f"{pip_cert}:{PIP_CERT_MOUNT}:ro"]
            args.setdefault("PIP_CERT", PIP_CERT_MOUNT)
    else:
        raise ValueError(f"unknown image engine {engine!r} (docker or buildah)")
    for name, value in sorted(args.items()):
        command += ["--build-arg", f"{name}={value}"]
    return [*command, "-f", str(DOCKERFILE.relative_to(REPO)), "-t", tag, "."]


# pip's configuration files, the ones that win first (user, then global: pip's order reversed)
PIP_CONFIG_FILES = ("~/.config/pip/pip.conf", "~/.pip/pip.conf", "/etc/pip.conf",
                    "/etc/xdg/pip/pip.conf")


def pip_cert_of(environ: Mapping[str, str] = os.environ,
                config_files: Sequence[str] = PIP_CONFIG_FILES) -> str | None:
    """The CA bundle this machine's pip uses to reach PyPI, so that pip in the build uses it
    too: ``PIP_CERT``, else ``cert`` in pip's configuration files; None when neither names a
    readable file (pip then trusts its own bundle)."""
    candidates = [environ.get("PIP_CERT", "")]
    for name in config_files:
        config = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            config.read(Path(name).expanduser())
            candidates.append(config.get("global", "cert", fallback=""))
    for cert in (c.strip() for c in candidates):
        if cert and Path(cert).is_file():
            return cert
    return None


def build(tag: str = DEFAULT_TAG, build_args: Mapping[str, str] | None = None,
          engine: str | None = None, pip_cert: str | None = None,
          log: Path | None = None) -> None:
    """Build the worker image as ``tag``; output to ``log`` (appended) or the terminal."""
    engine = engine or choose_engine()
    command = build_command(engine, tag, build_args or {}, pip_cert)
    env = buildah_env() if engine == "buildah" else dict(os.environ)
    if log is None:
        subprocess.run(command, cwd=REPO, env=env, check=True)
        return
    with log.open("ab") as out:
        subprocess.run(command, cwd=REPO, env=env, check=True, stdout=out,
                       stderr=subprocess.STDOUT)


def commit_tag() -> str:
    """The checked-out commit, the tag ``push`` gives an image: the repository's tags are
    immutable, so a tag names one build of one commit. Refused with uncommitted changes."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    if status.strip():
        raise ImageToolMissing("uncommitted changes: commit them, or give --tag")
    return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()


def push_commands(engine: str, image: str, target: str) -> list[list[str]]:
    """Copy the local ``image`` to ``target`` (``registry/repository:tag``)."""
    if engine == "docker":
        return [["docker", "tag", image, target], ["docker", "push", target]]
    return [["buildah", "push", image, f"docker://{target}"]]


def push(repository: str, tag: str, image: str = DEFAULT_TAG, engine: str | None = None
         ) -> str:
    """Log in to the ECR registry of ``repository`` (boto3's credentials) and push ``image``
    there as ``tag``; the pushed URI."""
    import base64

    import boto3

    engine = engine or choose_engine()
    registry = repository.split("/", 1)[0]
    region = registry.split(".")[3]  # <account>.dkr.ecr.<region>.amazonaws.com
    token = boto3.client("ecr", region_name=region).get_authorization_token()
    user, password = base64.b64decode(
        token["authorizationData"][0]["authorizationToken"]).decode().split(":", 1)
    env = buildah_env() if engine == "buildah" else dict(os.environ)
    subprocess.run([engine, "login", "--username", user, "--password-stdin", registry],
                   input=password.encode(), env=env, check=True, capture_output=True)
    target = f"{repository}:{tag}"
    for command in push_commands(engine, image, target):
        subprocess.run(command, env=env, check=True)
    return target


def standin_key() -> str:
    """A hash of everything the stand-in base is made from: a new recipe, a new tag."""
    recipe = "\n".join([STANDIN_SUITE, STANDIN_MIRROR, *STANDIN_PACKAGES, STANDIN_SOURCES])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def image_exists(tag: str) -> bool:
    probe = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True,
                           env=buildah_env(), check=False)
    return probe.returncode == 0


def standin_base(work_root: Path | None = None, log: Path | None = None) -> str:
    """The stand-in base's tag, made with debootstrap + buildah unless already stored."""
    tag = f"{STANDIN_REPOSITORY}:{standin_key()}"
    if image_exists(tag):
        return tag
    for tool in ("debootstrap", "buildah"):
        if shutil.which(tool) is None:
            raise ImageToolMissing(f"{tool} is not installed: `python -m infra.image tools` "
                                   "(as root) installs it")
    out = log.open("ab") if log is not None else None
    try:
        with tempfile.TemporaryDirectory(prefix="standin-base-", dir=work_root) as folder:
            rootfs = Path(folder) / "rootfs"
            subprocess.run(["debootstrap", "--variant=minbase",
                            "--include=" + ",".join(STANDIN_PACKAGES),
                            STANDIN_SUITE, str(rootfs), STANDIN_MIRROR],
                           check=True, stdout=out, stderr=subprocess.STDOUT)
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(STANDIN_SOURCES)
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (rootfs / leftover).glob("*"):
                    if path.is_file():
                        path.unlink()
            context = Path(folder) / "context"
            context.mkdir()
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(context / "rootfs.tar"), "."],
                           check=True)
            shutil.rmtree(rootfs)
            (context / "Containerfile").write_text(
                'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
            subprocess.run(["buildah", "bud", "-t", tag, str(context)], env=buildah_env(),
                           check=True, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if out is not None:
            out.close()
    return tag


# debootstrap checks Debian's release signatures with this keyring (Ubuntu lacks it).
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


def install_tools(tools: Sequence[str] = ("buildah", "debootstrap")) -> None:
    """``apt-get install`` the tools that are missing (root only), so CI on a fresh machine
    can build and run the image."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not DEBIAN_KEYRING.exists():
        missing.append("debian-archive-keyring")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageToolMissing(f"missing {', '.join(missing)}: install it (as root on "
                               f"Debian/Ubuntu: apt-get install {' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   env=env, check=True)


def parse_build_args(values: Sequence[str]) -> dict[str, str]:
    args = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--build-arg {value!r}: expected NAME=VALUE")
        args[name] = setting
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.image",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the worker image")
    build_cmd.add_argument("--tag", default=DEFAULT_TAG, help="image name (default %(default)s)")
    build_cmd.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                           help="a Dockerfile ARG: BASE_IMAGE, JRE_VERSION, PROCPS_VERSION, "
                                "RDS_CA_URL, RDS_CA_SHA256 (repeatable)")
    build_cmd.add_argument("--engine", choices=["docker", "buildah"],
                           help="default: docker when its engine runs, else buildah")
    push_cmd = commands.add_parser("push", help="push the built image to an ECR repository")
    push_cmd.add_argument("--repository", required=True,
                          help="the stack's WorkerRepositoryUri output")
    push_cmd.add_argument("--tag", help="default: the checked-out commit")
    push_cmd.add_argument("--image", default=DEFAULT_TAG, help="local image (default %(default)s)")
    push_cmd.add_argument("--engine", choices=["docker", "buildah"])
    commands.add_parser("standin-base", help="make (or find) the stand-in base; print its tag")
    commands.add_parser("tools", help="apt-get install buildah and debootstrap where missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            build(args.tag, parse_build_args(args.build_arg), args.engine, pip_cert_of())
            print(f"built {args.tag}")
        elif args.command == "push":
            target = push(args.repository, args.tag or commit_tag(), args.image, args.engine)
            print(f"pushed {target}\nnext: sam deploy --guided, WorkerImageTag="
                  f"{target.rsplit(':', 1)[1]}")
        elif args.command == "standin-base":
            print(standin_base())
        else:
            install_tools()
    except ImageToolMissing as error:
        print(f"infra.image: {error}", file=sys.stderr)
        return 2
    except argparse.ArgumentTypeError as error:
        print(f"infra.image: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"infra.image: {' '.join(map(str, error.cmd))} exited {error.returncode}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
