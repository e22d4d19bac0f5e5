//! Tracker handout policy. (To be completed.)
