# sdqueue worker on CPU only: torch's CPU wheel (no CUDA libraries), for development and small loads.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SDQUEUE_STATE_DIR=/var/lib/sdqueue HF_HOME=/var/cache/huggingface
RUN useradd --system --create-home --home-dir /var/lib/sdqueue sdqueue \
    && mkdir -p /var/cache/huggingface && chown sdqueue /var/cache/huggingface

WORKDIR /src
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY daemon daemon
COPY clients clients
RUN pip install ".[worker]"

USER sdqueue
ENTRYPOINT ["sdqueue"]
CMD ["worker"]
