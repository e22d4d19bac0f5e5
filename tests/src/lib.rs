//! End-to-end tests live in `tests/tests/`; they start real `shoal` processes.
