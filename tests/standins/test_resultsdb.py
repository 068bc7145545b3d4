"""The ResultsDB stand-in keeps ResultsDB's v2.0 contract, spoken to over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from resultsdb_api import ResultsDBapi

from fedimg.standins.resultsdb import (
    fail_next_posts,
    post_count,
    reset,
    resultsdb_standin,
)

TIMEOUT = 5


@pytest.fixture
def rdb() -> Iterator[str]:
    with resultsdb_standin() as url:
        yield url


def post(url: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(f"{url}/results", json=body, timeout=TIMEOUT, **kwargs)


def get(url: str, path: str, **params: str) -> Any:
    response = requests.get(f"{url}{path}", params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def result(outcome: str = "PASSED", testcase: str = "t.boot", **data: Any) -> dict[str, Any]:
    return {"outcome": outcome, "testcase": testcase, "data": data}


def ids(answer: dict[str, Any]) -> list[int]:
    return [r["id"] for r in answer["data"]]


def test_create_answers_201_with_the_result_in_resultsdb_shape(rdb: str) -> None:
    response = post(
        rdb,
        {
            "outcome": "PASSED",
            "testcase": {"name": "t.boot", "ref_url": "https://example.org/t"},
            "groups": ["g-1"],
            "note": "all good",
            "ref_url": "https://example.org/job/1",
            "data": {"item": "a.raw.xz", "tags": ["x", "y"], "count": 3},
            "_auth_token": None,
        },
    )
    assert response.status_code == 201
    body = response.json()
    assert body["id"] == 1
    assert body["outcome"] == "PASSED"
    assert body["testcase"] == {
        "name": "t.boot",
        "ref_url": "https://example.org/t",
        "href": f"{rdb}/testcases/t.boot",
    }
    assert body["groups"] == ["g-1"]
    assert body["note"] == "all good"
    assert body["ref_url"] == "https://example.org/job/1"
    assert body["data"] == {"item": ["a.raw.xz"], "tags": ["x", "y"], "count": ["3"]}
    assert body["href"] == f"{rdb}/results/1"
    assert body["submit_time"].startswith("20")
    assert get(rdb, "/results/1") == body


def test_outcome_is_upper_cased_and_validated(rdb: str) -> None:
    assert post(rdb, result(outcome="passed")).json()["outcome"] == "PASSED"
    response = post(rdb, result(outcome="GREAT"))
    assert response.status_code == 400
    assert "outcome must be one of" in response.json()["message"]
    assert post(rdb, {"testcase": "t"}).status_code == 400
    assert ids(get(rdb, "/results")) == [1]


def test_a_data_key_with_a_colon_is_rejected(rdb: str) -> None:
    response = post(rdb, result(**{"item:like": "x"}))
    assert response.status_code == 400
    assert "Colon not allowed" in response.json()["message"]
    assert get(rdb, "/results")["data"] == []


def test_a_testcase_needs_a_name(rdb: str) -> None:
    assert post(rdb, result(testcase="")).status_code == 400
    assert post(rdb, {"outcome": "PASSED", "testcase": {"ref_url": "u"}}).status_code == 400


def test_testcases_and_groups_are_created_on_the_fly(rdb: str) -> None:
    body = result(testcase="t.one")
    body["groups"] = ["plain-uuid", {"uuid": "obj-uuid", "description": "d", "ref_url": "u"}]
    assert post(rdb, body).status_code == 201
    assert post(rdb, {"outcome": "INFO", "testcase": {"name": "t.two", "ref_url": "r"}}).ok

    testcases = get(rdb, "/testcases")["data"]
    assert [(t["name"], t["ref_url"]) for t in testcases] == [("t.one", None), ("t.two", "r")]
    groups = {g["uuid"]: g for g in get(rdb, "/groups")["data"]}
    assert set(groups) == {"plain-uuid", "obj-uuid"}
    assert (groups["obj-uuid"]["description"], groups["obj-uuid"]["ref_url"]) == ("d", "u")
    assert groups["obj-uuid"]["results_count"] == 1
    assert get(rdb, "/groups", uuid="obj-uuid")["data"][0]["uuid"] == "obj-uuid"
    assert get(rdb, "/testcases/t.two")["ref_url"] == "r"


def test_filter_on_outcome_with_comma_as_or(rdb: str) -> None:
    for outcome in ("PASSED", "FAILED", "NEEDS_INSPECTION"):
        post(rdb, result(outcome=outcome))
    assert ids(get(rdb, "/results", outcome="FAILED")) == [2]
    assert ids(get(rdb, "/results", outcome="passed,needs_inspection")) == [3, 1]
    bad = requests.get(f"{rdb}/results", params={"outcome": "NOPE"}, timeout=TIMEOUT)
    assert bad.status_code == 400


def test_filter_on_testcases_and_testcases_like(rdb: str) -> None:
    for name in ("fedimg.ami.boot", "fedimg.image.localboot", "other.test"):
        post(rdb, result(testcase=name))
    assert ids(get(rdb, "/results", testcases="other.test,fedimg.ami.boot")) == [3, 1]
    assert ids(get(rdb, "/results", **{"testcases:like": "fedimg.*"})) == [2, 1]
    # ResultsDB ORs the exact names and the patterns together.
    both = {"testcases": "other.test", "testcases:like": "*.localboot"}
    assert ids(get(rdb, "/results", **both)) == [3, 2]


def test_other_keys_filter_on_data(rdb: str) -> None:
    post(rdb, result(item="a.raw.xz", arch="x86_64"))
    post(rdb, result(item="b.raw.xz", arch="aarch64"))
    post(rdb, result(item="c.qcow2", arch="x86_64"))
    assert ids(get(rdb, "/results", item="b.raw.xz")) == [2]
    assert ids(get(rdb, "/results", item="a.raw.xz,c.qcow2")) == [3, 1]
    assert ids(get(rdb, "/results", **{"item:like": "*.raw.xz"})) == [2, 1]
    # Several keys: all must match.
    assert ids(get(rdb, "/results", arch="x86_64", **{"item:like": "*.raw.xz"})) == [1]
    assert ids(get(rdb, "/results", item="missing")) == []


def test_filter_on_groups(rdb: str) -> None:
    post(rdb, {**result(), "groups": ["g1"]})
    post(rdb, {**result(), "groups": ["g2"]})
    assert ids(get(rdb, "/results", groups="g2")) == [2]
    assert ids(get(rdb, "/results", groups="g1,g2")) == [2, 1]


def test_since_filters_on_submit_time(rdb: str) -> None:
    post(rdb, {**result(), "submit_time": "2024-01-01T10:00:00.000000"})
    post(rdb, {**result(), "submit_time": "2024-02-01T10:00:00.000000"})
    # Milliseconds since the epoch: 2024-03-01T00:00:00Z.
    post(rdb, {**result(), "submit_time": 1709251200000})
    assert ids(get(rdb, "/results", since="2024-01-15T00:00:00")) == [3, 2]
    assert ids(get(rdb, "/results", since="2024-01-01T00:00:00,2024-02-15T00:00:00")) == [2, 1]
    assert get(rdb, "/results/3")["submit_time"] == "2024-03-01T00:00:00"
    bad = requests.get(f"{rdb}/results", params={"since": "yesterday"}, timeout=TIMEOUT)
    assert bad.status_code == 400
    assert post(rdb, {**result(), "submit_time": "soon"}).status_code == 400


def test_results_are_paged_with_prev_and_next_links(rdb: str) -> None:
    for _ in range(5):
        post(rdb, result())
    first = get(rdb, "/results", limit="2")
    assert ids(first) == [5, 4]
    assert first["prev"] is None
    second = requests.get(first["next"], timeout=TIMEOUT).json()
    assert ids(second) == [3, 2]
    third = requests.get(second["next"], timeout=TIMEOUT).json()
    assert ids(third) == [1]
    assert third["next"] is None
    assert ids(requests.get(third["prev"], timeout=TIMEOUT).json()) == [3, 2]


def test_latest_is_the_newest_result_per_testcase(rdb: str) -> None:
    post(rdb, result(testcase="a", outcome="FAILED", item="x"))
    post(rdb, result(testcase="b", outcome="PASSED", item="x"))
    post(rdb, result(testcase="a", outcome="PASSED", item="x"))
    post(rdb, result(testcase="a", outcome="FAILED", item="y"))
    latest = get(rdb, "/results/latest", item="x")
    assert set(latest) == {"data"}
    assert ids(latest) == [3, 2]
    assert ids(get(rdb, "/results/latest", testcases="a")) == [4]


def test_unknown_result_is_404(rdb: str) -> None:
    response = requests.get(f"{rdb}/results/99", timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json() == {"message": "Result not found"}


def test_the_resultsdb_api_client_works_against_it(rdb: str) -> None:
    api = ResultsDBapi(rdb, max_retries=0)
    created = api.create_result("PASSED", "t.client", groups=["g"], note="n", item="i")
    assert api.get_result(created["id"]) == created
    assert api.get_results(testcases_like="t.*")["data"] == [created]
    assert api.get_results(raw_params={"item": "i"})["data"] == [created]


def test_basic_auth_guards_writes_only() -> None:
    with resultsdb_standin(auth=("fedimg", "s3cret")) as url:
        assert post(url, result()).status_code == 401
        assert post(url, result(), auth=("fedimg", "wrong")).status_code == 401
        assert post(url, result(), auth=("fedimg", "s3cret")).status_code == 201
        assert ids(get(url, "/results")) == [1]


def test_planned_failures_answer_the_next_posts(rdb: str) -> None:
    fail_next_posts(rdb, 1)
    assert post(rdb, result()).status_code == 500
    assert post(rdb, result()).status_code == 201
    fail_next_posts(rdb, 1, status=503, store=True)
    assert post(rdb, result()).status_code == 503
    assert ids(get(rdb, "/results")) == [2, 1]
    assert post_count(rdb) == 3


def test_reset_forgets_everything(rdb: str) -> None:
    post(rdb, result())
    reset(rdb)
    assert get(rdb, "/results")["data"] == []
    assert get(rdb, "/testcases")["data"] == []
    assert post_count(rdb) == 0
