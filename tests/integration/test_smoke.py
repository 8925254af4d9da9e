from hubbub.sdk.client import HubbubClient
from tests.support.processes import Deployment
from tests.support.rawclient import RawClient


async def test_broadcast_reaches_client_on_other_gateway(
    cluster: Deployment, api: HubbubClient
) -> None:
    client = await RawClient.connect(cluster.gateways[1].url)
    await api.send_to_all("newMessage", ["hello", 1])
    message = await client.recv()
    assert message == {"type": 1, "target": "newMessage", "arguments": ["hello", 1]}
    await client.close()
