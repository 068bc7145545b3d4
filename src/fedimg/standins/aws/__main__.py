"""``python -m fedimg.standins.aws -H 127.0.0.1 -p PORT``: a strict moto server, own process."""

from __future__ import annotations

import sys

from fedimg.standins.aws import install


def main() -> None:
    install()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
