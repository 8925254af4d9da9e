"""A stand-in OIDC identity provider: a JWKS served over loopback HTTP, and keys to sign with.

The test controls the document (:meth:`JwksServer.publish`), can make the server fail or stall,
and reads when each request arrived (``time.monotonic``, which on Linux is one clock for every
process, so the gateway's rate limit can be reasoned about from here).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hubbub.dev.embedded import free_port

ISSUER = "https://idp.test/realms/hubbub"
AUDIENCE = "hubbub-clients"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any  # an RSA or EC private key (cryptography)

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256") -> SigningKey:
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str, alg: str = "ES256") -> SigningKey:
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
        return cls(kid, alg, ec.generate_private_key(curve))

    def jwk(self, with_alg: bool = True) -> dict[str, Any]:
        """The public JWK as an IdP publishes it (``alg`` optional, as many omit it)."""
        public = self.private.public_key()
        tool = RSAAlgorithm if self.alg[0] in "RP" else ECAlgorithm
        jwk: dict[str, Any] = tool.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(
        self,
        sub: str | None = "idp-user",
        *,
        minutes: float = 10,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as the IdP would issue it; ``claims`` override or add (None: leave out)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + int(minutes * 60),
            "sub": sub,
            **claims,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(
            body, self.private, algorithm=self.alg, headers={"kid": self.kid, **(header or {})}
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], mac_key: bytes | None) -> str:
    """A JWT built by hand, which PyJWT refuses to make: HS256 keyed with a public key's PEM
    (the algorithm-confusion attack) or ``alg: none`` (``mac_key`` None: empty signature)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b""
    if mac_key is not None:
        signature = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class JwksServer:
    """Serves ``/jwks`` on a loopback port: the published document, an HTTP error
    (:attr:`status`), a body of any size, or nothing while :attr:`answer` is cleared."""

    def __init__(self) -> None:
        self.port = free_port()
        self.document: bytes = b'{"keys": []}'
        self.status = 200
        self.answer = threading.Event()  # cleared: requests wait until it is set (or 10 s)
        self.answer.set()
        self.drip = 0.0  # > 0: the body is sent one byte per this many seconds
        self.requests: list[float] = []  # time.monotonic() of each request's arrival
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append(time.monotonic())
                    status, body = server.status, server.document
                server.answer.wait(10)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if server.drip <= 0:
                        self.wfile.write(body)
                    for i in range(len(body) if server.drip > 0 else 0):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(server.drip)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def publish(self, *keys: SigningKey, with_alg: bool = True) -> None:
        self.serve_raw(json.dumps({"keys": [k.jwk(with_alg) for k in keys]}).encode())

    def serve_raw(self, body: bytes, status: int = 200) -> None:
        with self.lock:
            self.document, self.status = body, status

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    @property
    def last(self) -> float:
        with self.lock:
            return self.requests[-1] if self.requests else -1e9

    def start(self) -> JwksServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.answer.set()
        self.server.shutdown()
        self.server.server_close()
