"""DualRec: creator-side dispatch pipeline (core library).

The core library holds configuration, lake I/O, the synthetic world and the pure
Spark/NumPy transforms. Thin Spark entry points live in ``jobs/``, model code without
Spark in ``models/`` and the table contracts in ``schemas/``.
"""

__version__ = "0.1.0"
