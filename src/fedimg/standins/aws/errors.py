"""AWS's error answers for the strict stand-in.

A rule refuses a request by raising ``refuse(code, message)``: moto serializes the exception in the
service's own error shape (EC2: ``<Response><Errors><Error><Code>…``) with HTTP 400, which is how
AWS answers a client error, so botocore raises ``ClientError`` with that code and does not retry.
"""

from __future__ import annotations

from typing import NoReturn

from moto.ec2.exceptions import EC2ClientError


def refuse(code: str, message: str) -> NoReturn:
    """Answers the current request with AWS's client error ``code`` (HTTP 400).

    ``EC2ClientError`` is moto's base ``ServiceException``; other services' handlers (EBS, SSM)
    serialize it in their own protocol's error shape too.
    """
    raise EC2ClientError(code, message)
