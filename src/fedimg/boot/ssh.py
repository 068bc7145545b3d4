"""Running an image's checks over SSH: shared by the local QEMU boot test and the EC2 boot test.

A check (``fedimg.config.Check``) is a shell command; it passes when it exits 0 and, if it names an
expected output, its stripped stdout equals it.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedimg.config import Check
from fedimg.errors import TransientError
from fedimg.outcomes import FAILED as FAILED  # re-exported: a check's outcome
from fedimg.outcomes import PASSED as PASSED

# Pause between connection attempts: sshd comes up within seconds of a boot, so a short pause finds
# it promptly without flooding the guest (or QEMU's port forwarder) with connections.
RETRY_PAUSE_S = 0.5
# Bound for one connection attempt (TCP, banner, key exchange, authentication).
ATTEMPT_TIMEOUT_S = 10.0
# Bound for the banner after the TCP connect: long enough for a loaded sshd, short enough that a
# forwarder holding a connection to nothing does not delay the next attempt (or abort_if) much.
BANNER_WAIT_S = 5.0
# Output kept per check; a runaway command must not fill memory or the results.
MAX_OUTPUT_BYTES = 64 * 1024


class SshUnreachable(TransientError):
    """No SSH session opened before the deadline; ``last_error`` is what the last attempt met."""

    def __init__(self, message: str, last_error: str) -> None:
        super().__init__(message)
        self.last_error = last_error


@dataclass
class CheckResult:
    name: str
    outcome: str  # PASSED or FAILED
    output: str


class AcceptThrowawayHostKey(paramiko.MissingHostKeyPolicy):
    """Accepts whatever host key the guest presents.

    The guests fedimg tests are throwaway machines it started moments ago: the host key was made at
    their first boot and there is no trusted channel to learn it beforehand. Nothing secret travels
    to them (the login key is itself throwaway), and the key is never stored, so accepting it risks
    nothing that checking it could protect.
    """

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        return None


def throwaway_key() -> tuple[paramiko.PKey, str]:
    """A fresh Ed25519 key pair: the private key for paramiko and its ``authorized_keys`` line.

    paramiko cannot generate Ed25519 keys itself, so ``cryptography`` makes it and paramiko reads it
    in OpenSSH format.
    """
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    pkey = paramiko.Ed25519Key(file_obj=io.StringIO(pem))
    return pkey, f"{pkey.get_name()} {pkey.get_base64()} fedimg-throwaway"


def wait_for_ssh(
    host: str,
    port: int,
    user: str,
    pkey: paramiko.PKey,
    deadline_s: float,
    *,
    abort_if: Callable[[], None] | None = None,
) -> paramiko.SSHClient:
    """Connects as ``user`` with ``pkey``, retrying until ``deadline_s`` seconds have passed.

    Refused connections, early disconnects and rejected keys are all retried: sshd may start
    before cloud-init has installed the key. ``abort_if`` is called before each attempt and may
    raise to stop waiting (e.g. when the machine has powered off). Raises SshUnreachable (a
    TransientError) at the deadline, naming the last error seen.
    """
    deadline = time.monotonic() + deadline_s
    last_error = "no attempt made"
    while (remaining := deadline - time.monotonic()) > 0:
        if abort_if is not None:
            abort_if()
        timeout = min(ATTEMPT_TIMEOUT_S, remaining)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(AcceptThrowawayHostKey())
        sock = None
        try:
            sock = _socket_with_banner(host, port, min(timeout, BANNER_WAIT_S))
            client.connect(
                host,
                port=port,
                username=user,
                pkey=pkey,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
            )
            return client
        except (OSError, EOFError, paramiko.SSHException) as e:
            client.close()
            if sock is not None:
                sock.close()
            last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        time.sleep(max(0.0, min(RETRY_PAUSE_S, deadline - time.monotonic())))
    raise SshUnreachable(
        f"no SSH as {user}@{host}:{port} after {deadline_s:.0f} s (last error: {last_error})",
        last_error,
    )


def _socket_with_banner(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection on which the server's SSH banner has arrived (peeked, not consumed).

    A port forwarder (QEMU's, a load balancer) accepts connections before anything listens behind
    it and then drops them; waiting for the banner here keeps paramiko, which logs a traceback for
    every such drop, out of it until sshd really answers.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if sock.recv(4, socket.MSG_PEEK) != b"SSH-":
            raise ConnectionResetError("closed before sending an SSH banner")
    except BaseException:
        sock.close()
        raise
    return sock


def run_checks(
    client: paramiko.SSHClient, checks: Sequence[Check], timeout_s: float
) -> list[CheckResult]:
    """Runs each check in order, each within ``timeout_s``; a broken connection fails the check."""
    return [_run_check(client, check, timeout_s) for check in checks]


def _run_check(client: paramiko.SSHClient, check: Check, timeout_s: float) -> CheckResult:
    try:
        status, stdout, stderr = _execute(client, check.command, timeout_s)
    except TimeoutError:
        return CheckResult(check.name, FAILED, f"did not finish within {timeout_s:.0f} s")
    except (OSError, EOFError, paramiko.SSHException) as e:
        return CheckResult(check.name, FAILED, f"SSH error: {type(e).__name__}: {e}")
    output = stdout
    if stderr.strip():
        output += ("\n" if stdout and not stdout.endswith("\n") else "") + f"[stderr]\n{stderr}"
    if status != 0:
        return CheckResult(check.name, FAILED, _with_note(output, f"exit status {status}"))
    if check.expect and stdout.strip() != check.expect:
        return CheckResult(check.name, FAILED, _with_note(output, f"expected {check.expect!r}"))
    return CheckResult(check.name, PASSED, output)


def _execute(client: paramiko.SSHClient, command: str, timeout_s: float) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``command``; TimeoutError if it outlives ``timeout_s``."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("connection is closed")
    deadline = time.monotonic() + timeout_s
    channel = transport.open_session(timeout=timeout_s)
    try:
        channel.exec_command(command)
        stdout, stderr = bytearray(), bytearray()
        # recv blocks at most until the deadline; an empty read is end of stream.
        # (recv raises TimeoutError, i.e. socket.timeout, when the deadline passes first.)
        for read, sink in ((channel.recv, stdout), (channel.recv_stderr, stderr)):
            channel.settimeout(_remaining(deadline))
            while chunk := read(32768):
                if len(sink) < MAX_OUTPUT_BYTES:
                    sink += chunk[: MAX_OUTPUT_BYTES - len(sink)]
                channel.settimeout(_remaining(deadline))
        if not channel.status_event.wait(_remaining(deadline)):
            raise TimeoutError
        status = channel.recv_exit_status()
    finally:
        channel.close()
    return status, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def _with_note(output: str, note: str) -> str:
    return f"{output.rstrip()}\n[{note}]" if output.strip() else f"[{note}]"


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return remaining
