from __future__ import annotations

import pytest
from memutil import require_uffd_async


@pytest.fixture
def tracking() -> None:
    """Buffer snapshots need a write tracker on this kernel."""
    require_uffd_async()
