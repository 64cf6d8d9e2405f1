# sdqueue worker on CPU only: torch's CPU wheel (no CUDA libraries), for development and small loads.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SDQUEUE_STATE_DIR=/var/lib/sdqueue HF_HOME=/var/cache/huggingface
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/sdqueue sdqueue \
    && mkdir -p /var/cache/huggingface && chown sdqueue /var/cache/huggingface

WORKDIR /src
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY daemon daemon
COPY clients clients
# The project itself, from the copied source tree: nothing to pin (its dependencies are pinned in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install ".[worker]"

USER 10001
ENTRYPOINT ["sdqueue"]
CMD ["worker"]
