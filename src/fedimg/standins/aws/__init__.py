"""The strict AWS stand-in: moto, with the AWS rules fedimg relies on enforced as documented.

moto accepts much that AWS refuses (duplicate AMI names, ClientTokens ignored, block checksums never
checked, RegisterImage attributes dropped …). A test proves only what its stand-in enforces, so
``install()`` patches moto's EC2, EBS and SSM handlers in this process with the documented rules,
each answering with AWS's own error code. Every rule lives in one small function that names the
documentation it follows, and has a test of its own under ``tests/standins/``.

Options come from the environment (``options.py``), read at each request, so a moto server in
another process behaves the same and a test can change them while the server runs.
"""

from __future__ import annotations

import threading

_installed = False
_lock = threading.Lock()


def install() -> None:
    """Applies every rule to moto in this process (once; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        from fedimg.standins.aws import ebs, ec2, ssm

        ec2.install()
        ebs.install()
        ssm.install()
        _installed = True
