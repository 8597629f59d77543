"""``python -m krypton``: the ``krypton`` command where no console script is installed."""

from krypton.cli import app

app(prog_name="krypton")
