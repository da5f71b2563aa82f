"""In-repo fakes of upstream systems, shipped so `fibric up --demo` and the benchmarks can run a
connector against something real over HTTP. Never for production traffic."""
