"""Hubbub fan-out worker: routes published messages to gateway inboxes."""
