//! The `shoal` binary. (Subcommands arrive with the components.)
fn main() {}
