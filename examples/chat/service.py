"""The example chat: a FastAPI service that handles what browsers invoke, through Hubbub.

Two directions, one service:

- **client → service**: the page's ``invoke("joinRoom", "lobby")``, ``invoke("sendMessage",
  "lobby", "hi")``, its connection and disconnection reach the handlers below through the
  upstream SDK (:mod:`hubbub.upstream`); a handler's return value is the page's ``invoke()``
  result, a :class:`~hubbub.upstream.HubError` its error.
- **service → clients**: the handlers answer with sends (``chat.send_to_group``, ...) and group
  changes (``chat.add_connection_to_group``), which the gateways deliver to the pages.

Rooms are Hubbub groups. Pages receive three client methods:

- ``message(room, user, text)``: a chat line, to the room;
- ``system(room, text)``: "alice joined #lobby" (to the room), "alice joined" / "alice left"
  (to everyone, ``room`` is ``""``);
- ``online(users)``: who is connected (sorted user names), to everyone at each change.

Who is online, and which rooms each connection joined, live in **this process's memory**: run
one process of this example. (Several processes of one ``Upstream`` name share the
connections between them, so each would see only its share; a real service would keep this
state in Redis, e.g. a hash of user → connection count.) After a restart the service knows
nobody until pages reconnect. A gateway that crashes sends no disconnected events for its
connections (the reaper removes them from Redis silently, as of this writing), so their users
stay listed.

It also serves the page (``static/``), the official ``@microsoft/signalr`` browser bundle from
``node_modules`` (``npm ci`` in this directory), and ``POST /token``, which mints a client
token for any user name it is given: **no authentication**, as befits a local demo; a real
service would sign tokens only for the user its own login established.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from hubbub.settings import Settings
from hubbub.tokens import mint_token
from hubbub.upstream import Call, ConnectionEvent, Hub, HubError, Upstream

log = logging.getLogger("examples.chat")

HERE = Path(__file__).parent
STATIC = HERE / "static"
# The official client's browser build, installed by `npm ci` in this directory (package.json).
SIGNALR_BUNDLE = HERE / "node_modules" / "@microsoft" / "signalr" / "dist" / "browser"
HUB = "chat"
# Names shown in the page: short and plain (Hubbub's own rules are wider).
USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_TEXT = 500


@dataclass(frozen=True)
class ChatConfig:
    """What the example reads from the environment (Hubbub's own ``HUBBUB_*`` settings, for
    Redis and the access key, come from :class:`~hubbub.settings.Settings`)."""

    # Gateways the pages connect to, taken in turn by successive tokens (CHAT_GATEWAY_URLS,
    # comma-separated); the defaults are `hubbub dev`'s two gateways.
    gateway_urls: tuple[str, ...] = ("http://127.0.0.1:8080", "http://127.0.0.1:8081")
    host: str = "127.0.0.1"  # CHAT_HOST
    port: int = 8000  # CHAT_PORT
    token_minutes: float = 60.0

    @classmethod
    def from_env(cls) -> ChatConfig:
        urls = os.environ.get("CHAT_GATEWAY_URLS")
        gateways = (
            tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip())
            if urls
            else cls.gateway_urls
        )
        if not gateways:
            raise SystemExit("CHAT_GATEWAY_URLS names no gateway")
        return cls(
            gateway_urls=gateways,
            host=os.environ.get("CHAT_HOST", cls.host),
            port=int(os.environ.get("CHAT_PORT", str(cls.port))),
        )


def room_name(room: object) -> str:
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise HubError("a room name is 1 to 32 letters, digits, '_' or '-'")
    return room


@dataclass
class ChatRooms:
    """The hub's handlers and the state they keep (in memory: see the module docstring)."""

    hub: Hub
    online: Counter[str] = field(default_factory=Counter)  # user -> open connections
    rooms: dict[str, set[str]] = field(default_factory=dict)  # connection -> rooms joined

    def register(self) -> None:
        self.hub.on_connected(self.connected)
        self.hub.on_disconnected(self.disconnected)
        self.hub.on("joinRoom")(self.join_room)
        self.hub.on("leaveRoom")(self.leave_room)
        self.hub.on("sendMessage")(self.send_message)
        self.hub.on("online")(self.who_is_online)

    def users(self) -> list[str]:
        return sorted(self.online)

    # ------------------------------------------------------------ connections

    async def connected(self, event: ConnectionEvent) -> None:
        self.rooms.setdefault(event.connection_id, set())
        user = event.user_id
        if user is None:
            return
        self.online[user] += 1
        if self.online[user] == 1:  # a second tab is not news
            await self.hub.send_to_all("system", ["", f"{user} joined"])
            await self.hub.send_to_all("online", [self.users()])

    async def disconnected(self, event: ConnectionEvent) -> None:
        # The gateway already took the connection out of its groups.
        self.rooms.pop(event.connection_id, None)
        user = event.user_id
        if user is None or user not in self.online:
            return
        self.online[user] -= 1
        if self.online[user] <= 0:
            del self.online[user]
            await self.hub.send_to_all("system", ["", f"{user} left"])
            await self.hub.send_to_all("online", [self.users()])

    # ------------------------------------------------------------ invocations

    async def join_room(self, call: Call, room: object) -> str:
        name = room_name(room)
        if not await self.hub.add_connection_to_group(name, call.connection_id):
            raise HubError("your connection is gone")
        self.rooms.setdefault(call.connection_id, set()).add(name)
        # Sent after the join, so the caller sees its own line too.
        await self.hub.send_to_group(name, "system", [name, f"{call.user_id} joined #{name}"])
        return name

    async def leave_room(self, call: Call, room: object) -> str:
        name = room_name(room)
        # Sent before the leave, so the caller sees its own line too.
        await self.hub.send_to_group(name, "system", [name, f"{call.user_id} left #{name}"])
        await self.hub.remove_connection_from_group(name, call.connection_id)
        self.rooms.get(call.connection_id, set()).discard(name)
        return name

    async def send_message(self, call: Call, room: object, text: object) -> str:
        name = room_name(room)
        if name not in self.rooms.get(call.connection_id, ()):
            raise HubError(f"join #{name} before you send to it")
        if not isinstance(text, str) or not text.strip():
            raise HubError("a message is some text")
        if len(text) > MAX_TEXT:
            raise HubError(f"a message is at most {MAX_TEXT} characters")
        return await self.hub.send_to_group(name, "message", [name, call.user_id, text])

    async def who_is_online(self, call: Call) -> list[str]:
        return self.users()


class TokenRequest(BaseModel):
    user: str
    url: str | None = None  # a hub URL this service gave before (a reconnect): keep the gateway


class TokenResponse(BaseModel):
    token: str
    url: str  # the hub URL to give HubConnectionBuilder.withUrl
    user: str


def create_app(config: ChatConfig | None = None, settings: Settings | None = None) -> FastAPI:
    """The service: page, client bundle and token routes, with the upstream consumer running
    for as long as the app does (its lifespan)."""
    config = config or ChatConfig.from_env()
    settings = settings or Settings()
    upstream = Upstream(settings, name="chat-example")
    ChatRooms(upstream.hub(HUB)).register()
    gateways = itertools.cycle(config.gateway_urls)
    hub_urls = {f"{g}/hubs/{HUB}" for g in config.gateway_urls}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not (SIGNALR_BUNDLE / "signalr.min.js").is_file():
            log.warning("no %s: run `npm ci` in %s", SIGNALR_BUNDLE / "signalr.min.js", HERE)
        async with upstream:
            yield

    app = FastAPI(title="Hubbub example chat", lifespan=lifespan)

    @app.post("/token")
    async def token(request: TokenRequest) -> TokenResponse:
        if not USER_NAME.fullmatch(request.user):
            raise HTTPException(400, "a user name is 1 to 32 letters, digits, '.', '_' or '-'")
        if request.url is None:
            hub_url = f"{next(gateways)}/hubs/{HUB}"
        elif request.url in hub_urls:
            hub_url = request.url
        else:
            raise HTTPException(400, "not a gateway of this service")
        client_token = mint_token(
            settings.access_key,
            hub_url,
            minutes=config.token_minutes,
            user_id=request.user,
            hub=HUB,
        )
        return TokenResponse(token=client_token, url=hub_url, user=request.user)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/vendor/signalr.min.js")
    async def signalr_bundle() -> FileResponse:
        path = SIGNALR_BUNDLE / "signalr.min.js"
        if not path.is_file():
            raise HTTPException(404, f"run `npm ci` in {HERE} to install @microsoft/signalr")
        return FileResponse(path, media_type="text/javascript")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
