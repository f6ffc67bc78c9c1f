"""Every protocol parity fixture in ``../shared/fixtures/protocol/`` through the project's own code paths.

Files are discovered by name (``*<kind>.safetensors``, any prefix), so fixtures added later are checked
too; test ids are ``<file stem>/<case>``. The spec is that folder's README.md; each kind's checks live in
``tests/protocol/<kind>.py``.
"""

from __future__ import annotations

import pytest

from tests.protocol import PROTOCOL, Fixture, checker, fixture_files


def _cases() -> list:
    params = []
    for path in fixture_files():
        fixture = Fixture(path)
        try:
            cases = checker(fixture.kind).cases(fixture)
        except ModuleNotFoundError:  # reported by the test itself, not at collection
            cases = ["<no checker>"]
        params += [pytest.param(fixture, case, id=f"{fixture.stem}/{case}") for case in cases]
    return params


CASES = _cases()


@pytest.mark.parametrize(("fixture", "case"), CASES or [pytest.param(None, None, id="no-fixtures")])
def test_protocol_fixture(fixture: Fixture, case: str) -> None:
    if fixture is None:
        pytest.skip(f"no protocol fixtures in {PROTOCOL}: ../shared/ is not beside the repository")
    checker(fixture.kind).check(fixture, case)
