"""Parameter-free sequence mixers (DESIGN §4 op API): ``forward``, ``backward``,
``METHODS``, ``BACKENDS``."""
