"""Sans-I/O protocol code: the SignalR hub protocol, WebSocket server frames, name rules.

Nothing here does I/O or knows about Redis: bytes in, events out, and back.
"""
