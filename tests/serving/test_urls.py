"""Image URLs (maple.serving.urls): loopback, private and link-local addresses are refused after DNS resolution and
on every redirect, and the fetch connects to the address that was checked. Real HTTP servers in threads of this
process, on loopback addresses only."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from maple.serving.errors import ApiError
from maple.serving.urls import MAX_REDIRECTS, fetch_image, is_public

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


class Site:
    """An HTTP server on `host` answering `routes` {path: (status, headers, body)}; records the paths asked."""

    def __init__(self, host: str, routes: dict):
        self.asked: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                site.asked.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def sites():
    started = []

    def start(host: str, routes: dict) -> Site:
        started.append(Site(host, routes))
        return started[-1]

    yield start
    for site in started:
        site.stop()


def only(address: str):
    """A policy that allows exactly one address: the test's stand-in for 'the public internet'."""
    return lambda a: a == ipaddress.ip_address(address)


def fetch(url: str, **kwargs) -> bytes:
    return asyncio.run(fetch_image(url, "input[0]", max_bytes=kwargs.pop("max_bytes", 10_000), timeout_s=5,
                                   **kwargs))


def refused(url: str, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fetch(url, **kwargs)
    return info.value


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::"])
def test_addresses_of_the_servers_own_networks_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_internet_addresses_are_public(address):
    assert is_public(ipaddress.ip_address(address))


def test_a_loopback_url_is_refused_without_connecting(sites):
    site = sites("127.0.0.1", {"/cat.png": (200, {}, PNG)})
    error = refused(f"{site.url}/cat.png")
    assert (error.status, error.code, error.param) == (422, "image_url_refused", "input[0]")
    assert site.asked == []


def test_a_name_that_resolves_to_loopback_is_refused(sites):
    site = sites("127.0.0.1", {"/cat.png": (200, {}, PNG)})
    error = refused(site.url.replace("127.0.0.1", "localhost") + "/cat.png")
    assert error.code == "image_url_refused" and "localhost" in error.message
    assert site.asked == []


def test_a_redirect_to_a_refused_address_is_refused_on_that_hop(sites):
    inner = sites("127.0.0.2", {"/secret": (200, {}, b"metadata")})
    outer = sites("127.0.0.1", {"/cat.png": (302, {"Location": f"{inner.url}/secret"}, b"")})
    error = refused(f"{outer.url}/cat.png", allowed=only("127.0.0.1"))
    assert error.code == "image_url_refused" and "127.0.0.2" in error.message
    assert outer.asked == ["/cat.png"] and inner.asked == []


def test_redirects_between_allowed_addresses_are_followed(sites):
    site = sites("127.0.0.1", {"/a": (301, {"Location": "/b"}, b""), "/b": (200, {}, PNG)})
    assert fetch(f"{site.url}/a", allowed=only("127.0.0.1")) == PNG
    assert site.asked == ["/a", "/b"]


def test_a_redirect_loop_stops_after_the_limit(sites):
    site = sites("127.0.0.1", {"/loop": (302, {"Location": "/loop"}, b"")})
    assert refused(f"{site.url}/loop", allowed=only("127.0.0.1")).code == "image_url_refused"
    assert len(site.asked) == MAX_REDIRECTS + 1


def test_a_body_over_what_the_request_may_still_fetch_is_413(sites):
    site = sites("127.0.0.1", {"/big.png": (200, {}, PNG * 100)})
    error = refused(f"{site.url}/big.png", allowed=only("127.0.0.1"), max_bytes=1000)
    assert (error.status, error.code) == (413, "image_too_large")


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "http://user:pw@example.com/a.png", "http:///a.png"])
def test_urls_without_a_plain_http_host_are_refused(url):
    assert refused(url).code == "image_url_refused"


def test_the_url_table_of_docs_security_md_is_what_fetching_does(sites):
    from tests.fixtures.doc_tables import check_section, markdown_table

    inner = sites("127.0.0.2", {"/secret": (200, {}, b"metadata")})
    site = sites("127.0.0.1", {"/cat.png": (200, {}, PNG), "/to-inner": (302, {"Location": f"{inner.url}/secret"}, b""),
                               "/loop": (302, {"Location": "/loop"}, b""), "/big.png": (200, {}, PNG * 100)})
    port = site.url.rsplit(":", 1)[1]
    allow_site = only("127.0.0.1")
    probes = [
        ("a loopback address", f"http://127.0.0.1:{port}/cat.png", {}),
        ("a name that resolves to loopback (`localhost`)", f"http://localhost:{port}/cat.png", {}),
        ("IPv6 loopback", f"http://[::1]:{port}/cat.png", {}),
        ("loopback inside IPv6 (`::ffff:127.0.0.1`)", f"http://[::ffff:127.0.0.1]:{port}/cat.png", {}),
        ("a private address", "http://10.0.0.1/cat.png", {}),
        ("the cloud metadata service (link-local)", "http://169.254.169.254/latest/meta-data", {}),
        ("a redirect from an allowed address to another loopback one", f"{site.url}/to-inner",
         {"allowed": allow_site}),
        ("a redirect loop", f"{site.url}/loop", {"allowed": allow_site}),
        ("a download over what the request may still fetch", f"{site.url}/big.png",
         {"allowed": allow_site, "max_bytes": 1000}),
        ("a URL with credentials", "http://user:secret@example.com/cat.png", {}),
        ("another scheme", "file:///etc/passwd", {}),
    ]
    rows = []
    for what, url, kwargs in probes:
        error = refused(url, **kwargs)
        rows.append([what, f"{error.status}", f"`{error.code}`"])
    assert inner.asked == [] and "/cat.png" not in site.asked  # nothing refused was ever connected to
    check_section("docs/security.md", "url probes", markdown_table(["image URL", "status", "code"], rows),
                  "tests/serving/test_urls.py")
