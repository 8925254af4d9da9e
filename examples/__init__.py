"""Example services built on Hubbub (``python -m examples.chat``)."""
