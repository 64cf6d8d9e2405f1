"""A fast lane for the routes a burst of callers hits: their endpoint is called without FastAPI's routing stack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from sdqueue.bridge._errors import error_handler_for

Endpoint = Callable[[Request], Awaitable[Response]]


class AcceptLane:
    """ASGI middleware that serves a few routes by awaiting their endpoint directly.

    Their endpoints take only the `Request` and return a `Response`, so FastAPI's dependency solving, its
    per-request exit stack, Starlette's exception middleware and the match over every route add nothing but CPU:
    under a burst of 200 accepts on two cores, that CPU is queueing time (docs/benchmarks.md). The routes stay
    declared on the app, so OpenAPI, other methods and errors answer as before; errors go to the app's handlers.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[APIRoute]) -> None:
        self._app = app
        self._routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route_for(scope)
        if route is None:
            await self._app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await cast(Endpoint, route.endpoint)(request)
        except Exception as exc:
            handler = error_handler_for(exc)
            if handler is None:
                raise  # a 500 from the app's server-error middleware, as on any other route
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _route_for(self, scope: Scope) -> APIRoute | None:
        """The lane's route for this request, with the scope updated as routing would (`route` for metrics)."""
        if scope["type"] != "http":
            return None
        for route in self._routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                return route
        return None


def lane_routes(router: APIRouter, *, paths: Sequence[str]) -> list[APIRoute]:
    """The router's POST routes at these paths, for the lane (the router is included in the app unprefixed).

    Raises:
        ValueError: a path has no POST route whose endpoint takes the request alone.
    """
    routes = [route for route in router.routes if isinstance(route, APIRoute) and route.path in paths]
    routes = [route for route in routes if "POST" in (route.methods or ()) and _takes_request_alone(route)]
    missing = set(paths) - {route.path for route in routes}
    if missing:
        raise ValueError(f"no POST route taking only the request at {sorted(missing)}")
    return routes


def _takes_request_alone(route: APIRoute) -> bool:
    dependant = route.dependant
    params = [*dependant.path_params, *dependant.query_params, *dependant.header_params, *dependant.cookie_params]
    return not (params or dependant.body_params or dependant.dependencies) and dependant.request_param_name is not None
