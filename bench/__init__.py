"""The benchmarks behind BENCHMARKS.md, one entry point each, run from the repository root:
`python -m bench.latency_fidelity`, `bench.search_quality`, `bench.compression`, `bench.proxyless`.
Each prints its section, writes it into BENCHMARKS.md and its raw numbers into bench/results/
(`report.publish`; `--no-write` prints only). `bench.ray_throughput` and `bench.proxyless_memory`
are the subprocess entries that search_quality and proxyless start for their isolated parts."""
