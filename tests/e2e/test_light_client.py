"""The client and its CLI never load torch, diffusers or transformers, even on the full generate path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.devstack.stack import worker_environment

HEAVY = ("torch", "diffusers", "transformers")
# A None entry in sys.modules makes `import torch` raise ImportError: any attempt to load it fails loudly.
BLOCK_HEAVY = f"import sys\nfor name in {HEAVY!r}:\n    sys.modules[name] = None\n"


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_client_package_imports_without_heavy_modules():
    code = (
        "import sys\n"
        "import sdqueue.client, sdqueue.client.cli, sdqueue.contracts, sdqueue.config\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(loaded)\n"
    )

    result = _python(code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_cli_generate_runs_with_torch_unimportable(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    output = tmp_path / "cat.png"
    argv = ["generate", "a cat", "-o", str(output), "--width", "64", "--height", "64", "--steps", "2"]
    code = BLOCK_HEAVY + f"from sdqueue.client.cli import main\nraise SystemExit(main({argv!r}))\n"

    result = _python(code, env=worker_environment(stack_settings))

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(maxsplit=1) for line in result.stdout.splitlines())
    assert lines["key"].startswith("outputs/")
    assert lines["key"].endswith("/0.png")
    assert lines["url"].startswith(f"{stack_settings.s3.endpoint_url}/")
    assert Path(lines["path"]) == output.resolve()
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
