"""Other serving frameworks running the same model and preprocessing, for ``loadtest compare``.

Each peer lives in its own virtual environment under the peers folder
(``$CONVSERVE_PEERS_DIR``, default ``~/.cache/convserve/peers``), created by
``python -m loadtest.peers install`` (``make bench-peers``). The service modules here are
imported *inside those environments*, which hold numpy, Pillow, TensorFlow and the framework
only: nothing in this package (nor ``loadtest/__init__.py``) may import anything else at
module level. :mod:`loadtest.peers.registry` says how to install, start and call each peer.
"""


def configurations() -> list:
    """``loadtest compare``'s plug-in hook: one row per peer (see :mod:`loadtest.peers.registry`)."""
    # Imported here, not at the top: the peers' venvs import this package and must not pull in
    # the compare machinery.
    from loadtest.peers.registry import configurations as peer_rows

    return peer_rows()
