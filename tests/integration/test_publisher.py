"""The write-only Python publisher: straight to the publish stream, same delivery."""

from __future__ import annotations

from hubbub.sdk.client import HubbubClient
from hubbub.sdk.publisher import Publisher
from hubbub.settings import Settings
from tests.support.processes import Deployment
from tests.support.rawclient import RawClient, client_token


async def test_direct_publisher_reaches_clients(
    cluster: Deployment, api: HubbubClient, prefix: str
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url, token=client_token("pia"))
    assert client.connection_id
    await api.add_connection_to_group("g", client.connection_id)
    settings = Settings(redis_url=cluster.redis_url, key_prefix=prefix)
    async with Publisher.from_settings(settings, "Chat") as publisher:
        ids = [
            await publisher.send_to_all("t", [1]),
            await publisher.send_to_group("g", "t", [2]),
            await publisher.send_to_user("pia", "t", [3]),
            await publisher.send_to_connection(client.connection_id, "t", [4]),
        ]
    assert len(set(ids)) == 4
    assert sorted([(await client.recv())["arguments"][0] for _ in range(4)]) == [1, 2, 3, 4]
