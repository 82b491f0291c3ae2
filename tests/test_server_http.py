"""The ingress's web server without models: page, vendor script, HTTPS off loopback, full server."""

from __future__ import annotations

import ssl
from typing import Any, cast

import aiohttp

from parley.config import ParleyConfig
from parley.engine.services import Services
from parley.ingress.server import IngressServer
from tests.support.client import ParleyClient
from tests.support.network import free_port

NO_MODELS = cast(Services, None)  # these tests never start a turn


async def started(**server: Any) -> IngressServer:
    config = ParleyConfig.model_validate({"server": {"port": free_port(), **server}})
    ingress = IngressServer(config, NO_MODELS)
    await ingress.start()
    return ingress


async def test_loopback_serves_the_page_and_vendor_script_over_http() -> None:
    ingress = await started(host="127.0.0.1")
    try:
        assert ingress.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.get(ingress.url) as page:
                assert page.status == 200 and 'id="talk"' in await page.text()
            async with http.get(ingress.url + "vendor/socket.io.min.js") as script:
                assert script.status == 200 and len(await script.read()) > 10000
    finally:
        await ingress.stop()


async def test_other_hosts_get_https_with_a_reused_self_signed_certificate(tmp_path) -> None:
    made = []
    for _ in range(2):
        ingress = await started(host="0.0.0.0", self_signed_dir=str(tmp_path))
        try:
            assert ingress.url.startswith("https://")
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            async with aiohttp.ClientSession() as http:
                url = f"https://127.0.0.1:{ingress.config.server.port}/"
                async with http.get(url, ssl=insecure) as page:
                    assert page.status == 200
            made.append(sorted(p.name for p in tmp_path.iterdir()))
        finally:
            await ingress.stop()
    assert made[0] == made[1] == ["0.0.0.0-2.crt", "0.0.0.0-2.key"]


async def test_a_full_server_refuses_new_sessions_with_a_reason() -> None:
    ingress = await started(host="127.0.0.1", max_sessions=1)
    first, second = ParleyClient(ingress.url), ParleyClient(ingress.url)
    try:
        assert "session_id" in await first.connect(media=False)
        refused = await second.connect(media=False)
        assert "full" in refused["reason"]
        again = ParleyClient(ingress.url, session_id=first.session_id, session_key=first.session_key)
        await first.close()
        assert "session_id" in await again.connect(media=False), "a freed slot is taken again"
        await again.close()
    finally:
        await first.close()
        await second.close()
        await ingress.stop()


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _handshake(url: str, origin: str, host: str | None = None) -> tuple[int, str]:
    """The first request a browser's socket.io client makes, with the Origin it would send."""
    headers = {"Origin": origin, **({"Host": host} if host else {})}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "socket.io/?EIO=4&transport=polling", headers=headers, ssl=_insecure()) as reply:
            return reply.status, await reply.text()


async def test_a_page_served_over_https_opens_its_socket_by_any_name_it_is_served_under(tmp_path) -> None:
    names = ["127.0.0.1", "localhost", "parley.lan", "::1"]
    ingress = await started(host="0.0.0.0", self_signed_dir=str(tmp_path), allowed_hosts=names)
    port = ingress.config.server.port
    base = f"https://127.0.0.1:{port}/"
    try:
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"parley.lan:{port}", f"[::1]:{port}"):
            status, body = await _handshake(base, f"https://{name}", host=name)
            assert status == 200 and '"sid"' in body, (name, status, body)
        status, body = await _handshake(base, f"http://127.0.0.1:{port}", host=f"127.0.0.1:{port}")
        assert status == 400 and "not an accepted origin" in body, "the wrong scheme is another origin"
        status, body = await _handshake(base, "https://evil.example", host=f"127.0.0.1:{port}")
        assert status == 400, "a page from another site may not open a socket here"
    finally:
        await ingress.stop()


async def test_a_page_on_loopback_http_opens_its_socket() -> None:
    ingress = await started(host="127.0.0.1")
    port = ingress.config.server.port
    try:
        status, _ = await _handshake(ingress.url, f"http://127.0.0.1:{port}", host=f"127.0.0.1:{port}")
        assert status == 200
        status, _ = await _handshake(ingress.url, f"http://localhost:{port}", host=f"localhost:{port}")
        assert status == 200
        status, _ = await _handshake(ingress.url, "http://evil.example", host=f"127.0.0.1:{port}")
        assert status == 400
    finally:
        await ingress.stop()


def test_the_self_signed_certificate_names_what_users_type_and_its_key_is_private(tmp_path) -> None:
    import ipaddress
    import os
    import socket

    from cryptography import x509

    from parley.ingress.tls import self_signed_pair

    cert_path, key_path = self_signed_pair(tmp_path, "0.0.0.0")
    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = set(names.get_values_for_type(x509.IPAddress))
    assert {"localhost", socket.gethostname()} <= dns
    assert ipaddress.ip_address("127.0.0.1") in ips and ipaddress.ip_address("0.0.0.0") not in ips
    assert os.stat(key_path).st_mode & 0o777 == 0o600
