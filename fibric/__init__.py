"""The ``fibric`` command: ``up`` (embedded stack), ``worker``, ``api`` and ``admin``.
Nothing imports this package except entry points."""
