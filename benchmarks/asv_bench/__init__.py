"""flowgauge's asv suite: training steps, sampling and the CI suite's quality metrics.

asv imports this folder as the package ``asv_bench`` (``benchmark_dir`` in
``benchmarks/asv.conf.json``); the standalone scripts beside it in ``benchmarks/`` are not
part of it. See the "Performance history with asv" section of ``benchmarks/README.md``."""
