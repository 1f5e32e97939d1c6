"""HTTP Signatures as fediverse servers use them (draft-cavage-http-signatures-12, rsa-sha256, with a
SHA-256 Digest of the body): what Mastodon, Lemmy, Misskey and Akkoma sign deliveries with and check."""

from __future__ import annotations

import base64
import hashlib
import re
from email.utils import formatdate

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SIGNED = ("(request-target)", "host", "date", "digest", "content-type")


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def digest(body: bytes) -> str:
    return "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def _signing_string(method: str, path_qs: str, headers: dict[str, str], names: list[str]) -> bytes:
    lower = {k.lower(): v for k, v in headers.items()}
    lines = []
    for name in names:
        value = f"{method.lower()} {path_qs}" if name == "(request-target)" else lower[name]
        lines.append(f"{name}: {value}")
    return "\n".join(lines).encode()


def sign(key: rsa.RSAPrivateKey, key_id: str, method: str, path_qs: str, host: str, body: bytes,
         content_type: str = "application/activity+json") -> dict[str, str]:
    headers = {"Host": host, "Date": formatdate(usegmt=True), "Digest": digest(body), "Content-Type": content_type}
    sig = key.sign(_signing_string(method, path_qs, headers, list(SIGNED)), padding.PKCS1v15(), hashes.SHA256())
    headers["Signature"] = (
        f'keyId="{key_id}",algorithm="rsa-sha256",headers="{" ".join(SIGNED)}",signature="{base64.b64encode(sig).decode()}"'
    )
    return headers


def verify(pem: bytes, method: str, path_qs: str, headers: dict[str, str], body: bytes) -> str | None:
    """None when the signature and the body's digest hold; otherwise what is wrong."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "signature" not in lower:
        return "no Signature header"
    params = dict(re.findall(r'(\w+)="([^"]*)"', lower["signature"]))
    if lower.get("digest") != digest(body):
        return "Digest does not match the body"
    public = serialization.load_pem_public_key(pem)
    try:
        public.verify(base64.b64decode(params["signature"]), _signing_string(method, path_qs, headers, params["headers"].split()),
                      padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg, arg-type]
    except (InvalidSignature, KeyError, ValueError) as exc:
        return f"bad signature: {exc.__class__.__name__}"
    return None
