"""Test suite (a package, so `tests.*` imports resolve here and not to a `tests` package another distribution installs)."""
