"""The scaled stack's fixture, shared by three modules (tests/compose/scaled_stack.py).

Session scope, because pytest's module scope is per module: one bring-up serves
test_scaled.py, test_tls.py and test_redis_tls.py, and it comes down at the session's end.
tests/conftest.py runs those three modules last (SHARED_LAST), so that the project is down
while test_stack.py and test_ha.py run: two projects up at once compete for the two cores
(and the idle one's healthchecks still cost Docker CPU).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compose.scaled_stack import Scaled, scaled_stack


@pytest.fixture(scope="session")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    with scaled_stack(tmp_path_factory) as stack:
        yield stack
