"""Hubbub gateway: SignalR WebSockets for clients, REST for internal services."""
