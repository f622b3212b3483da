"""A local TLS-terminating HTTP CONNECT proxy: the way the real SDK reaches the simulator.

The official SDK only talks to ``https://qyapi.weixin.qq.com``; it cannot be pointed at
another URL, but it honours a ``proxy`` argument (``http://host:port``) and then opens an
HTTP ``CONNECT`` tunnel. It does not verify the certificate chain, only the host name
(fact sheet §1.5 item 4), so this proxy answers ``CONNECT``, terminates TLS itself with a
self-signed certificate for that host name, and hands the decrypted stream to an
in-process HTTP handler (the fake WeCom endpoints in :mod:`wxarchive.simulate.server`).

Only loopback addresses are accepted for listening: the simulator serves secrets.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hmac
import ipaddress
import logging
import os
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WECOM_HOST = "qyapi.weixin.qq.com"

log = logging.getLogger("wxarchive.simulate")

TunnelHandler = Callable[[ssl.SSLSocket, tuple[str, int]], None]
"""Serves the HTTP traffic of one decrypted tunnel; returns when the tunnel is done."""

# Errors that mean "the peer went away or spoke garbage": normal for a proxy, never a bug.
QUIET_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError, socket.timeout, OSError)


def make_certificate(hostname: str = WECOM_HOST) -> tuple[bytes, bytes]:
    """Return (certificate PEM, private key PEM) of a fresh self-signed cert for hostname.

    EC P-256 keeps the per-connection handshake cheap (the SDK opens a new tunnel for
    almost every call). The name is in the SAN, which is what libcurl checks.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_tls_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server-side TLS context for the given PEMs (ssl needs files: use a private tmpdir)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="wxarchive-sim-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def require_loopback(host: str) -> None:
    """Refuse to listen anywhere but an IPv4 loopback address."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"simulator listens on 127.0.0.1 only, not {host!r}") from exc
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"simulator listens on 127.0.0.1 only, not {host!r}")


class _ConnectHandler(BaseHTTPRequestHandler):
    """Answers one client connection to the proxy: CONNECT, then the TLS tunnel."""

    protocol_version = "HTTP/1.1"
    server_version = "wxarchive-sim-proxy"
    # Unbuffered reads: nothing after the CONNECT header block may be swallowed by a
    # read-ahead buffer, because the TLS handshake that follows reads the raw socket.
    rbufsize = 0
    timeout = 60
    server: TunnelProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence http.server's access log: request lines carry tokens and secrets."""

    def do_CONNECT(self) -> None:  # noqa: N802 (http.server naming)
        """Open a tunnel to the fake WeCom host if the target and credentials are right."""
        self.close_connection = True
        if not self._authorized():
            self.server.count("proxy_auth_failures")
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="wxarchive-sim"')
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        host, _, port = self.path.rpartition(":")
        if host.lower() != self.server.tunnel_host or port != "443":
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.server.count("tunnels")
        self._run_tunnel()

    def _authorized(self) -> bool:
        """Check Proxy-Authorization: Basic against the configured user:pass (if any)."""
        expected = self.server.proxy_auth
        if expected is None:
            return True
        scheme, _, value = (self.headers.get("Proxy-Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, expected.encode("utf-8"))

    def _run_tunnel(self) -> None:
        """TLS-wrap the client socket and let the endpoint handler serve it until done."""
        raw: socket.socket = self.connection
        raw.settimeout(self.timeout)
        try:
            tls = self.server.tls_context.wrap_socket(raw, server_side=True)
        except QUIET_ERRORS:
            return
        self.server.track(tls)
        try:
            self.server.tunnel_handler(tls, self.client_address)
        except QUIET_ERRORS:
            pass
        finally:
            self.server.untrack(tls)
            tls.close()


class TunnelProxy(socketserver.ThreadingTCPServer):
    """The CONNECT proxy server: one thread per client connection, loopback only."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        tls_context: ssl.SSLContext,
        tunnel_handler: TunnelHandler,
        proxy_auth: str | None = None,
        tunnel_host: str = WECOM_HOST,
        counter: Callable[[str], None] | None = None,
    ) -> None:
        require_loopback(address[0])
        self.tls_context = tls_context
        self.tunnel_handler = tunnel_handler
        self.proxy_auth = proxy_auth
        self.tunnel_host = tunnel_host.lower()
        self._counter = counter
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _ConnectHandler)

    def count(self, name: str) -> None:
        """Report a proxy-level event to the owner's statistics, if it wants them."""
        if self._counter is not None:
            self._counter(name)

    def track(self, sock: socket.socket) -> None:
        """Remember an open tunnel so close() can cut it instead of waiting for idle timeout."""
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def open_tunnels(self) -> int:
        """Number of tunnels currently open (for leak checks)."""
        with self._open_lock:
            return len(self._open)

    def close_tunnels(self) -> None:
        """Shut every open tunnel down so its handler thread ends promptly."""
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: object, client_address: object) -> None:
        """Peers vanishing is routine for a proxy; only log unexpected failures."""
        exc = sys.exc_info()[1]
        if isinstance(exc, QUIET_ERRORS):
            return
        log.exception("simulator proxy: unexpected error on a client connection")
