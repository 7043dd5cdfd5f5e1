"""The cases bench/bench_faults.py runs: one module per boundary, each with `cases(work: Path) -> Iterator[Outcome]`."""
