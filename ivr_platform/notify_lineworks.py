"""Call notifications to a LINE WORKS talk room through a bot (API 2.0).

What the merchant gives (the CallCall guide's list): Client ID, Client Secret, Service
Account, Bot ID, the talk room (channel) ID and the app's Private Key.

1. A JWT (RS256) signed with the private key: ``iss`` the Client ID, ``sub`` the Service
   Account, ``iat`` now, ``exp`` an hour later.
2. ``POST https://auth.worksmobile.com/oauth2/v2.0/token``, a form: ``assertion`` (the
   JWT), ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, ``client_id``,
   ``client_secret``, ``scope=bot``; the answer's ``access_token`` and ``expires_in``
   (seconds, a string). The token is kept until a minute before it expires.
3. ``POST https://www.worksapis.com/v1.0/bots/{botId}/channels/{channelId}/messages``
   with ``Authorization: Bearer <token>`` and ``{"content": {"type": "text", "text"}}``;
   201. A 401 there fetches a new token once (revoked or rotated keys).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ivr_platform.delivery import Rejected, Unavailable, call, check_url, json_object
from ivr_platform.notice import CallNotice
from shared.language import Language

AUTH_URL = "https://auth.worksmobile.com/oauth2/v2.0/token"
API_BASE = "https://www.worksapis.com/v1.0"
JWT_LIFETIME_S = 3600
TOKEN_MARGIN_S = 60
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True, slots=True)
class LineWorksSettings:
    client_id: str
    client_secret: str
    service_account: str
    private_key_pem: str
    bot_id: str
    channel_id: str
    language: Language = Language.JAPANESE
    auth_url: str = AUTH_URL
    api_base: str = API_BASE
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url("auth_url", self.auth_url)
        check_url("api_base", self.api_base)

    def __repr__(self) -> str:   # never the secret or the key in a log line
        return (f"LineWorksSettings(client_id={self.client_id!r}, bot_id={self.bot_id!r}, "
                f"channel_id={self.channel_id!r})")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def service_account_jwt(settings: LineWorksSettings, now: float) -> str:
    """The RS256 assertion for the token request."""
    key = serialization.load_pem_private_key(settings.private_key_pem.encode(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("private_key_pem: LINE WORKS keys are RSA")
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = _b64url(json.dumps({"iss": settings.client_id, "sub": settings.service_account,
                                 "iat": int(now), "exp": int(now) + JWT_LIFETIME_S}).encode())
    signing_input = f"{header}.{claims}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{_b64url(signature)}"


class LineWorksBot:
    def __init__(self, session: aiohttp.ClientSession, settings: LineWorksSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self.settings = settings
        self._clock = clock
        self._token: tuple[str, float] | None = None   # (token, expires at)

    async def notify(self, notice: CallNotice) -> None:
        s = self.settings
        url = f"{s.api_base.rstrip('/')}/bots/{s.bot_id}/channels/{s.channel_id}/messages"
        body = {"content": {"type": "text", "text": notice.text(s.language)}}
        for attempt in (1, 2):
            token = await self._access_token(renew=attempt == 2)
            status, text = await call(
                self._session, "POST", url, json_body=body, timeout_s=s.timeout_s,
                headers={"Authorization": f"Bearer {token}"})
            if status == 401 and attempt == 1:
                continue
            if status >= 400:
                error = json_object(text)
                raise Rejected(status, error.get("code"),
                               str(error.get("description") or text[:200]))
            return

    async def _access_token(self, renew: bool) -> str:
        now = self._clock()
        if self._token is not None and not renew and now < self._token[1]:
            return self._token[0]
        s = self.settings
        form = {"assertion": service_account_jwt(s, now), "grant_type": GRANT_TYPE,
                "client_id": s.client_id, "client_secret": s.client_secret, "scope": "bot"}
        status, text = await call(self._session, "POST", s.auth_url, data=form,
                                  timeout_s=s.timeout_s, headers={"Accept": "application/json"})
        body = json_object(text)
        if status >= 400:
            raise Rejected(status, body.get("error"),
                           str(body.get("error_description") or text[:200]))
        token, expires = body.get("access_token"), str(body.get("expires_in", ""))
        if not isinstance(token, str) or not expires.isdigit():
            raise Unavailable(f"{s.auth_url}: no access_token/expires_in in the answer")
        self._token = (token, now + int(expires) - TOKEN_MARGIN_S)
        return token
