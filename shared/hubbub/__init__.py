"""Hubbub core library shared by the gateway and the fan-out worker."""
