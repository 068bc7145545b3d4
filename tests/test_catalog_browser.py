"""The catalog page as a user sees it: Debian's Chromium, headless, driven through chromedriver.

The page is served over HTTP on loopback from the files ``write_catalog`` wrote for AMIs on the
strict stand-in. No browser is downloaded: the test uses the system's chromium and chromedriver
(scripts/install-system-deps.sh installs them) and is skipped, saying so, where they are absent.

``FEDIMG_CATALOG_SCREENSHOT=docs/catalog.png`` also saves a screenshot of the page there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fedimg.aws.clients import Clients
from fedimg.catalog import read_catalog, write_catalog
from fedimg.identity import TAG_MANAGED
from fedimg.standins.samplecompose import serve_directory
from tests.catalog_world import REGIONS, CatalogWorld, make_world
from tests.helpers import ec2

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed "
        "(scripts/install-system-deps.sh installs them)",
        allow_module_level=True,
    )
from selenium import webdriver  # noqa: E402 - the dev extra has it; only the browser may be absent
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

SCREENSHOT_ENV = "FEDIMG_CATALOG_SCREENSHOT"
PAGE_LOAD_SECONDS = 15


@pytest.fixture(scope="module")
def world(moto_url: str) -> CatalogWorld:
    return make_world(moto_url)


@pytest.fixture(scope="module")
def site(world: CatalogWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The catalog's directory, written from AWS and served on loopback; yields the page's URL."""
    out = tmp_path_factory.mktemp("catalog")
    write_catalog(read_catalog(world.settings, Clients(world.settings.aws)), out)
    with serve_directory(out) as base:
        yield f"{base}/index.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1640,720",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, site: str) -> Any:
    browser.get(site)
    return browser


def visible_rows(driver: Any) -> list[Any]:
    return [
        r for r in driver.find_elements(By.CSS_SELECTOR, "#images tbody tr") if r.is_displayed()
    ]


def row_fields(row: Any) -> dict[str, str]:
    link = row.find_element(By.CSS_SELECTOR, "a.launch").get_attribute("href")
    return {
        "kind": row.get_attribute("data-kind"),
        "arch": row.get_attribute("data-arch"),
        "region": row.get_attribute("data-region"),
        "release": row.find_element(By.CSS_SELECTOR, "td").text,
        "ami": row.find_element(By.CSS_SELECTOR, "code.ami").text,
        "link": link,
    }


def public_fedimg_amis(url: str) -> dict[str, str]:
    """What AWS holds, asked afresh: fedimg's public AMIs per configured region."""
    found = {}
    for region in REGIONS:
        images = ec2(url, region).describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]
        )["Images"]
        found |= {i["ImageId"]: region for i in images if i.get("Public")}
    return found


def test_the_ga_row_is_first(page: Any) -> None:
    first = row_fields(visible_rows(page)[0])
    assert (first["kind"], first["release"]) == ("ga", "42")
    if os.environ.get(SCREENSHOT_ENV):
        path = Path(os.environ[SCREENSHOT_ENV])
        path.parent.mkdir(parents=True, exist_ok=True)
        assert page.save_screenshot(str(path))


def test_every_ami_in_the_page_is_one_aws_holds(page: Any, moto_url: str) -> None:
    shown = {f["ami"]: f["region"] for f in map(row_fields, visible_rows(page))}
    assert shown == public_fedimg_amis(moto_url)


def test_every_launch_link_names_its_region_and_ami(page: Any) -> None:
    rows = [row_fields(r) for r in visible_rows(page)]
    assert rows
    for row in rows:
        link = urlsplit(row["link"])
        assert (link.scheme, link.netloc, link.path) == (
            "https",
            "console.aws.amazon.com",
            "/ec2/home",
        )
        assert parse_qs(link.query) == {"region": [row["region"]]}
        assert link.fragment == f"LaunchInstances:ami={row['ami']}"


def test_the_filters_change_what_is_shown(page: Any, world: CatalogWorld) -> None:
    everything = len(world.listed)
    counter = page.find_element(By.ID, "shown")
    assert len(visible_rows(page)) == everything
    assert counter.text == f"{everything} of {everything} images shown"

    Select(page.find_element(By.ID, "arch")).select_by_value("arm64")
    arm = [row_fields(r) for r in visible_rows(page)]
    assert {r["arch"] for r in arm} == {"arm64"} and len(arm) == 3

    Select(page.find_element(By.ID, "region")).select_by_value("eu-west-1")
    (only,) = [row_fields(r) for r in visible_rows(page)]
    assert (only["arch"], only["region"], only["kind"]) == ("arm64", "eu-west-1", "ga")
    assert counter.text == f"1 of {everything} images shown"
    assert urlsplit(page.current_url).fragment == "arch=arm64&region=eu-west-1"

    Select(page.find_element(By.ID, "arch")).select_by_value("")
    assert {row_fields(r)["region"] for r in visible_rows(page)} == {"eu-west-1"}
    assert len(visible_rows(page)) == 3  # Fedora 42 on both arches, 43 Beta on x86_64


def test_a_filtered_address_opens_filtered(browser: Any, site: str) -> None:
    browser.get("about:blank")  # a new load, not a jump within the page
    browser.get(f"{site}#region=us-west-2")
    regions = {row_fields(r)["region"] for r in visible_rows(browser)}
    assert regions == {"us-west-2"}
    assert Select(browser.find_element(By.ID, "region")).first_selected_option.text == "us-west-2"
