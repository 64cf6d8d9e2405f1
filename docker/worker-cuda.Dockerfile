# sdqueue worker on an NVIDIA GPU. Needs the NVIDIA Container Toolkit on the host (compose reserves one GPU).
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64; it brings its own CUDA runtime libraries.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/sdqueue PATH=/opt/sdqueue/bin:$PATH \
    SDQUEUE_STATE_DIR=/var/lib/sdqueue HF_HOME=/var/cache/huggingface
# Ubuntu's archive keeps one version per package: pinning it would break the build when that version moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/sdqueue \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/sdqueue sdqueue \
    && mkdir -p /var/cache/huggingface && chown sdqueue /var/cache/huggingface

WORKDIR /src
RUN pip install torch==2.13.0
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
