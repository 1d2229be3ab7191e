"""The simulation harness (issue 6): many real engines on a virtual network.

``python -m simulations SCENARIO --nodes N --seed S [--json] [--plot FILE.png]``

It imports ``syncron_p2p`` and drives the very :class:`Engine` the node runs;
``syncron_p2p`` never imports it. See ``world.py`` (nodes, clock, network),
``scenarios.py``, ``invariants.py`` and ``runner.py``.
"""
