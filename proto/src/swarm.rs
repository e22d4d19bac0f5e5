//! Per-(blob, stripe) swarm state machine. (To be completed.)
