"""The project's studies and benchmarks, one folder per study; run each as ``python -m benchmarks.<study>.<script>``."""
