"""``python -m uplift`` is the ``uplift`` command."""

from uplift.cli import main

main()
