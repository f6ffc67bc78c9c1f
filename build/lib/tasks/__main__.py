"""``python -m tasks`` is the ``uplift`` command (LightningCLI)."""

from tasks.cli import main

main()
