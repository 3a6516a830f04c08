"""A listener that serves provider webhooks and nothing else, for a public address (docs/security.md)."""

from __future__ import annotations

import logging
from typing import Optional

from aiohttp import web
from mode import Service

from agents.app import app, settings
from agents.webhooks import receive

log = logging.getLogger(__name__)


async def _webhook(request: web.Request) -> web.StreamResponse:
    return await receive(request, request.match_info["provider"])


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="ok\n", content_type="text/plain")


def application() -> web.Application:
    """Only `/webhooks/{provider}` (and `/ping` for a load balancer): readers' endpoints, metrics and
    Faust's pages are not routed here, whatever the credentials."""
    application = web.Application(client_max_size=settings.max_payload_bytes + 64 * 1024)
    application.router.add_route("GET", "/webhooks/{provider}", _webhook)
    application.router.add_route("POST", "/webhooks/{provider}", _webhook)
    application.router.add_route("GET", "/ping", _ping)
    return application


class WebhookListener(Service):
    """Serves `application()` on SENDTRACK_WEBHOOK_HOST:SENDTRACK_WEBHOOK_PORT while the worker runs."""

    _runner: Optional[web.AppRunner] = None

    async def on_start(self) -> None:
        runner = web.AppRunner(application(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
        self._runner = runner
        log.warning("webhooks: also on http://%s:%d/webhooks/<provider> (that listener serves nothing else)",
                    settings.webhook_host, settings.webhook_port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


if settings.webhook_port:
    app.service(WebhookListener())
