"""The ingest process's collector settings (services.ingest.service.tune_collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.core.payloads import decode
from services.core.settings import Settings
from services.ingest.service import GC_THRESHOLDS, tune_collector
from tests.integration.ingest_support import usage_body


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_ingest_freezes_what_start_up_loaded_and_collects_per_batch_not_per_message() -> None:
    gc.unfreeze()
    tune_collector()
    assert gc.get_freeze_count() > 1000  # modules, classes and schemas loaded at start-up
    assert gc.get_threshold() == GC_THRESHOLDS


def test_the_young_generation_holds_a_whole_decoded_batch() -> None:
    """Otherwise the collector walks the batch while the writer is still building it."""
    batch = Settings.model_fields["ingest_batch_max"].default
    now = datetime.now(UTC)
    bodies = [usage_body(seq, now - timedelta(seconds=1), "remote_unlock") for seq in range(batch)]
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        kept = [
            decode("fieldtrack/v1/dev-1/usage", body, now=now, max_future_skew=timedelta(0))
            for body in bodies
        ]
        allocated = gc.get_count()[0] - before
    finally:
        if enabled:
            gc.enable()
    assert len(kept) == batch
    assert batch * 5 < allocated < GC_THRESHOLDS[0]  # about 10 tracked objects a message


@pytest.mark.usefixtures("restored_collector")
def test_garbage_in_cycles_is_still_collected_after_tuning() -> None:
    tune_collector()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
