"""RabbitMQ for tests: a broker named by $FEDIMG_TEST_AMQP_URL, or a throwaway node of our own.

The throwaway node listens on free loopback ports, keeps all its files in a temporary folder and
runs with its own epmd on its own port, so a machine-wide broker (5672) and epmd (4369) are never
touched. Every process it starts is stopped by PID.

Also: a fedora-messaging config file writer, and ``collect_messages`` to read what was published.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pika
from fedora_messaging.message import Message, get_message

ENV_VAR = "FEDIMG_TEST_AMQP_URL"
SBIN = Path("/usr/lib/rabbitmq/bin")
# A node is ready in ~9 s on the test machines; allow for a slow CI runner.
START_SECONDS = 90
STOP_SECONDS = 30
# One rabbitmqctl call; its own await_startup timeout is shorter.
CTL_SECONDS = 30


class BrokerUnavailable(RuntimeError):
    """No broker given and none can be started here."""


@contextmanager
def rabbitmq() -> Iterator[str]:
    """Yields an AMQP URL: $FEDIMG_TEST_AMQP_URL if set, else a throwaway node's (stopped after)."""
    url = os.environ.get(ENV_VAR)
    if url:
        yield url
        return
    if not (SBIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        raise BrokerUnavailable(
            f"set {ENV_VAR} or install rabbitmq-server (scripts/install-system-deps.sh)"
        )
    with tempfile.TemporaryDirectory(prefix="fedimg-rabbitmq-") as tmp, ExitStack() as stack:
        home = Path(tmp)
        amqp_port, dist_port, epmd_port = free_ports(3)
        env = _node_env(home, amqp_port, dist_port, epmd_port)
        node = env["RABBITMQ_NODENAME"]
        log = (home / "server.log").open("wb")
        stack.callback(log.close)
        epmd = _start(["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)], env, log)
        stack.callback(_stop_process, epmd)
        server = _start([str(SBIN / "rabbitmq-server")], env, log)
        stack.callback(_stop_node, node, env, server)
        _await_startup(node, env, server, home)
        yield f"amqp://guest:guest@127.0.0.1:{amqp_port}/%2F"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _node_env(home: Path, amqp_port: int, dist_port: int, epmd_port: int) -> dict[str, str]:
    # Our own files replace /etc/rabbitmq/* (the system node's, which names port 5672).
    (home / "conf.d").mkdir()
    (home / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{amqp_port}\n")
    (home / "enabled_plugins").write_text("[].\n")
    (home / "rabbitmq-env.conf").write_text("")
    return {
        **os.environ,
        "HOME": str(home),
        "RABBITMQ_NODENAME": f"fedimgtest-{os.getpid()}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_CONFIG_FILES": str(home / "conf.d"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
    }


def _start(argv: list[str], env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    # Own session: the node's helper processes (erl_child_setup…) share our PID's group.
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
    )


def _ctl(node: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(SBIN / "rabbitmqctl"), "-n", node, *args],
        env=env,
        capture_output=True,
        timeout=CTL_SECONDS,
        check=False,
    )


def _await_startup(
    node: str, env: dict[str, str], server: subprocess.Popen[bytes], home: Path
) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BrokerUnavailable(f"rabbitmq-server exited {server.returncode}:\n{_logs(home)}")
        try:
            # Fails at once while the node is not yet reachable, hence the poll.
            if _ctl(node, env, "await_startup", "--timeout", "20").returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
    raise BrokerUnavailable(f"RabbitMQ not ready after {START_SECONDS} s:\n{_logs(home)}")


def _stop_node(node: str, env: dict[str, str], server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        with suppress(subprocess.TimeoutExpired):
            _ctl(node, env, "stop")
    _stop_process(server)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stops ``proc`` and what it spawned in its session; SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _logs(home: Path) -> str:
    files = [home / "server.log", *sorted((home / "log").glob("*.log"))]
    return "\n".join(f.read_text(errors="replace")[-3000:] for f in files if f.exists())


def fedora_messaging_config(
    amqp_url: str,
    tmp_path: Path,
    queue: str,
    routing_keys: Sequence[str],
    callback: str | None = None,
    consumer_config: dict[str, Any] | None = None,
    *,
    exchange: str = "amq.topic",
    topic_prefix: str = "",
    queue_arguments: dict[str, Any] | None = None,
) -> Path:
    """Writes a fedora-messaging TOML for ``amqp_url`` and returns its path.

    The consumer's queue ``queue`` is bound to ``exchange`` with ``routing_keys``; it is
    auto-deleted when the consumer goes. Publishers use ``exchange`` and ``topic_prefix``.
    """
    lines = [
        f"amqp_url = {_toml(amqp_url)}",
        f"publish_exchange = {_toml(exchange)}",
        f"topic_prefix = {_toml(topic_prefix)}",
        "passive_declares = false",
    ]
    if callback:
        lines.append(f"callback = {_toml(callback)}")
    lines += ["", "[client_properties]", 'app = "fedimg tests"']
    if not exchange.startswith("amq."):
        lines += [
            "",
            f"[exchanges.{_toml(exchange)}]",
            'type = "topic"',
            "durable = false",
            "auto_delete = true",
            "arguments = {}",
        ]
    lines += [
        "",
        f"[queues.{_toml(queue)}]",
        "durable = false",
        "auto_delete = true",
        "exclusive = false",
        f"arguments = {_toml(queue_arguments or {})}",
        "",
        "[[bindings]]",
        f"queue = {_toml(queue)}",
        f"exchange = {_toml(exchange)}",
        f"routing_keys = {_toml(list(routing_keys))}",
        "",
        "[consumer_config]",
        *(f"{_toml(k)} = {_toml(v)}" for k, v in (consumer_config or {}).items()),
    ]
    path = tmp_path / f"fedora-messaging-{queue}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    """A TOML value for strings, numbers, booleans, lists and tables (inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


class Inbox:
    """A private queue bound to an exchange; ``wait`` returns the messages that arrived."""

    def __init__(self, connection: Any, channel: Any, queue: str) -> None:
        self._connection = connection
        self.received: list[Message] = []
        channel.basic_consume(queue, self._on_message, auto_ack=True)

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # get_message picks the schema class named in the headers, as a consumer would.
        self.received.append(get_message(method.routing_key, properties, body))

    def wait(self, count: int, timeout: float = 10.0) -> list[Message]:
        """All messages so far once there are ``count``; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{len(self.received)} of {count} messages after {timeout} s: "
                    f"{[m.topic for m in self.received]}"
                )
            self._connection.process_data_events(time_limit=min(remaining, 0.1))
        return list(self.received)

    def wait_quiet(self, seconds: float = 0.5, timeout: float = 10.0) -> list[Message]:
        """All messages once none arrived for ``seconds`` (to check nothing more comes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = len(self.received)
            self._connection.process_data_events(time_limit=seconds)
            if len(self.received) == before:
                break
        return list(self.received)


@contextmanager
def collect_messages(
    amqp_url: str,
    routing_keys: Sequence[str],
    exchange: str = "amq.topic",
) -> Iterator[Inbox]:
    """Binds a private, exclusive queue to ``exchange`` (declared if not an ``amq.`` one) for
    ``routing_keys``, before the caller publishes; messages come back as schema classes."""
    params = pika.URLParameters(amqp_url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        if not exchange.startswith("amq."):
            # Same arguments as fedora_messaging_config's, so either may declare it first.
            channel.exchange_declare(exchange, "topic", durable=False, auto_delete=True)
        queue = f"fedimg-test-{uuid.uuid4().hex}"
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        for key in routing_keys:
            channel.queue_bind(queue, exchange, routing_key=key)
        yield Inbox(connection, channel, queue)
    finally:
        connection.close()
