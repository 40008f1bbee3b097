"""The pieces of ``benchmarks/bench.py`` (run that script; this package is
not installed with onion_tls):

* :mod:`.cells` - the matrix: which measurements exist, shared settings;
* :mod:`.workloads` - contexts, applications, connecting through the layers
  with onion_tls or asyncio's own TLS, the measurements (worker side);
* :mod:`.harness` - worker processes and the driver that runs the rounds;
* :mod:`.report` - the table.
"""
