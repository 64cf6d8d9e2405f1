# sdqueue worker on an NVIDIA GPU. Needs the NVIDIA Container Toolkit on the host (compose reserves one GPU).
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64; it brings its own CUDA runtime libraries.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/sdqueue PATH=/opt/sdqueue/bin:$PATH \
    SDQUEUE_STATE_DIR=/var/lib/sdqueue HF_HOME=/var/cache/huggingface
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/sdqueue \
    && useradd --system --create-home --home-dir /var/lib/sdqueue sdqueue \
    && mkdir -p /var/cache/huggingface && chown sdqueue /var/cache/huggingface

WORKDIR /src
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY daemon daemon
COPY clients clients
RUN pip install ".[worker]"

USER sdqueue
ENTRYPOINT ["sdqueue"]
CMD ["worker"]
