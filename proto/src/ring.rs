//! Rendezvous (highest random weight) hash ring. (To be completed.)
