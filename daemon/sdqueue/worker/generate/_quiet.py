"""Library log levels, set before transformers and diffusers are first imported (they read them at import)."""

from __future__ import annotations

import os

# Their notices (missing torchvision, truncated prompts, progress bars) are not ours to print; we report
# what matters (a truncated prompt) as a job warning. An operator's explicit setting wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
