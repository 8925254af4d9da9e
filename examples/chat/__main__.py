"""``python -m examples.chat``: the example chat service, beside a running ``hubbub dev``.

Environment: ``HUBBUB_REDIS_URL``, ``HUBBUB_ACCESS_KEY``, ``HUBBUB_KEY_PREFIX`` (the same as the
deployment's), ``CHAT_GATEWAY_URLS`` (comma-separated; default ``hubbub dev``'s two gateways),
``CHAT_HOST`` / ``CHAT_PORT`` (``127.0.0.1`` / ``8000``).
"""

from __future__ import annotations

import logging

import uvicorn

from examples.chat.service import ChatConfig, create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = ChatConfig.from_env()
    print(f"example chat: open http://{config.host}:{config.port}/ in two tabs", flush=True)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info")


if __name__ == "__main__":
    main()
