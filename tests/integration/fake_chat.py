"""Local servers speaking the chat APIs call notifications go to, each as documented:
a Slack incoming webhook, a Teams Workflows webhook, a Google Chat space webhook, and
LINE WORKS API 2.0 (the token endpoint, which verifies the RS256 assertion with the
service account's public key, and the bot's channel message endpoint)."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SLACK_PATH = "/services/T0001/B0001/abcdefSECRET"
TEAMS_PATH = "/workflows/0123/triggers/manual/paths/invoke"
CHAT_PATH = "/v1/spaces/AAAA1234/messages"
CHAT_KEY, CHAT_TOKEN = "chat-key", "chat-SECRET-token"
CHATWORK_TOKEN, CHATWORK_ROOM = "cw-SECRET-token", "123456789"


@dataclass
class FakeChat:
    slack: list[dict[str, Any]] = field(default_factory=list)
    teams: list[dict[str, Any]] = field(default_factory=list)
    chat: list[dict[str, Any]] = field(default_factory=list)
    chatwork: list[dict[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SLACK_PATH, self._slack)
        app.router.add_post("/services/T0001/B0001/archived", self._archived)
        app.router.add_post(TEAMS_PATH, self._teams)
        app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_post("/v2/rooms/{room}/messages", self._chatwork)
        return app

    def _failure(self) -> web.Response | None:
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="upstream trouble")
        return None

    async def _slack(self, request: web.Request) -> web.Response:
        failure = self._failure()
        if failure is not None:
            return failure
        body = await request.json()
        blocks = body.get("blocks", [])
        ok = isinstance(body.get("text"), str) and all(
            b.get("type") in ("header", "section") for b in blocks) and all(
            len(b.get("fields", [])) <= 10 for b in blocks)
        if not ok:
            return web.Response(status=400, text="invalid_blocks")
        self.slack.append(body)
        return web.Response(text="ok")

    async def _archived(self, request: web.Request) -> web.Response:
        return web.Response(status=410, text="channel_is_archived")

    async def _teams(self, request: web.Request) -> web.Response:
        body = await request.json()
        attachment = (body.get("attachments") or [{}])[0]
        if (body.get("type") != "message" or attachment.get("contentType")
                != "application/vnd.microsoft.card.adaptive"
                or attachment.get("content", {}).get("type") != "AdaptiveCard"):
            return web.json_response({"error": {"code": "InvalidRequestContent",
                                                "message": "not an adaptive card"}}, status=400)
        self.teams.append(body)
        return web.Response(status=202)

    async def _chat(self, request: web.Request) -> web.Response:
        if (request.query.get("key"), request.query.get("token")) != (CHAT_KEY, CHAT_TOKEN):
            return web.json_response({"error": {
                "code": 401, "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED"}}, status=401)
        body = await request.json()
        if not isinstance(body.get("text"), str):
            return web.json_response({"error": {"code": 400, "message": "Message cannot be "
                                                "empty.", "status": "INVALID_ARGUMENT"}},
                                     status=400)
        self.chat.append(body)
        return web.json_response({"name": "spaces/AAAA1234/messages/" + secrets.token_hex(8),
                                  "text": body["text"]})


    async def _chatwork(self, request: web.Request) -> web.Response:
        if request.headers.get("X-ChatWorkToken") != CHATWORK_TOKEN:
            return web.json_response({"errors": ["Invalid API token"]}, status=401)
        if request.match_info["room"] != CHATWORK_ROOM:
            return web.json_response({"errors": ["You don't have permission to send "
                                                 "messages in this room"]}, status=403)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not form.get("body"):
            return web.json_response({"errors": ["Parameter [body] is required"]}, status=400)
        self.chatwork.append(form)
        return web.json_response({"message_id": str(1000 + len(self.chatwork))})


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class FakeLineWorks:
    public_key: rsa.RSAPublicKey
    client_id: str = "client-id-1"
    client_secret: str = "client-SECRET"
    service_account: str = "abcd.serviceaccount@example.jp"
    bot_id: str = "2000001"
    channel_id: str = "channel-1"
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse_all: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/v2.0/token", self._token)
        app.router.add_post("/v1.0/bots/{bot}/channels/{channel}/messages", self._message)
        return app

    def _oauth_error(self, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description},
                                 status=400 if error != "invalid_client" else 401)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._oauth_error("unsupported_grant_type", "grant_type")
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id,
                                                                   self.client_secret):
            return self._oauth_error("invalid_client", "client authentication failed")
        if form.get("scope") != "bot":
            return self._oauth_error("invalid_scope", "scope")
        assertion = str(form.get("assertion", ""))
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_unb64url(header_b64))
            claims = json.loads(_unb64url(claims_b64))
            self.public_key.verify(_unb64url(signature_b64),
                                   f"{header_b64}.{claims_b64}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature):
            return self._oauth_error("invalid_grant", "assertion signature")
        if (header.get("alg") != "RS256" or claims.get("iss") != self.client_id
                or claims.get("sub") != self.service_account
                or claims.get("exp", 0) - claims.get("iat", 0) > 3600):
            return self._oauth_error("invalid_grant", "assertion claims")
        self.assertions.append(claims)
        token = "tok-" + secrets.token_hex(8)
        self.issued.append(token)
        return web.json_response({"access_token": token, "refresh_token": "r-" + token,
                                  "scope": "bot", "token_type": "Bearer",
                                  "expires_in": "86400"})

    async def _message(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked or self.refuse_all:
            return web.json_response({"code": "UNAUTHORIZED",
                                      "description": "Authentication failed"}, status=401)
        if (request.match_info["bot"], request.match_info["channel"]) != (self.bot_id,
                                                                          self.channel_id):
            return web.json_response({"code": "NOT_FOUND",
                                      "description": "The channel is not found"}, status=404)
        body = await request.json()
        content = body.get("content", {})
        if content.get("type") != "text" or not content.get("text"):
            return web.json_response({"code": "INVALID_PARAMETER",
                                      "description": "content"}, status=400)
        self.messages.append((token, body))
        return web.Response(status=201)
