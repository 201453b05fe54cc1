"""The coordinator's site-facing door: only the Fleet API (what a SuperNode calls) gets through.

Flower 1.41's SuperLink serves three APIs on one HTTPS port: Fleet (SuperNodes pull
messages and push replies), Control (``flwr run``, ``flwr supernode register``, ``flwr ls``:
whoever reaches it can run code at every site) and Runtime (the ServerApp processes). It
cannot bind them apart, and this Flower distribution has no user authentication for the
Control API (``FLWR_OIDC_ENABLED=1`` exits with "OIDC account authentication is unavailable
in this Flower distribution"). So the SuperLink listens on 127.0.0.1 only and this gateway,
on the address the sites reach, forwards ``POST /v1/fleet/<method>`` to it and answers
everything else with 403.

TLS ends here (the SuperLink's own certificate and key) and starts again towards the
SuperLink, verified against the CA; method, path, headers and body pass unchanged, so
SuperNode authentication (a timestamp signed with the site's key, checked by the SuperLink
against the registered public key) works end to end.

    python scripts/fleet_gateway.py --listen 0.0.0.0:9092 --superlink 127.0.0.1:9093 \\
        --certfile certificates/server.pem --keyfile certificates/server.key \\
        --ca certificates/ca.crt
"""

from __future__ import annotations

import argparse
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

# One path segment of lower-case words: no '..', no '%'-escapes, no second prefix.
FLEET_PATH = re.compile(r"/v1/fleet/[a-z]+(-[a-z]+)*")
# Connection-level headers are the two hops' own business (RFC 9110, section 7.6.1).
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
REFUSED = "only the Fleet API (SuperNodes) is reachable on this address\n"


def is_fleet_request(method: str, path: str) -> bool:
    """Whether a request may pass: a POST to one Fleet API method."""
    return method == "POST" and FLEET_PATH.fullmatch(path) is not None


def _headers(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in items if k.lower() not in HOP_HEADERS}


def create_app(superlink: str, ca: Path, timeout_s: float = 600.0) -> Starlette:
    """The gateway as an ASGI app forwarding to ``https://<superlink>``."""
    verify = ssl.create_default_context(cafile=str(ca))
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=f"https://{superlink}", verify=verify, timeout=timeout_s
        ) as client:
            state["client"] = client
            yield

    async def forward(request: Request) -> Response:
        if not is_fleet_request(request.method, request.url.path):
            return PlainTextResponse(REFUSED, status_code=403)
        upstream = await state["client"].post(
            request.url.path,
            content=await request.body(),
            headers=_headers(request.headers.items()),
        )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers=_headers(upstream.headers.items()),
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT for sites")
    parser.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    parser.add_argument("--certfile", type=Path, required=True)
    parser.add_argument("--keyfile", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True, help="CA that signed the SuperLink")
    args = parser.parse_args(argv)
    host, port = args.listen
    uvicorn.run(
        create_app(args.superlink, args.ca),
        host=host,
        port=port,
        ssl_certfile=str(args.certfile),
        ssl_keyfile=str(args.keyfile),
        log_level="info",
    )


if __name__ == "__main__":
    main()
