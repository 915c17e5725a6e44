"""The load-test targets and gateway payloads: names shared by the locustfile and the CLI."""

from __future__ import annotations

# --target → the locustfile's user class
TARGETS: dict[str, str] = {
    "gateway": "GatewayUser",
    "grpc": "GrpcUser",
    "rest": "RestUser",
    "peer": "PeerUser",  # a peer of loadtest/peers/, named with --peer
}
PAYLOADS = ("auto", "png", "multipart", "b64", "mix")


def payload_kinds(payload: str, batch_size: int) -> list[str]:
    """The gateway request bodies ``payload`` stands for at ``batch_size`` images per request.

    ``auto`` is a raw PNG at batch 1, else multipart; ``mix`` is every kind that carries the
    batch. ValueError for an unknown payload or a raw PNG with more than one image.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if payload == "auto":
        return ["png"] if batch_size == 1 else ["multipart"]
    if payload == "mix":
        return ["png", "multipart", "b64"] if batch_size == 1 else ["multipart", "b64"]
    if payload == "png" and batch_size != 1:
        raise ValueError("payload png is one raw image per request; use batch size 1")
    if payload not in PAYLOADS:
        raise ValueError(f"unknown payload {payload!r}; expected one of {', '.join(PAYLOADS)}")
    return [payload]
