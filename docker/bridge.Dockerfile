# sdqueue HTTP bridge: the light client plus FastAPI; no torch.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SDQUEUE_STATE_DIR=/var/lib/sdqueue
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/sdqueue sdqueue

WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY daemon daemon
COPY clients clients
# The project itself, from the copied source tree: nothing to pin (its dependencies are pinned in pyproject.toml).
# hadolint ignore=DL3013
RUN pip install ".[bridge]"

USER 10001
EXPOSE 8000
ENTRYPOINT ["sdqueue"]
CMD ["bridge"]
