"""A socket that accepts every write and holds nothing: for delivery-path unit tests that
need a :class:`hubbub_gateway.deliver.LocalConnection` but not what it writes."""

from __future__ import annotations


class NullSocket:
    def write_frames(self, frames: bytes, max_buffer: int | None = None) -> bool:
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def drain(self) -> None:
        pass
