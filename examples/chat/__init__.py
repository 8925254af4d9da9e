"""The example chat: rooms, messages and who is online, on the upstream SDK (see service.py)."""
