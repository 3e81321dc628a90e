"""A bug planted in a real `fieldtrack ingest` process, for tests only.

Python imports `sitecustomize` as it starts, from the first folder on its path that has one;
a test puts this folder on the ingest subprocess's PYTHONPATH. While the file named by
FIELDTRACK_TEST_CODE_FAULT exists, the writer's store writes each batch and then raises
TypeError inside the transaction (so it is rolled back): a bug in the store, the kind of
error that must stop ingest and never quarantine a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TRIGGER = os.environ.get("FIELDTRACK_TEST_CODE_FAULT")

if TRIGGER:
    from services.ingest import service
    from services.ingest.batch import BatchResult
    from services.ingest.store import store_batch as _real_store_batch

    _trigger = Path(TRIGGER)

    def _store_batch(*args: Any, **kwargs: Any) -> BatchResult:
        result = _real_store_batch(*args, **kwargs)
        if _trigger.exists():
            raise TypeError("injected code fault (test)")
        return result

    # Replaced where the writer looks it up: the name its own module imported.
    vars(service)["store_batch"] = _store_batch
