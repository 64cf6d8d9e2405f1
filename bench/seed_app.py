"""Item 2's seed-style app: the original design, whose async handler runs the pipeline on the event loop.

Run by `python -m uvicorn bench.seed_app:app` with the worker's `SDQUEUE_*` settings: same model, same threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from bench._stack import txt2img_spec
from sdqueue.config import load_settings
from sdqueue.worker.generate import ImageGenerator, load_generator, warm_up


class TextoBody(BaseModel):
    """The original `{"texto": ...}` body, plus the numbers the benchmark pins."""

    texto: str
    seed: int
    size_px: int
    steps: int


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and warm it up before serving, as the worker does."""
    settings = load_settings()
    generator = load_generator(settings.model_sources()["default"], runtime=settings.runtime)
    warm_up(generator, runtime=settings.runtime)
    app.state.generator = generator
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/generar-imagen-texto")
async def generar_imagen_texto(body: TextoBody, request: Request) -> Response:
    """Generate inside the async handler and answer the PNG; the event loop serves nothing else meanwhile."""
    generator: ImageGenerator = request.app.state.generator
    spec = txt2img_spec(seeds=(body.seed,), size_px=body.size_px, steps=body.steps)
    image = generator.generate(dataclasses.replace(spec, prompt=body.texto)).images[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness: answers only when the event loop is free."""
    return {"status": "ok"}
