"""Other serving frameworks running the same model and preprocessing, for ``loadtest compare``.

Each peer lives in its own virtual environment under the peers folder
(``$CONVSERVE_PEERS_DIR``, default ``~/.cache/convserve/peers``), created by
``python -m loadtest.peers install`` (``make bench-peers``). The service modules here are
imported *inside those environments*, which hold numpy, Pillow, TensorFlow and the framework
only: nothing in this package (nor ``loadtest/__init__.py``) may import anything else at
module level. :mod:`loadtest.peers.registry` says how to install, start and call each peer.
"""
