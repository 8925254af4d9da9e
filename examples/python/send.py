"""Send from a Python service: over REST with HubbubClient, or straight into Redis with
Publisher (same checks, ids and guarantees, no HTTP hop)."""

import asyncio
import os

from hubbub.sdk.client import HubbubClient
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings

URL = os.environ.get("HUBBUB_URL", "http://127.0.0.1:8080")  # hubbub dev's first gateway


async def main() -> None:
    # Settings() reads HUBBUB_ACCESS_KEY, HUBBUB_REDIS_URL, HUBBUB_KEY_PREFIX...: paste the
    # `export` line hubbub dev printed first, or Publisher looks for Redis on 127.0.0.1:6379.
    settings = Settings()
    async with HubbubClient(URL, settings.access_key, "chat") as api:
        await api.send_to_user("alice", "newMessage", ["hi alice, over REST"])
        await api.add_user_to_group("vip", "carol")  # carol's connections, now and later
        message_id = await api.send_to_group("vip", "newMessage", ["vip news, over REST"])
        print("sent", message_id)

    async with Publisher.from_settings(settings, "chat") as hub:
        message_id = await hub.send_to_group("vip", "newMessage", ["vip news, from Publisher"])
        print("published", message_id)


asyncio.run(main())
