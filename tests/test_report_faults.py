"""ResultsDB reporting through the fault proxy: one retry layer, no result stored twice.

POSTs go through fedimg's own loop (``resultsdb.attempts``) and nothing below it; reads
(``fedimg results``) go through urllib3's Retry and nothing above it. The proxy counts every
request by method: the attempts are counted at the server side of the wire, not in fedimg.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from fedimg.config import ResultsDBSettings
from fedimg.errors import TransientError
from fedimg.report import ResultsReporter, fetch_results
from fedimg.standins.resultsdb import post_count, resultsdb_standin
from tests.faultproxy import FaultProxy, fault_proxy
from tests.test_report import COMPOSE, boot_report

TIMEOUT = 0.3  # the reporter's per-request timeout in these tests


@pytest.fixture
def rdb() -> Iterator[str]:
    with resultsdb_standin() as url:
        yield url


def behind(proxy: FaultProxy, rdb: str) -> str:
    """The stand-in's API URL, reached through the proxy."""
    return proxy.url + urlsplit(rdb).path


def reporter(url: str, attempts: int = 3) -> ResultsReporter:
    settings = ResultsDBSettings(url=url, attempts=attempts)
    return ResultsReporter(settings, timeout=TIMEOUT, backoff_seconds=0.01)


def stored(rdb: str) -> int:
    answer = requests.get(f"{rdb}/results", params={"limit": "100"}, timeout=5).json()
    return len(answer["data"])


def upstream(rdb: str) -> str:
    parts = urlsplit(rdb)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.mark.parametrize("kind", ["500", "503", "reset"])
def test_a_failed_post_is_posted_again_by_fedimgs_loop_only(rdb: str, kind: str) -> None:
    with fault_proxy(upstream(rdb), rate=1.0, kinds=(kind,), methods={"POST"}, max_faults=1) as p:
        assert reporter(behind(p, rdb)).report(boot_report()) is True
        methods = p.stats()["methods"]
    # Two POSTs on the wire: the faulted one and fedimg's retry; before the retry one GET asks
    # whether the first was stored after all. No hidden layer below adds any.
    assert methods == {"POST": 2, "GET": 1}
    assert stored(rdb) == 1


def test_a_post_whose_answer_is_cut_after_the_server_stored_it_is_not_stored_twice(
    rdb: str,
) -> None:
    with fault_proxy(upstream(rdb), rate=1.0, kinds=("cut",), methods={"POST"}, max_faults=1) as p:
        assert reporter(behind(p, rdb)).report(boot_report()) is True
        methods = p.stats()["methods"]
    assert methods == {"POST": 1, "GET": 1}  # the check found it: no second POST
    assert post_count(rdb) == 1
    assert stored(rdb) == 1


def test_a_stall_past_the_request_timeout_trips_it_and_the_post_is_retried(rdb: str) -> None:
    delay = 4 * TIMEOUT
    with fault_proxy(
        upstream(rdb),
        rate=1.0,
        kinds=("slow",),
        methods={"POST"},
        max_faults=1,
        slow_delay=(delay, delay),
    ) as p:
        started = time.monotonic()
        assert reporter(behind(p, rdb)).report(boot_report()) is True
        took = time.monotonic() - started
        stats = p.stats()
    assert stats["slow_tripped"] == 1  # fedimg hung up on its timeout, not the proxy on it
    assert took < delay
    assert stats["methods"] == {"POST": 2, "GET": 1}
    assert stored(rdb) == 1


@pytest.mark.parametrize("kind", ["500", "reset", "slow"])
def test_persistent_faults_give_up_after_exactly_the_attempts_and_never_raise(
    rdb: str, kind: str
) -> None:
    with fault_proxy(
        upstream(rdb), rate=1.0, kinds=(kind,), methods={"POST"}, slow_delay=(1.0, 1.0)
    ) as p:
        assert reporter(behind(p, rdb), attempts=3).report(boot_report()) is False
        methods = p.stats()["methods"]
    assert methods == {"POST": 3, "GET": 2}
    assert stored(rdb) == 0


def test_one_attempt_means_one_post_although_the_client_library_would_retry(rdb: str) -> None:
    # resultsdb_api's own adapter retries POSTs on 5xx; fedimg replaces it with a non-retrying one.
    with fault_proxy(upstream(rdb), rate=1.0, kinds=("503",), methods={"POST"}) as p:
        assert reporter(behind(p, rdb), attempts=1).report(boot_report()) is False
        assert p.stats()["methods"] == {"POST": 1}


@pytest.mark.parametrize("kind", ["500", "reset"])
def test_reading_results_retries_in_urllib3_only_then_is_transient(rdb: str, kind: str) -> None:
    with fault_proxy(upstream(rdb), rate=1.0, kinds=(kind,)) as p:
        with pytest.raises(TransientError, match="cannot read results"):
            fetch_results(behind(p, rdb), COMPOSE.id, timeout=TIMEOUT)
        # urllib3's Retry(total=2): three GETs, and fetch_results adds no loop of its own.
        assert p.stats()["methods"] == {"GET": 3}


def test_reading_results_gets_past_one_fault(rdb: str) -> None:
    assert reporter(rdb).report(boot_report())
    with fault_proxy(upstream(rdb), rate=1.0, kinds=("503",), max_faults=1) as p:
        [row] = fetch_results(behind(p, rdb), COMPOSE.id, timeout=TIMEOUT)
        assert p.stats()["methods"] == {"GET": 2}
    assert row.ami == "ami-0123456789abcdef0"
