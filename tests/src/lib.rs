//! End-to-end tests across components (real `shoal` processes, real clients such as skopeo
//! and the Docker engine, real servers such as an S3-compatible store) live in `tests/tests/`
//! and arrive with the servers. Today: `tracker` (the engine's tracker client against real
//! tracker servers on loopback), `engine` (the engine's API in one process) and `agent` (the
//! agent's pull API over real sockets, read with `curl`). Each binary's own command-line tests sit in its crate
//! (`tools/tests/`, `perf/tests/`), where cargo builds the binary for them.
