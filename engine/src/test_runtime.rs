//! Runtimes for the engine's tests (compiled only for tests).

use std::future::Future;

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

/// A fresh compio runtime; `Some(driver)` forces a driver (e.g. `DriverType::Poll`, the
/// path taken where seccomp forbids io_uring).
pub(crate) fn runtime(driver: Option<DriverType>) -> Runtime {
    let mut proactor = ProactorBuilder::new();
    if let Some(driver) = driver {
        proactor.driver_type(driver);
    }
    RuntimeBuilder::new()
        .with_proactor(proactor)
        .build()
        .expect("compio runtime")
}

/// Runs a test body on a fresh runtime with the default (io_uring) driver.
pub(crate) fn run<F: Future>(body: F) -> F::Output {
    runtime(None).block_on(body)
}
