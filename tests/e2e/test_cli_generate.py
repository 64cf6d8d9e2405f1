"""`sdqueue generate` on the real stack: a live progress bar on a terminal's stderr, fed by the job's progress
events, while stdout keeps the table; no bar off a terminal or with `--no-progress`; exit 1 when the job fails."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from sdqueue.devstack.stack import worker_environment

SDQUEUE = Path(sys.executable).with_name("sdqueue")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Variables with which rich would decide "terminal or not" itself, whatever stderr is.
TERMINAL_OVERRIDES = frozenset({"FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"})
# One redraw of the bar: its label, the bar itself, then "<step>/<steps> steps".
BAR_FRAME = re.compile(r"(waiting for a worker|generating|done) \S+ (\d+|\?)/(\d+|\?) steps")
TWO_STEPS = ["--width", "64", "--height", "64", "--steps", "2"]


def _environment(settings: Settings) -> dict[str, str]:
    environment = worker_environment(settings, extra={"TERM": "xterm-256color"})
    return {name: value for name, value in environment.items() if name not in TERMINAL_OVERRIDES}


def _drain(descriptor: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(descriptor, 4096)
        except OSError:  # EIO: every process holding the terminal's other end has closed it
            return
        if not data:
            return
        chunks.append(data)


def _run_on_terminal(argv: list[str], settings: Settings) -> tuple[int, str, str]:
    """Run the `sdqueue` script with stderr on a pseudo-terminal: exit code, stdout, and the terminal's text."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(leader, chunks))
    reader.start()
    try:
        process = subprocess.Popen(
            [str(SDQUEUE), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=_environment(settings),
            text=True,
        )
    finally:
        os.close(follower)
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(leader)
    return process.returncode, stdout, ANSI_ESCAPE.sub("", b"".join(chunks).decode(errors="replace"))


def _run_captured(argv: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SDQUEUE), *argv], capture_output=True, text=True, env=_environment(settings), timeout=120, check=False
    )


def _table(stdout: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in stdout.splitlines())


async def test_generate_draws_the_steps_on_a_terminal_and_prints_the_table(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    output = tmp_path / "bar.png"

    code, stdout, terminal = _run_on_terminal(["generate", "a bar", "-o", str(output), *TWO_STEPS], stack_settings)

    assert code == 0, terminal
    frames = BAR_FRAME.findall(terminal)
    assert ("generating", frames[-1][2]) in {(label, total) for label, _, total in frames}
    label, done, total = frames[-1]
    # The pipeline may report a step more than asked for (its scheduler's own count); the bar shows what it reports.
    assert (label, done) == ("done", total)
    assert int(total) >= 2
    table = _table(stdout)
    assert set(table) == {"job", "key", "url", "path", "seed"}
    assert Path(table["path"]) == output.resolve()
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def test_no_progress_keeps_a_terminal_quiet(client: SdqueueClient, stack_settings: Settings, tmp_path: Path):
    output = tmp_path / "quiet.png"

    code, stdout, terminal = _run_on_terminal(
        ["generate", "quiet", "-o", str(output), "--no-progress", *TWO_STEPS], stack_settings
    )

    assert code == 0, terminal
    assert "steps" not in terminal
    assert Path(_table(stdout)["path"]) == output.resolve()


async def test_no_bar_off_a_terminal_unless_forced(client: SdqueueClient, stack_settings: Settings, tmp_path: Path):
    plain = _run_captured(["generate", "piped", "-o", str(tmp_path / "piped.png"), *TWO_STEPS], stack_settings)
    forced = _run_captured(
        ["generate", "forced", "-o", str(tmp_path / "forced.png"), "--progress", *TWO_STEPS], stack_settings
    )

    assert plain.returncode == 0, plain.stderr
    assert "steps" not in plain.stderr
    assert forced.returncode == 0, forced.stderr
    assert BAR_FRAME.findall(ANSI_ESCAPE.sub("", forced.stderr))[-1][0] == "done"
    assert _table(forced.stdout)["key"].endswith("/0.png")


async def test_a_failed_job_exits_1_with_its_code(client: SdqueueClient, stack_settings: Settings, tmp_path: Path):
    result = _run_captured(
        ["generate", "odd", "-o", str(tmp_path / "odd.png"), "--scheduler", "no_such_scheduler", *TWO_STEPS],
        stack_settings,
    )

    assert result.returncode == 1
    assert "invalid_request" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "odd.png").exists()


def _init_and_mask(tmp_path: Path) -> tuple[Path, Path]:
    """A 64x64 init image and a mask that repaints its right half."""
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(init)
    half = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(half).rectangle((32, 0, 63, 63), fill=255)
    half.save(mask)
    return init, mask


async def test_inpaint_keeps_the_black_half_of_the_init_image(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    init, mask = _init_and_mask(tmp_path)
    output = tmp_path / "inpainted.png"

    result = _run_captured(
        ["inpaint", str(init), str(mask), "a door", "-o", str(output), "--mask-blur", "0", "--seed", "4", *TWO_STEPS],
        stack_settings,
    )

    assert result.returncode == 0, result.stderr
    assert Path(_table(result.stdout)["path"]) == output.resolve()
    kept = np.asarray(Image.open(output).convert("RGB"))[:, :32]
    assert (kept == np.asarray(Image.open(init).convert("RGB"))[:, :32]).all()


async def test_inpaint_refuses_an_unreadable_mask_before_sending(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    init, _ = _init_and_mask(tmp_path)

    result = _run_captured(["inpaint", str(init), str(tmp_path / "absent.png"), "x", *TWO_STEPS], stack_settings)

    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "absent.png" in result.stderr


async def test_previews_show_on_the_bar_and_the_latest_is_kept_in_a_file(
    client: SdqueueClient, stack_settings: Settings, tmp_path: Path
):
    preview = tmp_path / "live.webp"
    argv = ["generate", "a harbour", "-o", str(tmp_path / "p.png"), "--previews", "--preview-file", str(preview)]

    code, stdout, terminal = _run_on_terminal(
        [*argv, "--width", "64", "--height", "64", "--steps", "3"], stack_settings
    )

    assert code == 0, terminal
    assert re.search(r"preview \d+x\d+", terminal), terminal
    with Image.open(preview) as picture:
        assert picture.format == "WEBP"
        assert max(picture.size) <= 256
    assert Path(_table(stdout)["path"]) == (tmp_path / "p.png").resolve()


async def test_hires_options_must_come_together(client: SdqueueClient, stack_settings: Settings, tmp_path: Path):
    lone = _run_captured(["generate", "x", "--hires-scale", "2", *TWO_STEPS], stack_settings)
    orphan = _run_captured(["generate", "x", "--preview-file", str(tmp_path / "p.webp"), *TWO_STEPS], stack_settings)

    assert lone.returncode == 1
    assert "--hires-steps" in lone.stderr
    assert orphan.returncode == 1
    assert "--preview-file needs --previews" in orphan.stderr
