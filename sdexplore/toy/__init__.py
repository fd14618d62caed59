"""The toy world: procedural scenes (``world``), a judge that reads images of them (``judge``)."""
