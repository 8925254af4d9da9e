"""A service on the upstream SDK, run as its own process by the fault tests
(``python -m tests.support.upstream_service``): ``record(n)`` appends ``n`` to a Redis list
per connection (``<prefix>:seen:<connection>``) and answers ``n``. ``HANDLER_DELAY``: the
most seconds of simulated work per call (random up to it), so calls overlap in time."""

from __future__ import annotations

import asyncio
import os
import random

from redis.asyncio import Redis

from hubbub.settings import Settings
from hubbub.upstream import Call, Upstream


def main() -> None:
    settings = Settings()
    delay = float(os.environ.get("HANDLER_DELAY", "0"))
    app = Upstream(settings, name=os.environ.get("SERVICE_NAME", "recorder"))
    chat = app.hub("chat")
    redis = Redis.from_url(settings.redis_url)

    @chat.on("record")
    async def record(call: Call, n: int) -> int:
        if delay:
            await asyncio.sleep(random.random() * delay)  # the service's own work
        await redis.rpush(f"{settings.key_prefix}:seen:{call.connection_id}", n)
        return n

    app.run()


if __name__ == "__main__":
    main()
