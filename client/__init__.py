"""convserve client: the gateway's HTTP API and TF Serving's gRPC/REST APIs from Python and the shell.

Library::

    from client import GatewayClient
    print(GatewayClient("http://localhost:8080").predict("tests/support/images/ankle_boot.png"))

Command line: ``python -m client predict IMG... [--gateway URL | --grpc HOST:PORT | --rest URL]``
(see ``client.cli``).
"""

from client.api import GatewayClient, Input, Prediction, TFServingClient
from client.errors import (
    ClientConnectionError,
    ClientError,
    ClientInputError,
    ClientTimeout,
    ServerError,
)

__all__ = [
    "ClientConnectionError",
    "ClientError",
    "ClientInputError",
    "ClientTimeout",
    "GatewayClient",
    "Input",
    "Prediction",
    "ServerError",
    "TFServingClient",
]
