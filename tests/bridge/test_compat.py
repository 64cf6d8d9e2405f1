"""The original API's routes: the same bodies give PNG bytes; sign-up only when enabled."""

from __future__ import annotations

import httpx

from sdqueue.client import SdqueueClient
from sdqueue.config import Settings
from tests.bridge.conftest import make_bridge_settings, png_bytes, running_app
from tests.bridge.test_jobs import assert_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_generar_imagen_texto_answers_a_png(api: httpx.AsyncClient, alice: dict[str, str]):
    response = await api.post("/generar-imagen-texto", json={"texto": "a dog with a hat"}, headers=alice)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    history = (await api.get("/v1/jobs", headers=alice)).json()["jobs"]
    assert history[0]["job_id"] == response.headers["x-job-id"]
    assert history[0]["prompt"] == "a dog with a hat"


async def test_generar_imagen_texto_without_texto_is_400(api: httpx.AsyncClient, alice: dict[str, str]):
    assert_error(await api.post("/generar-imagen-texto", json={}, headers=alice), 400, "invalid_request")
    assert_error(await api.post("/generar-imagen-texto", json={"prompt": "x"}, headers=alice), 400, "invalid_request")
    not_json = await api.post("/generar-imagen-texto", content=b"texto", headers=alice)
    assert_error(not_json, 400, "invalid_request")


async def test_compat_routes_need_a_token(api: httpx.AsyncClient):
    assert_error(await api.post("/generar-imagen-texto", json={"texto": "x"}), 401, "unauthenticated")
    files = {"imagen": ("a.png", png_bytes(), "image/png")}
    assert_error(await api.post("/generar-imagen-imagen", files=files), 401, "unauthenticated")


async def test_generar_imagen_imagen_with_prompt_in_the_query(api: httpx.AsyncClient, alice: dict[str, str]):
    response = await api.post(
        "/generar-imagen-imagen",
        params={"prompt": "a castle"},
        files={"imagen": ("init.png", png_bytes(), "image/png")},
        headers=alice,
    )

    assert response.status_code == 200, response.text
    assert response.content.startswith(PNG_MAGIC)
    job = (await api.get(f"/v1/jobs/{response.headers['x-job-id']}", headers=alice)).json()
    assert job["prompt"] == "a castle"
    assert job["mode"] == "img2img"


async def test_generar_imagen_imagen_with_prompt_in_the_form(api: httpx.AsyncClient, alice: dict[str, str]):
    response = await api.post(
        "/generar-imagen-imagen",
        data={"prompt": "a lighthouse"},
        files={"imagen": ("init.png", png_bytes(color=(0, 90, 200)), "image/png")},
        headers=alice,
    )

    assert response.status_code == 200, response.text
    assert response.content.startswith(PNG_MAGIC)
    job = (await api.get(f"/v1/jobs/{response.headers['x-job-id']}", headers=alice)).json()
    assert job["prompt"] == "a lighthouse"


async def test_generar_imagen_imagen_defaults_the_prompt(api: httpx.AsyncClient, alice: dict[str, str]):
    files = {"imagen": ("init.png", png_bytes(), "image/png")}

    response = await api.post("/generar-imagen-imagen", files=files, headers=alice)

    assert response.status_code == 200, response.text
    job = (await api.get(f"/v1/jobs/{response.headers['x-job-id']}", headers=alice)).json()
    assert job["prompt"] == "A beautiful landscape"


async def test_signup_is_off_by_default(api: httpx.AsyncClient):
    response = await api.post("/registrar_usuario", json={"correo": "eve@example.com", "contraseña": "long-enough-1"})

    assert_error(response, 403, "forbidden")


async def test_signup_when_enabled(stack_settings: Settings, client: SdqueueClient, database_url: str):
    settings = make_bridge_settings(stack_settings, database_url=database_url, allow_signup=True)
    body = {"correo": "ana@example.com", "contraseña": "correct horse battery"}
    async with running_app(settings) as http:
        created = await http.post("/registrar_usuario", json=body)
        again = await http.post("/registrar_usuario", json=body)
        bad_mail = await http.post("/registrar_usuario", json={"correo": "ana", "contraseña": "correct horse"})
        short = await http.post("/registrar_usuario", json={"correo": "bo@example.com", "contraseña": "short"})
        missing = await http.post("/registrar_usuario", json={"correo": "bo@example.com"})
        token = await http.post("/token", data={"username": "ana@example.com", "password": "correct horse battery"})

    assert created.status_code == 201, created.text
    assert created.json() == {"usuario": "ana@example.com", "creado": True}
    assert_error(again, 409, "conflict")
    assert_error(bad_mail, 400, "invalid_request")
    assert_error(short, 400, "invalid_request")
    assert_error(missing, 400, "invalid_request")
    assert token.status_code == 200
