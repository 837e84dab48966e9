"""A hostile loopback web for the download tests: every way a real crawl goes wrong.

Each path maps to a behaviour (or a list of behaviours, one per request, the last one
repeating). The server counts requests per path and records when each started and how
many were in flight, so tests can prove what was fetched, retried or never touched.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from clipcurate.curation.sampleweb import LoopbackServer


def jpeg(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png(size=(40, 40), colour=(30, 30, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb_header(width=50_000, height=50_000) -> bytes:
    """A PNG that claims 50,000 x 50,000 pixels: a valid header and a little data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width * 3 + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_bomb_header(width=9000, height=9000) -> bytes:
    """A whole 16 x 16 JPEG whose frame header claims ``width`` x ``height``: libjpeg
    decodes it to a grey image of that size (warning only) and the file still ends in EOI."""
    data = bytearray(jpeg((16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_bomb_header(width=9000, height=9000) -> bytes:
    """A 16 x 16 GIF frame on a logical screen of ``width`` x ``height``: decoders allocate
    and fill the whole screen."""
    buffer = io.BytesIO()
    Image.new("P", (16, 16), 1).save(buffer, format="GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


# ---------------------------------------------------------------- behaviours


def image(body: bytes, content_type: str = "image/jpeg", headers: dict | None = None):
    return ("body", 200, {"Content-Type": content_type, **(headers or {})}, body)


def status(code: int, headers: dict | None = None):
    return ("body", code, dict(headers or {}), b"")


def redirect(location: str, code: int = 302):
    return ("body", code, {"Location": location}, b"")


def hang():
    """Accept the request and never answer."""
    return ("hang",)


def partial(headers: dict, declared: int, sent: bytes):
    """Headers announcing ``declared`` bytes, then ``sent`` and silence."""
    return ("partial", headers, declared, sent)


def cut_short(body: bytes, sent: int, content_type: str = "image/jpeg"):
    """``Content-Length`` of the whole ``body``, then its first ``sent`` bytes and a close."""
    return ("cut", body, sent, content_type)


def drip(body: bytes, every: float = 0.2, content_type: str = "image/jpeg"):
    """One byte every ``every`` seconds: each read succeeds, the whole never ends in time."""
    return ("drip", body, every, content_type)


class HostileWeb(LoopbackServer):
    """``with HostileWeb({"/a.jpg": image(jpeg()), ...}) as web: web.url("/a.jpg")``."""

    def __init__(self, routes: dict | None = None, port: int = 0, tls: tuple[str, str] | None = None):
        self.routes = dict(routes or {})
        self.requests: Counter[str] = Counter()
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # (certfile, keyfile): serve https
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or '127.0.0.1'}:{self.port}{path}"

    def _behaviour(self, path: str, nth: int):
        route = self.routes.get(path)
        if route is None:
            return status(404)
        if isinstance(route, list):
            return route[min(nth, len(route) - 1)]
        return route

    def _handler(self):
        web = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server naming
                with web._lock:
                    nth = web.requests[self.path]
                    web.requests[self.path] += 1
                    web.starts[self.path].append(time.monotonic())
                    web.in_flight += 1
                    web.max_in_flight = max(web.max_in_flight, web.in_flight)
                try:
                    self._serve(web._behaviour(self.path, nth))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with web._lock:
                        web.in_flight -= 1

            def _serve(self, behaviour):
                kind = behaviour[0]
                if kind == "hang":
                    web._stop.wait()
                    self.close_connection = True
                    return
                if kind == "body":
                    _, code, headers, body = behaviour
                    self.send_response(code)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if kind == "partial":
                    _, headers, declared, sent = behaviour
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(declared))
                    self.end_headers()
                    self.wfile.write(sent)
                    self.wfile.flush()
                    web._stop.wait()
                    self.close_connection = True
                    return
                if kind == "cut":
                    _, body, sent, content_type = behaviour
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if kind == "drip":
                    _, body, every, content_type = behaviour
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    for byte in body:
                        if web._stop.wait(every):
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    self.close_connection = True

            def log_message(self, *args):
                pass

        return Handler
