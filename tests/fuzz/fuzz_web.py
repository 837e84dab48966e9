"""A raw-socket web on 127.0.0.1 that answers each request with whatever bytes a fuzz
case scripted, and the hypothesis strategies that script them.

``http.server`` cannot send a lying Content-Length, a broken chunk size or half a status
line, so this server reads a request head and plays back a list of actions: send bytes,
sleep, close, reset, hang. Each path has a list of responses (the nth request gets the
nth, the last repeats), so retries and robots.txt meet their own garbage. A connection
stays open after a response unless the script closes it, so a reused keep-alive
connection reads whatever a lying response left behind.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import strategies as st
from PIL import Image

# an action: ("send", bytes) | ("sleep", seconds) | ("close",) | ("reset",) | ("hang",)
Response = tuple[tuple, ...]
PORT, CLOSED = b"{port}", b"{closed}"  # placeholders, filled in when the server has its port


class FuzzWeb:
    """``with FuzzWeb({"/a": [response, ...]}) as web: web.port``; unknown paths get a 404."""

    def __init__(self, plans: dict[str, list[Response]], *, closed_port: int = 9):
        self.plans = plans
        self.closed_port = closed_port
        self.requests: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fill(self, data: bytes) -> bytes:
        return data.replace(PORT, str(self.port).encode()).replace(CLOSED, str(self.closed_port).encode())

    def __enter__(self) -> "FuzzWeb":
        thread = threading.Thread(target=self._accept, daemon=True, name="fuzzweb-accept")
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)
        deadline = time.monotonic() + 2.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fuzzweb-conn")
            thread.start()
            with self._lock:
                self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        pending, ending = b"", "close"
        try:
            while not self._stop.is_set():
                head, pending = self._read_head(conn, pending)
                if head is None:
                    break
                path = head.split(b"\r\n", 1)[0].split(b" ")[1:2]
                path = path[0].decode("latin-1") if path else ""
                with self._lock:
                    nth = self.requests[path]
                    self.requests[path] += 1
                plan = self.plans.get(path) or [((("send", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),))]
                ending = self._play(conn, plan[min(nth, len(plan) - 1)])
                if ending != "keep":
                    break
        except OSError:
            pass
        finally:
            if ending == "reset":
                conn.close()  # SO_LINGER 0: the close sends RST
            else:
                _close(conn)

    def _read_head(self, conn, pending: bytes):
        while b"\r\n\r\n" not in pending:
            if self._stop.is_set() or len(pending) > 1 << 16:
                return None, b""
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                return None, b""
            pending += chunk
        head, _, rest = pending.partition(b"\r\n\r\n")
        return head, rest

    def _play(self, conn: socket.socket, response: Response) -> str:
        """Send the response; how the connection goes on: keep, close or reset."""
        for action in response:
            kind = action[0]
            if kind == "send":
                conn.sendall(self.fill(action[1]))
            elif kind == "sleep":
                if self._stop.wait(action[1]):
                    return "close"
            elif kind == "close":
                return "close"
            elif kind == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return "reset"
            elif kind == "hang":
                self._stop.wait()
                return "close"
        return "keep"


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it; close alone may not
    except OSError:
        pass
    conn.close()


# ---------------------------------------------------------------- the bytes a response is made of


def _encoded(fmt: str, size=(24, 16), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header over a little data: the pixel count is a lie."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


IMAGES = {
    "jpeg": _encoded("JPEG", quality=80),
    "png": _encoded("PNG"),
    "webp": _encoded("WEBP"),
    "gif": _encoded("GIF"),
    "bmp": _encoded("BMP", (8, 8)),
    "wide_png": _encoded("PNG", (300, 2)),
    "png_bomb": _png_claiming(60_000, 60_000),
    "gif_huge_screen": b"GIF89a\xff\xff\xff\xff\x00\x00\x00" + _encoded("GIF")[13:],
}
HTML = b"<!doctype html><html><body>Not found</body></html>"

# special byte strings mutations insert: NUL, BOMs, invalid and overlong UTF-8, a surrogate,
# CR/LF, quotes and delimiters
SPECIAL = [b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff",
           b"\r", b"\n", b"\r\n", b'"', b",", b"\t", b"{", b"}", b"[", b"\\", b"\x1c", b"\xe2\x80\xa8"]


@st.composite
def mutations(draw, max_ops: int = 4) -> tuple:
    """Byte-level edits (positions are taken modulo the length when applied)."""
    op = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.one_of(st.sampled_from(SPECIAL),
                                                                        st.binary(min_size=1, max_size=16))),
        st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
        st.tuples(st.just("repeat"), st.integers(0, 1 << 20), st.integers(1, 64)),
    )
    return tuple(draw(st.lists(op, max_size=max_ops)))


def mutate(data: bytes, ops: tuple) -> bytes:
    buf = bytearray(data)
    for op in ops:
        at = op[1] % (len(buf) + 1)
        if op[0] == "flip" and buf:
            buf[at % len(buf)] ^= 1 << op[2]
        elif op[0] == "insert":
            buf[at:at] = op[2]
        elif op[0] == "delete":
            del buf[at:at + op[2]]
        elif op[0] == "truncate":
            del buf[at:]
        elif op[0] == "repeat":
            buf[at:at] = buf[at:at + op[2]]
    return bytes(buf)


# ---------------------------------------------------------------- responses

STATUS_CODES = [200, 200, 200, 200, 200, 204, 206, 301, 302, 303, 307, 308, 304, 100, 101, 199, 400, 403, 404,
                410, 429, 451, 500, 502, 503, 999, 0, 600]
GARBAGE_STATUS = [b"HTTP/1.0 200 OK\r\n", b"HTTP/2 200\r\n", b"ICY 200 OK\r\n", b"HTTP/1.1 abc OK\r\n",
                  b"HTTP/1.1 200\r\n", b"\r\n", b"HTTP/1.1 200 OK\n", b"http/1.1 200 ok\r\n",
                  b"HTTP/1.1 " + b"2" * 70_000 + b"\r\n", b"HTTP/1.1 -200 OK\r\n", b"HTTP/1.1 200 \xff\xfe\r\n"]
CONTENT_TYPES = [b"image/jpeg", b"image/png", b"image/webp", b"image/gif", b"application/octet-stream",
                 b"", b"text/html; charset=utf-8", b"image/svg+xml", b"IMAGE/JPEG", b"image/jpeg; q=\xff",
                 b"image/", b"image/jpeg=x"]
LOCATIONS = [b"/r0", b"/r1", b"/r2", b"/robots.txt", b"", b" ", b"//127.0.0.1:{port}/r0",
             b"http://127.0.0.1:{port}/r1", b"http://127.0.0.1:{closed}/x", b"http://[::1]:{port}/r0",
             b"http://169.254.169.254/latest/meta-data/", b"http://10.0.0.1/x", b"ftp://127.0.0.1/x",
             b"javascript:alert(1)", b"data:image/png;base64,iVBORw0KGgo=", b"http://127.0.0.1:99999/x",
             b"http://[zz/", b"http://user:pw@127.0.0.1:{port}/r0", b"../../../../r1?a=b#c", b"/r0 with space",
             b"/caf\xc3\xa9", b"/\xff\xfe", b"http://0.0.0.0:{port}/r0", b"http://127.1:{port}/r0",
             b"HTTP://127.0.0.1:{port}/R0", b"/" + b"a" * 10_000, b"http:///r0", b"http://127.0.0.1:{port}"]
RETRY_AFTER = [b"0", b"1", b"3600", b"-1", b"abc", b"\xb2", b"9" * 400, b"Wed, 21 Oct 2015 07:28:00 GMT",
               b"Fri, 31 Dec 9999 23:59:59 GMT", b"1.5", b""]
ODD_HEADERS = [b"X-Robots-Tag: noai", b"X-Robots-Tag: clipcurate: noimageai", b"X-Robots-Tag: other: noai",
               b"X-Robots-Tag: \xff", b"Connection: close", b"Connection: keep-alive", b"Keep-Alive: timeout=0",
               b"no colon here", b": empty name", b"X-Folded: a\r\n b", b"X-Nul: \x00", b"Content-Encoding: gzip",
               b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, chunked",
               b"X-Big: " + b"b" * 70_000, b"Set-Cookie: a=b"]


@st.composite
def bodies(draw) -> bytes:
    base = draw(st.one_of(
        st.sampled_from(sorted(IMAGES)).map(IMAGES.get),
        st.binary(max_size=256),
        st.just(HTML),
        st.just(b""),
    ))
    return mutate(base, draw(mutations()))


@st.composite
def responses(draw) -> Response:
    """One scripted response: a status line, headers, a framed body, and how it is delivered."""
    if draw(st.integers(0, 9)) == 0:
        status = draw(st.sampled_from(GARBAGE_STATUS))
    else:
        status = b"HTTP/1.1 %d %s\r\n" % (draw(st.sampled_from(STATUS_CODES)), draw(st.sampled_from([b"OK", b"", b"X"])))
    headers = []
    if draw(st.booleans()):
        headers.append(b"Content-Type: " + draw(st.sampled_from(CONTENT_TYPES)))
    if draw(st.integers(0, 3)) == 0:
        headers.append(b"Location: " + draw(st.sampled_from(LOCATIONS)))
    if draw(st.integers(0, 5)) == 0:
        headers.append(b"Retry-After: " + draw(st.sampled_from(RETRY_AFTER)))
    headers += draw(st.lists(st.sampled_from(ODD_HEADERS), max_size=2))
    if draw(st.integers(0, 15)) == 0:
        headers += [b"X-Many-%d: x" % i for i in range(120)]
    body = draw(bodies())
    framing = draw(st.sampled_from(["length", "length", "short", "long", "garbage", "twice", "chunked",
                                    "bad_chunks", "none"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":
        headers.append(b"Content-Length: %d" % max(0, len(body) - draw(st.integers(1, 64))))
    elif framing == "long":
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.sampled_from([1, 100, 10**7, 10**30]))))
    elif framing == "garbage":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"-5", b"abc", b" 12 ", b"\xb2", b"0x10", b"",
                                                                    b"1e3", b"99999999999999999999999"])))
    elif framing == "twice":
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 7)]
    elif framing in ("chunked", "bad_chunks"):
        headers.append(b"Transfer-Encoding: chunked")
        body = _chunked(body, draw(st.integers(1, 64)))
        if framing == "bad_chunks":
            body = mutate(body, draw(mutations()))
    message = status + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    return draw(_delivery(message))


def _chunked(body: bytes, size: int) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@st.composite
def _delivery(draw, message: bytes) -> Response:
    how = draw(st.sampled_from(["whole", "whole", "whole", "close", "pieces", "cut", "cut_reset", "cut_hang",
                                "drip", "reset"]))
    cut = draw(st.integers(0, max(0, len(message) - 1)))
    if how == "whole":
        return (("send", message),)
    if how == "close":
        return (("send", message), ("close",))
    if how == "pieces":
        step = max(1, len(message) // draw(st.integers(2, 5)))
        actions = []
        for i in range(0, len(message), step):
            actions += [("send", message[i:i + step]), ("sleep", draw(st.sampled_from([0.0, 0.01, 0.05])))]
        return tuple(actions)
    if how == "cut":
        return (("send", message[:cut]), ("close",))
    if how == "cut_reset":
        return (("send", message[:cut]), ("reset",))
    if how == "cut_hang":
        return (("send", message[:cut]), ("hang",))
    if how == "drip":
        head = message[:cut]
        return (("send", head), *[a for b in message[cut:cut + 40] for a in (("sleep", 0.05), ("send", bytes([b])))],
                ("close",))
    return (("reset",),)


# ---------------------------------------------------------------- a whole case


@dataclass
class DownloadCase:
    """A batch of URLs (templates with ``{port}``/``{closed}``), the server's scripts and
    the stage's parameters; ``rejected`` rows enter already rejected and must leave as they came."""

    urls: list[str]
    plans: dict[str, list[Response]]
    params: dict = field(default_factory=dict)
    rejected: list[bool] = field(default_factory=list)


ODD_URLS = ["", "not a url", "http://", "http://[::1]:{port}/r0", "http://127.0.0.1:{closed}/x",
            "https://127.0.0.1:{port}/r0", "http://127.0.0.1:{port}/r0?q=\u00fc&x=1#frag",
            "http://127.0.0.1:{port}/r1 with space", "http://127.0.0.1:{port}/%zz", "ftp://127.0.0.1:{port}/r0",
            "http://127.0.0.1:{port}/\x00", "http://127.0.0.1:{port}/" + "p" * 5000, "http://127.0.0.1:0/r0",
            "http://127.0.0.1:{port}/r2\r\nX-Injected: 1"]


@st.composite
def download_cases(draw) -> DownloadCase:
    n = draw(st.integers(1, 4))
    urls, rejected = [], []
    for i in range(n):
        if draw(st.integers(0, 5)) == 0:
            urls.append(draw(st.sampled_from(ODD_URLS)))
        else:
            urls.append(f"http://127.0.0.1:{{port}}/r{draw(st.integers(0, 2))}")
        rejected.append(draw(st.integers(0, 9)) == 0)
    plans = {f"/r{i}": draw(st.lists(responses(), min_size=1, max_size=2)) for i in range(3)}
    if draw(st.booleans()):
        plans["/robots.txt"] = draw(st.lists(responses(), min_size=1, max_size=2))
    params = {
        "respect_robots_txt": draw(st.booleans()),
        "retries": draw(st.integers(0, 1)),
        "max_redirects": draw(st.integers(0, 3)),
        "max_bytes": draw(st.sampled_from([4096, 1 << 20])),
        "min_image_size": draw(st.sampled_from([0, 8])),
        "max_aspect_ratio": draw(st.sampled_from([float("inf"), 3.0])),
        "encode_format": draw(st.sampled_from(["jpg", "png", "webp"])),
        "resize_mode": draw(st.sampled_from(["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])),
    }
    return DownloadCase(urls, plans, params, rejected)
