"""Device plumbing of the benchmarks: carrying files to the GPU machine, running the lego phases there, timing."""
