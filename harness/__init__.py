"""flowgauge harness: specs, registry, planning, running, measuring, results and tables.

Nothing in this package knows a method by name; reference implementations live in
``implementations/`` and register themselves in the registries defined here.
"""

__version__ = "0.1.0"
