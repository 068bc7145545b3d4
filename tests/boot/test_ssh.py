"""The SSH check runner: throwaway keys, waiting for sshd, and checks run on a real booted guest."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from fedimg.boot import qemu, sample
from fedimg.boot.ssh import (
    FAILED,
    PASSED,
    SshUnreachable,
    run_checks,
    throwaway_key,
    wait_for_ssh,
)
from fedimg.config import Check
from fedimg.errors import TransientError


@pytest.fixture(scope="module")
def guest_client(
    build_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[paramiko.SSHClient]:
    image = sample.sample_image(build_dir)
    logs = tmp_path_factory.mktemp("ssh-logs")
    with qemu.running_guest(image, "bios", sample.SAMPLE_USER, deadline_s=60, log_dir=logs) as g:
        client = wait_for_ssh(g.host, g.port, g.user, g.pkey, deadline_s=10)
        with client:
            yield client


def test_throwaway_key_is_a_fresh_ed25519_pair_whose_line_matches_it() -> None:
    pkey, line = throwaway_key()
    other, _ = throwaway_key()
    kind, blob, comment = line.split(" ")
    assert kind == "ssh-ed25519" == pkey.get_name()
    assert blob == pkey.get_base64() != other.get_base64()
    assert comment == "fedimg-throwaway"
    public = paramiko.PKey.from_type_string(kind, paramiko.PublicBlob.from_string(line).key_blob)
    signature = pkey.sign_ssh_data(b"proof")
    assert public.verify_ssh_sig(b"proof", paramiko.Message(signature.asbytes()))


def test_wait_for_ssh_gives_up_at_its_deadline_with_a_transient_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pkey, _ = throwaway_key()
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"no SSH as root@127.0.0.1:\d+ after 2 s") as e:
        wait_for_ssh("127.0.0.1", port, "root", pkey, deadline_s=2)
    assert 2 <= time.monotonic() - started < 4
    assert isinstance(e.value, SshUnreachable)
    assert e.value.last_error.startswith("ConnectionRefusedError")
    assert e.value.retryable


def test_wait_for_ssh_retries_a_forwarder_that_drops_connections() -> None:
    """Like QEMU's port forwarding before the guest listens: accept, then close at once."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        accepted = 0
        stop = threading.Event()

        def drop_connections() -> None:
            nonlocal accepted
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                conn.close()
                accepted += 1

        thread = threading.Thread(target=drop_connections)
        thread.start()
        try:
            pkey, _ = throwaway_key()
            with pytest.raises(TransientError, match="closed before sending an SSH banner"):
                wait_for_ssh("127.0.0.1", port, "root", pkey, deadline_s=2)
        finally:
            stop.set()
            thread.join(5)
    assert accepted >= 2


def test_wait_for_ssh_stops_when_abort_if_raises() -> None:
    pkey, _ = throwaway_key()

    def machine_is_gone() -> None:
        raise RuntimeError("powered off")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="powered off"):
        wait_for_ssh("127.0.0.1", 9, "root", pkey, deadline_s=30, abort_if=machine_is_gone)
    assert time.monotonic() - started < 1


def test_check_passes_on_exit_zero_and_keeps_its_output(guest_client: paramiko.SSHClient) -> None:
    [mounts, df] = run_checks(
        guest_client, [Check("mounts", "cat /proc/mounts"), Check("df", "df -k /")], timeout_s=10
    )
    assert mounts.outcome == PASSED
    assert " / ext4 " in mounts.output
    assert df.outcome == PASSED
    assert "/dev/vda2" in df.output


def test_check_with_expect_compares_stripped_stdout(guest_client: paramiko.SSHClient) -> None:
    same, different = run_checks(
        guest_client,
        [
            Check("same", "printf '  ready \\n\\n'", expect="ready"),
            Check("different", "echo ready-ish", expect="ready"),
        ],
        timeout_s=10,
    )
    assert same.outcome == PASSED
    assert different.outcome == FAILED
    assert different.output == "ready-ish\n[expected 'ready']"


def test_nonzero_exit_fails_and_reports_status_and_stderr(
    guest_client: paramiko.SSHClient,
) -> None:
    [result] = run_checks(guest_client, [Check("fails", "echo oops >&2; exit 3")], timeout_s=10)
    assert result.outcome == FAILED
    assert result.output == "[stderr]\noops\n[exit status 3]"


def test_expect_ignores_stderr(guest_client: paramiko.SSHClient) -> None:
    [result] = run_checks(
        guest_client, [Check("noisy", "echo warn >&2; echo ok", expect="ok")], timeout_s=10
    )
    assert result.outcome == PASSED
    assert result.output == "ok\n[stderr]\nwarn\n"


def test_check_that_outlives_its_timeout_fails_and_the_next_one_still_runs(
    guest_client: paramiko.SSHClient,
) -> None:
    started = time.monotonic()
    slow, fast = run_checks(
        guest_client, [Check("slow", "sleep 30"), Check("fast", "/bin/true")], timeout_s=2
    )
    assert slow.outcome == FAILED
    assert slow.output == "did not finish within 2 s"
    assert fast.outcome == PASSED
    assert time.monotonic() - started < 10


def test_closed_connection_fails_checks_instead_of_raising(build_dir: Path, tmp_path: Path) -> None:
    image = sample.sample_image(build_dir)
    with qemu.running_guest(
        image, "bios", sample.SAMPLE_USER, deadline_s=60, log_dir=tmp_path
    ) as g:
        client = wait_for_ssh(g.host, g.port, g.user, g.pkey, deadline_s=10)
        client.close()
        [result] = run_checks(client, [Check("true", "/bin/true")], timeout_s=5)
    assert result.outcome == FAILED
    assert result.output.startswith("SSH error:")
