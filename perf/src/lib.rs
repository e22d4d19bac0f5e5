//! Shoal's simulator and benchmark harness. (To be completed.)
