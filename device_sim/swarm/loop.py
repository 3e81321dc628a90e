"""The swarm's one network thread: a `selectors` loop over every device's socket.

Only this thread touches sockets and the selector. Other threads hand it work: devices with
bytes to write (`mark_dirty`) and commands to run (`call`), then wake it through a socketpair.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from device_sim.swarm.connection import Device
from device_sim.swarm.limits import SwarmError

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger(__name__)

# Keepalive bookkeeping (loop_misc) for every client once a second: plenty for a 60 s keepalive.
MISC_INTERVAL_S = 1.0
# Upper bound of one select(): how late a due reconnect or a stop request can be noticed.
SELECT_MAX_WAIT_S = 0.25
# Bounded waits of the commands run on the network thread and of the thread's end.
COMMAND_WAIT_S = 30.0
LOOP_JOIN_S = 10.0


class NetworkLoop:
    """The network thread over *devices*. Each round it serves the ready sockets, runs the
    commands and writes handed over, then calls *step* (the swarm's connects and retries);
    *next_due* says when step has work next; *on_death* hears of the exception that ended it."""

    def __init__(
        self,
        devices: Mapping[str, Device],
        *,
        step: Callable[[float], None],
        next_due: Callable[[], float],
        on_death: Callable[[BaseException], None],
    ) -> None:
        self._devices = devices
        self._step, self._next_due, self._on_death = step, next_due, on_death
        # Handed from other threads to the network thread.
        self._dirty_lock = threading.Lock()
        self._dirty: set[Device] = set()
        self._wake_pending = False
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        # Network thread only.
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._exit = False
        self.touched: set[Device] = set()  # to re-check for writability after this round

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="swarm-network", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (bounded) and, once it has ended, release every socket."""
        if self._thread is None:
            return
        self._exit = True
        self.wake()
        self._thread.join(LOOP_JOIN_S)
        if self._thread.is_alive():
            log.error("swarm network thread did not stop within %ss", LOOP_JOIN_S)
        else:
            self._release_sockets()

    def call(self, fn: Callable[[], Any], timeout: float = COMMAND_WAIT_S) -> Any:
        """Run *fn* on the network thread and return its result."""
        if self._thread is None or not self._thread.is_alive():
            raise SwarmError("the swarm is not running (start() it first)")
        if threading.get_ident() == self._ident:
            return fn()
        future: Future[Any] = Future()
        self._commands.append((fn, future))
        self.wake()
        return future.result(timeout)

    def mark_dirty(self, device: Device) -> None:
        """Have the network thread write what paho queued for *device* (any thread)."""
        with self._dirty_lock:
            self._dirty.add(device)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.wake()

    def wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def guarded(self, device: Device, what: str, fn: Callable[[], object]) -> None:
        """Run a client operation; one device's failure must not stop the others."""
        try:
            fn()
        except Exception:
            log.exception("swarm: %s failed for device %s", what, device.serial)
        self.touched.add(device)

    def flush(self, device: Device) -> None:
        """Write what paho has queued now rather than after the next select()."""
        if device.sock is not None:
            self.guarded(device, "write", device.client.loop_write)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        self._ident = threading.get_ident()
        assert self._selector is not None  # noqa: S101 (set by start())
        next_misc = time.monotonic() + MISC_INTERVAL_S
        try:
            while not self._exit:
                for key, mask in self._selector.select(self._select_timeout(next_misc)):
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._service(key.data, mask)
                self._run_commands()
                self._flush_dirty()
                now = time.monotonic()
                if now >= next_misc:
                    self._misc()
                    next_misc = now + MISC_INTERVAL_S
                self._step(now)
                self._sync_touched()
        except BaseException as exc:
            log.exception("swarm network thread died")
            self._on_death(exc)
            self._fail_commands(exc)

    def _select_timeout(self, next_misc: float) -> float:
        if self._commands:
            return 0.0
        until = min(next_misc, self._next_due())
        return min(SELECT_MAX_WAIT_S, max(0.0, until - time.monotonic()))

    def _drain_wake(self) -> None:
        assert self._wake_r is not None  # noqa: S101
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _service(self, device: Device, mask: int) -> None:
        client = device.client
        if mask & selectors.EVENT_READ:
            self.guarded(device, "read", client.loop_read)
        if mask & selectors.EVENT_WRITE and device.sock is not None:
            self.guarded(device, "write", client.loop_write)

    def _flush_dirty(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            self._wake_pending = False
        for device in dirty:
            self.flush(device)

    def _sync_touched(self) -> None:
        """Watch a socket for writability exactly while paho has bytes queued for it."""
        assert self._selector is not None  # noqa: S101
        touched, self.touched = self.touched, set()
        for device in touched:
            sock = device.sock
            if sock is None:
                continue
            want = selectors.EVENT_READ
            if device.client.want_write():
                want |= selectors.EVENT_WRITE
            if want != device.mask:
                self._selector.modify(sock, want, device)
                device.mask = want

    def _misc(self) -> None:
        for device in self._devices.values():
            if device.sock is not None:
                self.guarded(device, "keepalive", device.client.loop_misc)

    def _run_commands(self) -> None:
        while self._commands:
            fn, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

    def _fail_commands(self, exc: BaseException) -> None:
        while self._commands:
            _, future = self._commands.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(SwarmError(f"the swarm's network thread died: {exc!r}"))

    def _release_sockets(self) -> None:
        """After the thread ended: close what is left and detach the callbacks, so paho never
        calls back into a swarm that is gone."""
        for device in self._devices.values():
            client = device.client
            client.on_socket_open = client.on_socket_close = None
            client.on_socket_register_write = None
            client.on_connect = client.on_disconnect = client.on_publish = None
            if device.sock is not None:
                with contextlib.suppress(OSError):
                    device.sock.close()
                device.sock = None
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_w = None

    # --- paho's socket callbacks (network thread, except register_write) -------------------

    def on_socket_open(self, client: mqtt.Client, device: Device, sock: SocketLike) -> None:
        assert self._selector is not None  # noqa: S101
        self._selector.register(sock, selectors.EVENT_READ, device)
        device.sock = sock
        device.mask = selectors.EVENT_READ
        self.touched.add(device)

    def on_socket_close(self, client: mqtt.Client, device: Device, sock: SocketLike) -> None:
        if device.sock is sock:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            device.sock = None
            device.mask = 0

    def on_socket_register_write(
        self, client: mqtt.Client, device: Device, sock: SocketLike
    ) -> None:
        if threading.get_ident() == self._ident:
            self.touched.add(device)
        else:  # paho queued a packet from a publishing thread
            self.mark_dirty(device)
