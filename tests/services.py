"""RabbitMQ for tests: a broker named by $FEDIMG_TEST_AMQP_URL, or a throwaway node of our own.

The throwaway node listens on free loopback ports, keeps all its files in a temporary folder and
runs with its own epmd on its own port, so a machine-wide broker (5672) and epmd (4369) are never
touched. Every process it starts is stopped by PID.

Also: a fedora-messaging config file writer, ``collect_messages`` to read what was published, a
TCP proxy that can cut connections, and an HTTP gate that holds chosen AWS requests.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
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

    The consumer's queue ``queue`` is bound to ``exchange`` with ``routing_keys`` (none: a work
    queue, bound to nothing); it is
    auto-deleted when the consumer goes, unless ``queue_arguments`` make it a quorum queue (which
    RabbitMQ requires to be durable and not auto-deleted: delete it with ``delete_queues``).
    Publishers use ``exchange`` and ``topic_prefix``.
    """
    quorum = (queue_arguments or {}).get("x-queue-type") == "quorum"
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
    if not routing_keys:  # a work queue: fed through the default exchange, bound to nothing
        lines.insert(0, "bindings = []")
    lines += [
        "",
        f"[queues.{_toml(queue)}]",
        f"durable = {_toml(quorum)}",
        f"auto_delete = {_toml(not quorum)}",
        "exclusive = false",
        f"arguments = {_toml(queue_arguments or {})}",
    ]
    if routing_keys:
        lines += [
            "",
            "[[bindings]]",
            f"queue = {_toml(queue)}",
            f"exchange = {_toml(exchange)}",
            f"routing_keys = {_toml(list(routing_keys))}",
        ]
    lines += [
        "",
        "",
        "[qos]  # as in fedimg-messaging.example.toml",
        "prefetch_size = 0",
        "prefetch_count = 1",
        "",
        "[consumer_config]",
        *(f"{_toml(k)} = {_toml(v)}" for k, v in (consumer_config or {}).items()),
        "",
        # fedimg's INFO lines too, with time and thread: a consumer's log tells its story.
        "[log_config]",
        "version = 1",
        "disable_existing_loggers = false",
        "[log_config.formatters.timed]",
        'format = "%(asctime)s [%(threadName)s %(name)s %(levelname)s] %(message)s"',
        "[log_config.handlers.console]",
        'class = "logging.StreamHandler"',
        'formatter = "timed"',
        'stream = "ext://sys.stdout"',
        "[log_config.root]",
        'level = "INFO"',
        'handlers = ["console"]',
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


class TcpProxy:
    """A loopback TCP forwarder to ``127.0.0.1:target``; ``cut`` breaks every open connection
    (as a network failure would) while new connections keep being accepted."""

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` (of the broker on ``target``) with this proxy's port instead."""
        return amqp_url.replace(f":{self._target}/", f":{self.port}/", 1)

    def cut(self) -> int:
        """Closes every open connection on both sides; returns how many sockets were closed."""
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return len(socks)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copies ``src`` to ``dst`` until either side closes; then closes both."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@contextmanager
def tcp_proxy(target: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target)
    try:
        yield proxy
    finally:
        proxy.close()


def amqp_port(amqp_url: str) -> int:
    port = pika.URLParameters(amqp_url).port
    assert isinstance(port, int)
    return port


@contextmanager
def consume_process(conf: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `fedora-messaging consume` with ``conf``, its output in ``log``; yields once it
    consumes (its log says so: a single-active-consumer quorum queue counts only the active
    consumer). Terminated after, by PID."""
    exe = Path(sys.executable).with_name("fedora-messaging")
    env = os.environ | {"FEDORA_MESSAGING_CONF": str(conf)}
    start = log.read_text(errors="replace").count(REGISTERED) if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen([str(exe), "consume"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count(REGISTERED) <= start:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"consumer did not start ({proc.returncode}); see {log}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS)


# fedora-messaging's log line once a consumer is attached to its queue.
REGISTERED = "Successfully registered AMQP consumer"


def queue_counts(amqp_url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``; (0, 0) if it does not exist."""
    with _channel(amqp_url) as ch:
        try:
            ok = ch.queue_declare(queue, passive=True).method
        except pika.exceptions.ChannelClosedByBroker:
            return 0, 0
        return ok.message_count, ok.consumer_count


def wait_for_log(log: Path, text: str, count: int = 1, timeout: float = 60.0) -> str:
    """The log once ``text`` occurs ``count`` times in it; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if content.count(text) >= count:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not {count} times in {log} after {timeout} s")


def publish(amqp_url: str, exchange: str, routing_key: str, body: dict[str, Any]) -> None:
    """A JSON message as fedora-messaging would send it, with a message id."""
    with _channel(amqp_url) as ch:
        ch.basic_publish(
            exchange,
            routing_key,
            json.dumps(body).encode(),
            pika.BasicProperties(
                content_type="application/json",
                content_encoding="utf-8",
                message_id=str(uuid.uuid4()),
                delivery_mode=2,
                headers={
                    "fedora_messaging_schema": "base.message",
                    "fedora_messaging_severity": 20,
                },
            ),
        )


def declare_queue(amqp_url: str, queue: str, arguments: dict[str, Any]) -> None:
    """A durable queue (a dead-letter queue, say), declared as an operator would, once."""
    with _channel(amqp_url) as ch:
        ch.queue_declare(queue, durable=True, arguments=arguments)


def declare_exchange(amqp_url: str, exchange: str) -> None:
    """A topic exchange as fedora_messaging_config declares it (`consume` declares none; it
    goes when its last binding does)."""
    with _channel(amqp_url) as ch:
        ch.exchange_declare(exchange, "topic", durable=False, auto_delete=True)


def take_message(amqp_url: str, queue: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(headers, JSON body) of the next message in ``queue``, acknowledged; None if it is empty."""
    with _channel(amqp_url) as ch:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return None
        return dict(props.headers or {}), json.loads(body)


def delete_queues(amqp_url: str, *queues: str) -> None:
    with _channel(amqp_url) as ch:
        for q in queues:
            ch.queue_delete(q)


@contextmanager
def _channel(amqp_url: str) -> Iterator[Any]:
    params = pika.URLParameters(amqp_url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 10
    connection = pika.BlockingConnection(params)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


class HttpGate:
    """An HTTP forwarder on loopback to ``upstream`` that holds the requests ``hold`` picks
    until ``release``: a test can stop a process at a known request (say, AWS's CopyImage) and
    kill it there. ``held`` is set once a request is being held."""

    def __init__(self, upstream: str, hold: Callable[[dict[str, str], bytes], bool]) -> None:
        self.held = threading.Event()
        self._released = threading.Event()
        gate = self
        target = urllib.parse.urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def do_PUT(self) -> None:
                self._forward()

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                if hold(headers, body):
                    gate.held.set()
                    if not gate._released.wait(STOP_SECONDS * 4):
                        return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body, headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def http_gate(upstream: str, hold: Callable[[dict[str, str], bytes], bool]) -> Iterator[HttpGate]:
    gate = HttpGate(upstream, hold)
    try:
        yield gate
    finally:
        gate.close()
