"""The ingest process's collector settings (services.ingest.service.tune_collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.ingest.service import GC_THRESHOLDS, tune_collector


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
    # decoding a batch of 2,000 single-reading messages allocates 20,000 tracked objects (10
    # each, measured): the young generation must hold a batch, or it is walked within each
    assert GC_THRESHOLDS[0] >= 20_000


@pytest.mark.usefixtures("restored_collector")
def test_garbage_in_cycles_is_still_collected_after_tuning() -> None:
    tune_collector()

    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
