"""The HTTP fetch behind the download stage: polite, safe, and accountable.

img2dataset's ``urllib.urlopen`` call cannot do what a crawl of the open web needs,
so one fetch here is a small state machine on ``http.client``:

- safety: only http(s); every hop (the first URL and each redirect target) is
  resolved with DNS and refused if any address is private, loopback, link-local,
  reserved or a cloud metadata address (``addresses``: also when an IPv6 form embeds
  one), unless the recipe allows private networks
  (or lists that exact ``ip:port``); the connection then goes to the checked
  address, so a second DNS answer cannot swap it (DNS rebinding); redirects are
  limited and a revisited URL is a loop;
- opt-out: robots.txt per host, fetched once per worker and cached (RFC 9309:
  a 4xx robots.txt allows everything, an unreachable one disallows, here as a
  transient failure of the row), and ``X-Robots-Tag`` read from the response
  headers **before the body**, parsed as img2dataset's ``is_disallowed`` does;
- politeness: per-host concurrency and minimum interval between request starts,
  bounded retries only for transient failures with full-jitter exponential backoff
  (AWS architecture blog, "Exponential Backoff And Jitter"), ``Retry-After``
  honoured on 429/503 and applied to the whole host;
- limits: a total time limit per request (a server that drips bytes cannot hold a
  thread), a maximum response size checked on ``Content-Length`` and while reading,
  a content-type check before the body, keep-alive connections reused per host;
- accounting: every failure is one category of the failure ledger, optionally with
  a ``=detail`` (``http_4xx=429``), that the stage writes into ``reject``.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import random
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.robotparser
from collections import OrderedDict
from dataclasses import dataclass

from clipcurate.pipelines.download.addresses import is_public

# The failure ledger (the stage writes "download:<category>[=detail]").
CATEGORIES = ("dns", "connect", "timeout", "http_4xx", "http_5xx", "opt_out", "not_image", "decode_error",
              "too_small", "too_large", "private_address", "redirect_loop", "bad_scheme", "aspect_ratio")
# Failures worth fetching again later (``curate retry``); dns is not retried within a run.
TRANSIENT_CATEGORIES = frozenset({"timeout", "connect", "http_5xx", "dns"})  # and http_4xx=429
REDIRECTS = (301, 302, 303, 307, 308)
IMAGE_TYPES_OTHER = frozenset({"application/octet-stream", "binary/octet-stream", ""})
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309 2.5: parse at least 500 KiB
ROBOTS_FAILURE_TTL = 30.0  # seconds an unreachable robots.txt is remembered before asking again
CHUNK = 1 << 16
MAX_HOSTS = 20_000  # per-host state (robots.txt, gates) kept per worker
MAX_IDLE_CONNECTIONS = 128  # kept-alive sockets per worker, all hosts together
IDLE_SECONDS = 20.0  # servers close idle keep-alive connections; do not reuse older ones


def is_transient(reason: str) -> bool:
    """Whether a failure may succeed later; ``reason`` is a ledger entry without the stage
    prefix (``http_4xx=429``, ``timeout``). A 4xx other than 429, an opt-out or a bad image
    will not change by asking again."""
    if reason == "connect=tls":
        return False
    return reason == "http_4xx=429" or reason.split("=", 1)[0] in TRANSIENT_CATEGORIES


def is_disallowed(headers, user_agent_token: str, directives: set[str]) -> bool:
    """``X-Robots-Tag`` opt-out, with the behaviour of img2dataset's ``is_disallowed``
    (``img2dataset.downloader``; that module cannot be imported without the img2dataset
    package, which loads torch): each header value is ``[token:] directive, ...``; it
    applies when it names no token or ours; any listed directive opts out. A test checks
    both functions agree."""
    for value in headers.get_all("X-Robots-Tag") or []:
        parts = value.split(":", 1)
        named = parts[0].lower() if len(parts) == 2 else None
        if (named is None or named == user_agent_token) and any(
                d.strip().lower() in directives for d in parts[-1].split(",")):
            return True
    return False


class FetchError(Exception):
    """A failed fetch, as a ledger category with an optional detail."""

    def __init__(self, category: str, detail: str | None = None, retry_after: float | None = None,
                 host: "_Host | None" = None):
        super().__init__(category if detail is None else f"{category}={detail}")
        self.category = category
        self.detail = detail
        self.retry_after = retry_after
        self.host = host

    @property
    def reason(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class FetchPolicy:
    """Everything a fetch obeys; built from the stage's config."""

    timeout: float = 10.0
    retries: int = 2
    backoff: float = 1.0
    max_retry_after: float = 60.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent_token: str = "clipcurate"
    disallowed_header_directives: frozenset[str] = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
    respect_robots_txt: bool = True
    host_concurrency: int = 16
    host_min_interval: float = 0.0
    allow_private_networks: bool = False
    private_allowlist: frozenset[tuple[str, int]] = frozenset()

    @property
    def user_agent(self) -> str:
        # img2dataset's string, with our token: sites match robots rules on the token
        agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
        if self.user_agent_token:
            agent += f" (compatible; {self.user_agent_token}; +https://github.com/clipcurate/clipcurate)"
        return agent


class Fetcher:
    """One per worker: host gates, robots.txt cache and idle connections, shared by threads."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._token = policy.user_agent_token.strip().lower()
        self._directives = {d.strip().lower() for d in policy.disallowed_header_directives}
        # both bounded: a long crawl meets millions of hosts (least recently used go first)
        self._hosts: OrderedDict[tuple[str, str, int], _Host] = OrderedDict()
        self._idle: OrderedDict[tuple, list[tuple[http.client.HTTPConnection, float]]] = OrderedDict()
        self._idle_count = 0
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context()

    # ---------------------------------------------------------------- public

    def fetch(self, url: str, deadline: float) -> tuple[bytes | None, str | None]:
        """The body of an image URL, or ``(None, reason)``; never raises, never passes ``deadline``
        (a ``time.monotonic()`` value) by more than a scheduling delay."""
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, deadline), None
            except FetchError as err:
                if not self._retry_allowed(err, attempt):
                    return None, err.reason
                if err.retry_after is not None:
                    if err.retry_after > self.policy.max_retry_after:
                        return None, err.reason
                    wait = err.retry_after
                else:
                    wait = random.uniform(0, self.policy.backoff * 2 ** attempt)
                if time.monotonic() + wait >= deadline:
                    return None, err.reason
                if err.host is not None and err.retry_after is not None:
                    err.host.pause_until(time.monotonic() + wait)
                time.sleep(wait)
                attempt += 1
            except Exception as err:  # a bug or an exotic socket error: still a ledger entry
                return None, f"connect={type(err).__name__}"

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._idle_count = self._idle, OrderedDict(), 0
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()

    # ---------------------------------------------------------------- one attempt

    def _retry_allowed(self, err: FetchError, attempt: int) -> bool:
        # a name that does not resolve now will not resolve in a second either
        return attempt < self.policy.retries and err.category != "dns" and is_transient(err.reason)

    def _fetch_once(self, url: str, deadline: float) -> bytes:
        seen = {url}
        for _ in range(self.policy.max_redirects + 1):
            parts = _split(url)
            host = self._host(parts)
            if self.policy.respect_robots_txt and not self._robots(host, parts, deadline).can_fetch(self._token, url):
                raise FetchError("opt_out", "robots_txt")
            status, headers, body = self._exchange(host, parts, deadline, image=True)
            if status in REDIRECTS:
                location = headers.get("Location")
                if not location:
                    raise FetchError("redirect_loop", "no_location")
                try:
                    url = urllib.parse.urljoin(url, location.strip())
                except ValueError:  # "http://[zz/": a bracketed host that is no IPv6 address
                    raise FetchError("bad_scheme", "malformed") from None
                if url in seen:
                    raise FetchError("redirect_loop")
                seen.add(url)
                continue
            if status == 429:
                raise FetchError("http_4xx", "429", _retry_after(headers), host)
            if 400 <= status < 500 or 300 <= status < 400:
                raise FetchError("http_4xx")
            if status >= 500:
                raise FetchError("http_5xx", None, _retry_after(headers) if status == 503 else None, host)
            if not body:
                raise FetchError("not_image", "empty")
            return body
        raise FetchError("redirect_loop", "too_many")

    def _exchange(self, host: "_Host", parts: urllib.parse.SplitResult, deadline: float, *, image: bool,
                  max_bytes: int | None = None) -> tuple[int, http.client.HTTPMessage, bytes | None]:
        """One request/response within ``timeout`` from its start (after waiting for the host).
        Bodies of redirects and errors are not read; an image body is read only after its
        headers pass the opt-out, content-type and size checks."""
        address = self._resolve(parts)
        host.acquire(deadline)
        limit = min(deadline, time.monotonic() + self.policy.timeout)
        conn = None
        try:
            conn, response = self._send(host, parts, address, limit)
            status = response.status
            if not 200 <= status < 300:
                self._finish(host, address, conn, response, drain=True, limit=limit)
                return status, response.msg, None
            if image:
                self._check_headers(response)
            body = self._read(conn, response, limit, max_bytes or self.policy.max_bytes)
            self._finish(host, address, conn, response)
            return status, response.msg, body
        except FetchError:
            if conn is not None:
                conn.close()
            raise
        except (TimeoutError, socket.timeout):
            if conn is not None:
                conn.close()
            raise FetchError("timeout") from None
        except ssl.SSLError:
            if conn is not None:
                conn.close()
            raise FetchError("connect", "tls") from None
        except http.client.IncompleteRead:  # a chunked body cut off
            if conn is not None:
                conn.close()
            raise FetchError("connect", "incomplete") from None
        except ValueError:  # http.client.InvalidURL and friends: characters no request may hold
            if conn is not None:
                conn.close()
            raise FetchError("bad_scheme", "malformed") from None
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            raise FetchError("connect") from None
        finally:
            host.release()

    def _send(self, host: "_Host", parts, address: tuple[str, ...], limit: float):
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # web URLs often carry raw UTF-8 or spaces; send them percent-encoded, keep existing escapes
        path = urllib.parse.quote(path, safe="/%:@!$&'()*+,;=?~-._[]")
        headers = {"User-Agent": self.policy.user_agent, "Accept": "image/*,*/*;q=0.8"}
        for reused in (True, False):
            conn = self._connection(host, address, limit, reuse=reused)
            if conn is None:
                continue
            try:
                conn.request("GET", path, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if not reused:  # a kept-alive connection the server had closed: one fresh try
                    raise
            except BaseException:
                conn.close()
                raise
        raise FetchError("connect")  # pragma: no cover - the loop returns or raises

    def _check_headers(self, response: http.client.HTTPResponse) -> None:
        if self._directives and is_disallowed(response.msg, self._token, self._directives):
            raise FetchError("opt_out", "x_robots_tag")
        kind = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not (kind.startswith("image/") and kind != "image/svg+xml") and kind not in IMAGE_TYPES_OTHER:
            raise FetchError("not_image", kind.replace("=", "_")[:40] or None)
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.policy.max_bytes:
            raise FetchError("too_large", "bytes")

    def _read(self, conn, response, limit: float, max_bytes: int) -> bytes:
        chunks, size = [], 0
        while response.length != 0:  # None: chunked or until close
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise FetchError("timeout")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = response.read1(CHUNK)  # at most one recv: the time limit is checked between them
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large", "bytes")
            chunks.append(chunk)
        if response.length:  # closed before the Content-Length it declared: worth asking again
            raise FetchError("connect", "incomplete")
        response.close()  # the body is complete: the connection may serve the next request
        return b"".join(chunks)

    # ---------------------------------------------------------------- connections

    def _connection(self, host: "_Host", address: tuple[str, ...], limit: float, reuse: bool):
        key = (host.key, address)
        timeout = max(0.001, limit - time.monotonic())
        if reuse:
            conn = self._take_idle(key)
            if conn is not None:
                conn.sock.settimeout(timeout)
            return conn
        scheme, hostname, port = host.key
        if scheme == "https":
            conn = http.client.HTTPSConnection(hostname, port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(hostname, port, timeout=timeout)
        # connect to the address that passed the safety check, not a fresh DNS answer
        conn._create_connection = lambda _addr, t, source: _connect_any(address, port, t, source)
        return conn

    def _finish(self, host, address, conn, response, drain: bool = False, limit: float = 0.0) -> None:
        """Keep the connection for the next request to this host when the protocol allows."""
        if drain:
            length = response.length
            if length is None or length > CHUNK or limit - time.monotonic() <= 0:
                conn.close()
                return
            try:
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                return
        if response.will_close or conn.sock is None:
            conn.close()
            return
        key = (host.key, address)
        evicted = None
        with self._lock:
            idle = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(idle) >= self.policy.host_concurrency:
                evicted = conn
            else:
                idle.append((conn, time.monotonic()))
                self._idle_count += 1
                if self._idle_count > MAX_IDLE_CONNECTIONS:
                    oldest_key, oldest = next(iter(self._idle.items()))
                    evicted = oldest.pop(0)[0]
                    self._idle_count -= 1
                    if not oldest:
                        del self._idle[oldest_key]
        if evicted is not None:
            evicted.close()

    def _take_idle(self, key):
        """A kept-alive connection to this host, unless the server has likely closed it."""
        stale = []
        conn = None
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                candidate, since = idle.pop()
                self._idle_count -= 1
                if time.monotonic() - since < IDLE_SECONDS and candidate.sock is not None:
                    conn = candidate
                    break
                stale.append(candidate)
            if idle is not None and not idle:
                del self._idle[key]
        for old in stale:
            old.close()
        return conn

    # ---------------------------------------------------------------- safety

    def _resolve(self, parts: urllib.parse.SplitResult) -> tuple[str, ...]:
        """The checked addresses of the URL's host (connections try them in order, as
        ``socket.create_connection`` does); refuses private networks unless allowed."""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            raise FetchError("dns") from None
        addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
        if not addresses:
            raise FetchError("dns")
        for address in addresses:
            if not self._address_allowed(address, port):
                raise FetchError("private_address")
        return addresses

    def _address_allowed(self, address: str, port: int) -> bool:
        if self.policy.allow_private_networks:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if (str(ip), port) in self.policy.private_allowlist:
            return True
        return is_public(address)  # IPv6 forms that embed an IPv4 address judged by that address

    # ---------------------------------------------------------------- robots.txt

    def _host(self, parts: urllib.parse.SplitResult) -> "_Host":
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        with self._lock:
            host = self._hosts.get(key)
            if host is None:
                host = self._hosts[key] = _Host(key, self.policy.host_concurrency, self.policy.host_min_interval)
                if len(self._hosts) > MAX_HOSTS:
                    self._hosts.popitem(last=False)
            else:
                self._hosts.move_to_end(key)
        return host

    def _robots(self, host: "_Host", parts, deadline: float) -> urllib.robotparser.RobotFileParser:
        with host.robots_lock:  # one fetch per host; other threads wait for its answer
            now = time.monotonic()
            if isinstance(host.robots, FetchError) and now < host.robots_until:
                raise FetchError(host.robots.category, host.robots.detail)
            if isinstance(host.robots, urllib.robotparser.RobotFileParser):
                return host.robots
            try:
                host.robots = self._fetch_robots(host, parts, deadline)
            except FetchError as err:
                host.robots, host.robots_until = err, now + ROBOTS_FAILURE_TTL
                raise FetchError(err.category, err.detail) from None
            return host.robots

    def _fetch_robots(self, host: "_Host", parts, deadline: float) -> urllib.robotparser.RobotFileParser:
        """RFC 9309: 2xx parse; 4xx allow all; 5xx or unreachable: disallow (as a transient failure)."""
        url = f"{parts.scheme}://{parts.netloc}/robots.txt"
        seen = {url}
        target, target_parts = host, _split(url)
        for _ in range(5):  # RFC 9309 2.3.1.2: follow at least five redirects
            status, headers, body = self._exchange(target, target_parts, deadline, image=False,
                                                   max_bytes=ROBOTS_MAX_BYTES)
            if status in REDIRECTS and headers.get("Location"):
                url = urllib.parse.urljoin(url, headers["Location"].strip())
                if url in seen:
                    break
                seen.add(url)
                target_parts = _split(url)
                target = self._host(target_parts)
                continue
            parser = urllib.robotparser.RobotFileParser()
            if 200 <= status < 300:
                parser.parse((body or b"").decode("utf-8", "replace").splitlines())
            elif status < 500:  # 4xx, or a redirect without a Location: unavailable
                parser.allow_all = True
            else:
                raise FetchError("http_5xx" if status >= 500 else "http_4xx")
            return parser
        parser = urllib.robotparser.RobotFileParser()
        parser.allow_all = True  # RFC 9309: too many redirects counts as unavailable (4xx)
        return parser


class _Host:
    """Per-host politeness state within one worker."""

    def __init__(self, key: tuple[str, str, int], concurrency: int, min_interval: float):
        self.key = key
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._next_start = 0.0
        self._min_interval = min_interval
        self.robots_lock = threading.Lock()
        self.robots: urllib.robotparser.RobotFileParser | FetchError | None = None
        self.robots_until = 0.0

    def acquire(self, limit: float) -> None:
        if not self._slots.acquire(timeout=max(0.0, limit - time.monotonic())):
            raise FetchError("timeout", "host_queue")
        with self._lock:
            start = max(time.monotonic(), self._next_start)
            self._next_start = start + self._min_interval
        wait = start - time.monotonic()
        if wait > 0:
            if start >= limit:
                self._slots.release()
                raise FetchError("timeout", "host_queue")
            time.sleep(wait)

    def release(self) -> None:
        self._slots.release()

    def pause_until(self, when: float) -> None:
        """Retry-After applies to the host, not only to the one URL that got it."""
        with self._lock:
            self._next_start = max(self._next_start, when)


def _connect_any(addresses: tuple[str, ...], port: int, timeout: float, source) -> socket.socket:
    error: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout, source)
        except OSError as err:
            error = err
    raise error


def _split(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise FetchError("bad_scheme", "malformed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("bad_scheme")
    return parts


def _retry_after(headers: http.client.HTTPMessage) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date, RFC 9110 10.2.3)."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
