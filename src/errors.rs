//! Turning OS errors into the Python exceptions the stdlib raises for them.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// `OSError(errno, strerror)`, which Python maps to the errno's subclass
/// (`ConnectionRefusedError`, `BlockingIOError`, …) exactly as `socket` and `os` do.
pub fn os_error(py: Python<'_>, err: std::io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => {
            let message = py
                .import("os")
                .and_then(|os| os.getattr("strerror")?.call1((errno,))?.extract::<String>())
                .unwrap_or_else(|_| err.to_string());
            PyOSError::new_err((errno, message))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}
