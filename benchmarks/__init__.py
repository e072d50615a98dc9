"""jnorm's benchmarks, outside the package: run from a clone, e.g. ``python -m benchmarks.bench``.

* :mod:`benchmarks.bench`: every layer against flax.linen (speed, memory, passes over the data)
  and the fused row-norm kernels' bandwidth (``--pallas``);
* :mod:`benchmarks.bench_collectives`: how many collectives one synced batch norm costs;
* :mod:`benchmarks.accuracy`: jnorm's and flax's errors against float64 on hard data.

Speed goals are reported as ratios here, never asserted in tests.
"""
