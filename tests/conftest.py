"""Shared fixtures: a moto server over HTTP (the AWS stand-in) and settings pointing at it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedimg.config import Settings, validate
from fedimg.standins.moto import moto_in_process, reset
from tests.services import rabbitmq


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_in_process() as url:
        yield url


@pytest.fixture
def aws(moto_url: str) -> str:
    """A moto server with no resources; yields its URL."""
    reset(moto_url)
    return moto_url


@pytest.fixture
def settings(aws: str) -> Settings:
    """Settings for the stand-in: small retry budget so unimplemented calls fail fast."""
    s = Settings()
    s = dataclasses.replace(
        s,
        aws=dataclasses.replace(
            s.aws,
            endpoint_url=aws,
            max_attempts=2,
            upload_workers=8,
            wait_seconds=30,
            regions=("us-east-1", "us-west-2", "eu-west-1"),
        ),
        # Boot tests SSH to a QEMU guest on loopback.
        test=dataclasses.replace(s.test, ssh_cidr="127.0.0.1/32"),
    )
    return validate(s)


@pytest.fixture(scope="session")
def build_dir() -> Path:
    """The project's build folder (sample images are cached here across runs)."""
    d = Path(__file__).resolve().parent.parent / "build"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A real RabbitMQ broker: $FEDIMG_TEST_AMQP_URL, else a throwaway node started here."""
    with rabbitmq() as url:
        yield url
