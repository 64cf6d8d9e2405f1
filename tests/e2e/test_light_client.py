"""The client and its CLI never load torch, diffusers or transformers, even on the full generate path; the client
also loads neither the CLI (nor its terminal library) nor the bridge's web stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.devstack.stack import worker_environment

HEAVY = ("torch", "diffusers", "transformers")
# The light client also leaves the CLI's terminal library and the bridge's web stack to those who install them.
LIGHT_CLIENT_FORBIDS = (*HEAVY, "rich", "fastapi", "starlette", "sdqueue.cli")


def _block(names: tuple[str, ...]) -> str:
    # A None entry in sys.modules makes importing that name raise ImportError: any attempt to load it fails loudly.
    return f"import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


BLOCK_HEAVY = _block(HEAVY)


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_client_package_imports_with_heavy_and_cli_libraries_blocked():
    code = f"{_block(LIGHT_CLIENT_FORBIDS)}import sdqueue.client, sdqueue.contracts, sdqueue.config\nprint('ok')\n"

    result = _python(code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_client_package_loads_no_heavy_cli_or_bridge_module():
    # httpx loads rich for its own command line when click is installed too, as the dev extras have it; a base
    # install has no click, so blocking it shows what the light client itself loads there.
    code = (
        f"{_block(('click',))}"
        "import sdqueue.client, sdqueue.contracts, sdqueue.config\n"
        f"forbidden = {LIGHT_CLIENT_FORBIDS!r}\n"
        "print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in forbidden)))\n"
    )

    result = _python(code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_imports_without_heavy_modules():
    code = f"import sys\nimport sdqueue.cli\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"

    result = _python(code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_cli_generate_runs_with_torch_unimportable(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    output = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(output), "--width", "64", "--height", "64", "--steps", "2"]
    code = BLOCK_HEAVY + f"from sdqueue.cli import main\nraise SystemExit(main({argv!r}))\n"

    result = _python(code, env=worker_environment(stack_settings))

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert lines["key"].startswith("outputs/")
    assert lines["key"].endswith("/0.png")
    assert lines["url"].startswith(f"{stack_settings.s3.endpoint_url}/")
    assert Path(lines["path"]) == output.resolve()
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
