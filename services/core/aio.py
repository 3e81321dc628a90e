"""Running a coroutine from synchronous code, whatever the calling thread is doing.

`asyncio.run` refuses to start when the thread already runs an event loop (a test session
that drove a browser through Playwright's sync API leaves one), so such a caller gets a
thread of its own for the coroutine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The result of the coroutine *make* returns, run to completion on a fresh event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(asyncio.run(make()))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=work, name="run-sync")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
