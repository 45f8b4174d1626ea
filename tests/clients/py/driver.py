#!/usr/bin/env python3
"""Test driver for the unmodified PyPI `realtime` client (supabase-py's).

The gateway's integration tests spawn this script and talk to it with JSON
lines: one command per line on stdin, one event per line on stdout. Only
events are written to stdout; logs go to stderr. See ../README.md.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import logging
import os
import sys
import threading
import traceback
from typing import Any

# stdout carries events only: keep a private handle on it and point sys.stdout
# at stderr so that a stray print() in any library cannot corrupt the stream.
_EVENTS_OUT = sys.stdout
sys.stdout = sys.stderr

_emit_lock = threading.Lock()


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$binary_base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, BaseException):
        return _error_message(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json", by_alias=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def emit(obj: dict[str, Any]) -> None:
    try:
        line = json.dumps(obj, default=_json_default, separators=(",", ":"))
    except Exception as e:  # pragma: no cover - defensive
        line = json.dumps({"ev": "error", "error": f"driver could not serialize event: {e}"})
    with _emit_lock:
        _EVENTS_OUT.write(line + "\n")
        _EVENTS_OUT.flush()


def _error_message(e: Any) -> str | None:
    if e is None:
        return None
    if isinstance(e, BaseException):
        text = str(e)
        return text if text else type(e).__name__
    if isinstance(e, str):
        return e
    try:
        return json.dumps(e, default=_json_default)
    except Exception:
        return str(e)


def with_id(cmd: dict[str, Any] | None, obj: dict[str, Any]) -> dict[str, Any]:
    if cmd is not None and cmd.get("id") is not None:
        obj["id"] = cmd["id"]
    return obj


_exiting = False


def fatal(e: BaseException) -> None:
    emit({"ev": "fatal", "error": _error_message(e)})
    traceback.print_exception(e, file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


def _env_json_object(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "")
    if raw == "":
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value


level = os.environ.get("REALTIME_LOG_LEVEL") or ("DEBUG" if os.environ.get("REALTIME_DEBUG") else "WARNING")
logging.basicConfig(stream=sys.stderr, level=level.upper(), format="[realtime-py] %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("driver")

try:
    import realtime
    from realtime import AsyncRealtimeClient
    from realtime.types import VSN as CLIENT_VSN
except BaseException as e:  # noqa: BLE001
    fatal(e)


class CommandError(Exception):
    pass


def need_str(cmd: dict[str, Any], key: str) -> str:
    value = cmd.get(key)
    if not isinstance(value, str):
        raise CommandError(f'"{key}" must be a string')
    return value


def _decode_payload(cmd: dict[str, Any]) -> Any:
    if isinstance(cmd.get("payload_base64"), str):
        return base64.b64decode(cmd["payload_base64"])
    return cmd.get("payload")


class ChannelEntry:
    """A channel this driver created, with a command queue that keeps the
    commands for one channel in order (subscribe() waits for the join)."""

    def __init__(self, driver: Driver, name: str, channel: Any, subscribe_cmd: dict[str, Any]) -> None:
        self.driver = driver
        self.name = name
        self.channel = channel
        self.subscribe_cmd = subscribe_cmd
        self.closed = asyncio.Event()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while True:
            cmd = await self.queue.get()
            await self.driver.run_guarded(cmd, self.driver.channel_handlers[cmd["cmd"]], self)

    def retire(self, why: str) -> None:
        """Stops the worker; commands still queued for the channel get an error."""
        while not self.queue.empty():
            cmd = self.queue.get_nowait()
            emit(with_id(cmd, {"ev": "error", "cmd": cmd.get("cmd"), "channel": self.name, "error": f"{why}: command dropped"}))
        self.worker.cancel()

    def on_status(self, status: Any, error: Exception | None) -> None:
        status_value = status.value if isinstance(status, enum.Enum) else status
        emit(
            with_id(
                self.subscribe_cmd,
                {"ev": "status", "channel": self.name, "status": status_value, "error": _error_message(error)},
            )
        )
        if status_value == "CLOSED":
            self.closed.set()


class Driver:
    def __init__(self) -> None:
        url = os.environ.get("REALTIME_URL")
        if not url:
            raise RuntimeError("REALTIME_URL is not set")
        apikey = os.environ.get("REALTIME_APIKEY")
        if not apikey:
            raise RuntimeError("REALTIME_APIKEY is not set")
        vsn = os.environ.get("REALTIME_VSN")
        if vsn and vsn != CLIENT_VSN:
            log.warning("REALTIME_VSN=%s ignored: realtime-py always connects with vsn %s", vsn, CLIENT_VSN)
        kwargs: dict[str, Any] = {}
        if os.environ.get("REALTIME_PY_MAX_RETRIES"):
            kwargs["max_retries"] = int(os.environ["REALTIME_PY_MAX_RETRIES"])
        if os.environ.get("REALTIME_PY_INITIAL_BACKOFF"):
            kwargs["initial_backoff"] = float(os.environ["REALTIME_PY_INITIAL_BACKOFF"])
        self.client = AsyncRealtimeClient(url, token=apikey, params=_env_json_object("REALTIME_PARAMS") or None, **kwargs)
        self.channels: dict[str, ChannelEntry] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.global_handlers = {
            "set_auth": self.cmd_set_auth,
            "disconnect": self.cmd_disconnect,
            "connect": self.cmd_connect,
            "presence_state": self.cmd_presence_state,
            "http_send": self.cmd_http_send,
        }
        self.channel_handlers = {
            "subscribe": self.cmd_subscribe,
            "send": self.cmd_send,
            "track": self.cmd_track,
            "untrack": self.cmd_untrack,
            "unsubscribe": self.cmd_unsubscribe,
        }

    # ------------------------------------------------------------ plumbing

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_guarded(self, cmd: dict[str, Any], handler: Any, *args: Any) -> None:
        try:
            await handler(cmd, *args)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the test, driver goes on
            log.debug("command %r failed", cmd, exc_info=True)
            emit(with_id(cmd, {"ev": "error", "cmd": cmd.get("cmd"), "channel": cmd.get("channel"), "error": _error_message(e)}))

    def entry(self, cmd: dict[str, Any]) -> ChannelEntry:
        name = need_str(cmd, "channel")
        entry = self.channels.get(name)
        if entry is None:
            raise CommandError(f'unknown channel "{name}" (subscribe first)')
        return entry

    def _forget_client_channel(self, name: str) -> None:
        topic = f"realtime:{name}"
        self.client.channels.pop(topic, None)

    async def dispatch(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        if name == "exit":
            await self.shutdown(0)
            return
        if name in self.global_handlers:
            await self.run_guarded(cmd, self.global_handlers[name])
            return
        if name in self.channel_handlers:
            channel = cmd.get("channel")
            if not isinstance(channel, str):
                emit(with_id(cmd, {"ev": "error", "cmd": name, "channel": channel, "error": '"channel" must be a string'}))
                return
            entry = self.channels.get(channel)
            if name == "subscribe":
                if entry is not None and entry.closed.is_set():
                    # Closed by the server (phx_close): subscribing again starts afresh.
                    del self.channels[channel]
                    entry.retire("channel was closed")
                    entry = None
                if entry is not None:
                    emit(with_id(cmd, {"ev": "error", "cmd": name, "channel": channel, "error": f'channel "{channel}" already exists'}))
                    return
                await self.run_guarded(cmd, self.cmd_subscribe_create)
                return
            if entry is None:
                emit(with_id(cmd, {"ev": "error", "cmd": name, "channel": channel, "error": f'unknown channel "{channel}" (subscribe first)'}))
                return
            entry.queue.put_nowait(cmd)
            return
        emit(with_id(cmd, {"ev": "error", "cmd": name, "error": f"unknown command: {json.dumps(name)}"}))

    async def shutdown(self, code: int) -> None:
        global _exiting
        if _exiting:
            return
        _exiting = True
        try:
            await asyncio.wait_for(self.client.close(), 2)
        except Exception as e:  # noqa: BLE001
            log.warning("close on exit failed: %s", e)
        sys.stderr.flush()
        _EVENTS_OUT.flush()
        os._exit(code)

    # ------------------------------------------------------------ channel commands

    async def cmd_subscribe_create(self, cmd: dict[str, Any]) -> None:
        """Creates the channel and its listeners at once (so later commands for
        it queue behind it), then queues the actual subscribe()."""
        name = need_str(cmd, "channel")
        changes = cmd.get("changes") or []
        if not isinstance(changes, list):
            raise CommandError('"changes" must be a list')
        listen_broadcast = cmd.get("listen_broadcast") or []
        if not isinstance(listen_broadcast, list) or not all(isinstance(e, str) for e in listen_broadcast):
            raise CommandError('"listen_broadcast" must be a list of strings')
        for i, change in enumerate(changes):
            if not isinstance(change, dict):
                raise CommandError(f"changes[{i}] must be an object")

        params = None
        if any(k in cmd for k in ("broadcast", "presence", "private")):
            config: dict[str, Any] = {}
            for key in ("broadcast", "presence", "private"):
                if key in cmd:
                    value = cmd[key]
                    config[key] = dict(value) if isinstance(value, dict) else value
            params = {"config": config}

        # A channel object left behind by an earlier failed/closed subscribe
        # would be returned by client.channel(); start from a fresh one.
        self._forget_client_channel(name)
        channel = self.client.channel(name, params)
        entry = ChannelEntry(self, name, channel, cmd)
        self.channels[name] = entry

        for i, change in enumerate(changes):

            def on_change(payload: Any, i: int = i) -> None:
                emit({"ev": "change", "channel": name, "binding": i, "payload": payload})

            channel.on_postgres_changes(
                change.get("event"),
                on_change,
                table=change.get("table"),
                schema=change.get("schema"),
                filter=change.get("filter"),
                select=change.get("select"),
            )

        for event in listen_broadcast:

            def on_broadcast(payload: Any, event: str = event) -> None:
                emit({"ev": "broadcast", "channel": name, "listener": event, "payload": payload})

            channel.on_broadcast(event, on_broadcast)

        if cmd.get("listen_presence"):
            channel.on_presence_sync(
                lambda: emit({"ev": "presence", "channel": name, "kind": "sync", "key": None, "current": None, "new": None, "left": None})
            )
            channel.on_presence_join(
                lambda key, current, new: emit(
                    {"ev": "presence", "channel": name, "kind": "join", "key": key, "current": current, "new": new, "left": None}
                )
            )
            channel.on_presence_leave(
                lambda key, current, left: emit(
                    {"ev": "presence", "channel": name, "kind": "leave", "key": key, "current": current, "new": None, "left": left}
                )
            )

        channel.on_system(lambda payload: emit({"ev": "system", "channel": name, "payload": payload}))

        entry.queue.put_nowait(cmd)

    async def cmd_subscribe(self, cmd: dict[str, Any], entry: ChannelEntry) -> None:
        token = cmd.get("access_token")
        if isinstance(token, str):
            # realtime-py keeps one token per client: apply it with set_auth,
            # as supabase-py does for a signed-in user.
            await self.client.set_auth(token)
        try:
            await entry.channel.subscribe(entry.on_status)
        except Exception:
            # e.g. the socket could not connect: no status callback ran.
            # Forget the channel so that a later subscribe starts afresh.
            if self.channels.get(entry.name) is entry:
                del self.channels[entry.name]
            if self.client.channels.get(entry.channel.topic) is entry.channel:
                self._forget_client_channel(entry.name)
            entry.retire("subscribe failed")
            raise

    async def _await_push(self, push: Any, wait: bool) -> str:
        """Outcome of an AsyncPush as realtime-js words it."""
        if not wait:
            return "ok"
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def settle(result: str) -> None:
            if not done.done():
                done.set_result(result)

        push.receive("ok", lambda *_: settle("ok"))
        push.receive("error", lambda *_: settle("error"))
        push.receive("timeout", lambda *_: settle("timed out"))
        return await done

    async def cmd_send(self, cmd: dict[str, Any], entry: ChannelEntry) -> None:
        kind = cmd.get("type") or "broadcast"
        event = need_str(cmd, "event")
        payload = _decode_payload(cmd)
        # Same push as AsyncRealtimeChannel.send_broadcast(); push() is used
        # directly so the server's ack (broadcast.ack=true) can be observed.
        push = await entry.channel.push(kind, {"type": kind, "event": event, "payload": payload})
        config = (entry.channel.params or {}).get("config") or {}
        ack = bool((config.get("broadcast") or {}).get("ack")) if kind == "broadcast" else True

        async def report() -> None:
            result = await self._await_push(push, ack)
            emit(with_id(cmd, {"ev": "sent", "channel": entry.name, "result": result}))

        self.spawn(report())

    async def _presence(self, cmd: dict[str, Any], entry: ChannelEntry, event: str, ev_name: str) -> None:
        payload = cmd.get("payload") if event == "track" else {}
        if payload is None:
            payload = {}
        # Same push as AsyncRealtimeChannel.track()/untrack() (send_presence);
        # push() is used directly so the server's reply can be reported.
        push = await entry.channel.push("presence", {"event": event, "payload": payload})

        async def report() -> None:
            result = await self._await_push(push, True)
            emit(with_id(cmd, {"ev": ev_name, "channel": entry.name, "result": result}))

        self.spawn(report())

    async def cmd_track(self, cmd: dict[str, Any], entry: ChannelEntry) -> None:
        await self._presence(cmd, entry, "track", "tracked")

    async def cmd_untrack(self, cmd: dict[str, Any], entry: ChannelEntry) -> None:
        await self._presence(cmd, entry, "untrack", "untracked")

    async def cmd_unsubscribe(self, cmd: dict[str, Any], entry: ChannelEntry) -> None:
        if self.channels.get(entry.name) is entry:
            del self.channels[entry.name]
        await entry.channel.unsubscribe()

        async def report() -> None:
            # The channel closes on the phx_leave reply (or its timeout).
            try:
                await asyncio.wait_for(entry.closed.wait(), entry.channel.timeout + 2)
                result = "ok"
            except asyncio.TimeoutError:
                result = "timed out"
            emit(with_id(cmd, {"ev": "unsubscribed", "channel": entry.name, "result": result}))
            entry.retire("channel was unsubscribed")

        self.spawn(report())

    # ------------------------------------------------------------ global commands

    async def cmd_presence_state(self, cmd: dict[str, Any]) -> None:
        entry = self.entry(cmd)
        emit(with_id(cmd, {"ev": "presence_state", "channel": entry.name, "state": entry.channel.presence_state()}))

    async def cmd_http_send(self, cmd: dict[str, Any]) -> None:
        name = need_str(cmd, "channel")
        event = need_str(cmd, "event")
        entry = self.channels.get(name)
        if entry is not None:
            channel = entry.channel
            temporary = False
        else:
            # http_send() needs no subscription: use a throwaway channel object.
            params = {"config": {"private": bool(cmd.get("private", False))}}
            self._forget_client_channel(name)
            channel = self.client.channel(name, params)
            temporary = True
        if not hasattr(channel, "http_send"):
            raise CommandError(f"http_send does not exist in realtime {realtime.__version__}")
        payload = _decode_payload(cmd)
        timeout = cmd.get("timeout")

        async def run() -> None:
            try:
                if timeout is not None:
                    await channel.http_send(event, payload, timeout=float(timeout) / 1000.0)
                else:
                    await channel.http_send(event, payload)
                out = {"ok": True, "result": None, "error": None, "status": None}
            except Exception as e:  # noqa: BLE001
                out = {"ok": False, "result": None, "error": _error_message(e), "status": getattr(e, "status", None)}
            finally:
                if temporary and self.client.channels.get(channel.topic) is channel:
                    self._forget_client_channel(name)
            emit(with_id(cmd, {"ev": "http_sent", "channel": name, **out}))

        self.spawn(run())

    async def cmd_set_auth(self, cmd: dict[str, Any]) -> None:
        token = cmd.get("token")
        if token is not None and not isinstance(token, str):
            raise CommandError('"token" must be a string or null')
        await self.client.set_auth(token)
        emit(with_id(cmd, {"ev": "auth_set", "result": None}))

    async def cmd_connect(self, cmd: dict[str, Any]) -> None:
        async def run() -> None:
            try:
                await self.client.connect()
                out = {"ok": True, "error": None}
            except Exception as e:  # noqa: BLE001
                out = {"ok": False, "error": _error_message(e)}
            emit(with_id(cmd, {"ev": "connected", **out}))

        self.spawn(run())

    async def cmd_disconnect(self, cmd: dict[str, Any]) -> None:
        await self.client.close()
        emit(with_id(cmd, {"ev": "disconnected", "result": None}))


def _start_stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Reads stdin in a thread (works for pipes, files and ttys alike) and
    hands lines to the event loop, which is never blocked by it."""

    def reader() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except Exception as e:  # noqa: BLE001
            log.warning("stdin reader failed: %s", e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()


async def main() -> None:
    loop = asyncio.get_running_loop()
    driver = Driver()
    emit({"ev": "ready", "client": "realtime-py", "version": realtime.__version__, "vsn": CLIENT_VSN})

    lines: asyncio.Queue[str | None] = asyncio.Queue()
    _start_stdin_reader(loop, lines)
    while True:
        line = await lines.get()
        if line is None:  # EOF
            await driver.shutdown(0)
            return
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except ValueError as e:
            emit({"ev": "error", "error": f"invalid JSON command: {e}", "line": line.rstrip("\n")})
            continue
        if not isinstance(cmd, dict):
            emit({"ev": "error", "error": "command must be a JSON object", "line": line.rstrip("\n")})
            continue
        await driver.dispatch(cmd)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        fatal(e)
