//! Write-side pieces every transport shares: the queue of unsent bytes, the water marks,
//! and telling the protocol to pause or resume writing.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::transport::io::{send_chunks, Syscalls, MAX_IOVECS};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The stdlib's default high-water mark; the low one is a quarter of it.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;

/// `set_write_buffer_limits(high, low)` as the stdlib reads it: a missing mark is derived
/// from the other (high = 4 × low, low = high // 4), and `high >= low >= 0` must hold.
/// Returns `(high, low)`.
pub fn water_marks(high: Option<i64>, low: Option<i64>) -> PyResult<(usize, usize)> {
    let high = high.unwrap_or_else(|| low.map_or(DEFAULT_HIGH_WATER as i64, |l| 4 * l));
    let low = low.unwrap_or(high.div_euclid(4)); // Python's floor division
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}

/// A chunk of a write queue: a copy, or the `bytes` object written itself (immutable, so
/// holding a reference is as good as a copy, and much cheaper for large writes).
pub enum Chunk {
    Copied(Vec<u8>),
    Bytes(Py<PyBytes>),
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Copied(data) => data,
            // SAFETY: a bytes object's buffer never changes or moves while it is alive, and
            // the chunk's reference keeps it alive for the borrow; no interpreter state is
            // touched, so this needs no attachment.
            Chunk::Bytes(bytes) => unsafe {
                let object = bytes.as_ptr();
                std::slice::from_raw_parts(
                    pyo3::ffi::PyBytes_AS_STRING(object).cast::<u8>(),
                    pyo3::ffi::Py_SIZE(object) as usize,
                )
            },
        }
    }
}

/// Drops `n` sent bytes from the front of `queue`, whose front chunk is already sent up
/// to `front_sent`; `queued` counts the unsent bytes.
pub fn consume<T: AsRef<[u8]>>(
    queue: &mut VecDeque<T>,
    front_sent: &mut usize,
    queued: &mut usize,
    mut n: usize,
) {
    *queued -= n;
    while n > 0 {
        let Some(front) = queue.front() else {
            break;
        };
        let left = front.as_ref().len() - *front_sent;
        if n >= left {
            n -= left;
            *front_sent = 0;
            queue.pop_front();
        } else {
            *front_sent += n;
            n = 0;
        }
    }
}

/// Sends queued chunks until the queue is empty or the fd takes less than it was offered
/// (it is full then, and says so with a writable edge once it drains); returns how much
/// went out. One vectored write offers at most `MAX_IOVECS` chunks, and an fd that took
/// all of them gives no new edge: stopping there would leave the rest waiting for nothing.
pub fn send_queue<T: AsRef<[u8]>>(
    kind: Syscalls,
    fd: RawFd,
    queue: &mut VecDeque<T>,
    front_sent: &mut usize,
    queued: &mut usize,
) -> std::io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let offered = queue
            .iter()
            .take(MAX_IOVECS)
            .map(|chunk| chunk.as_ref().len())
            .sum::<usize>()
            - *front_sent;
        match send_chunks(kind, fd, queue.iter().map(AsRef::as_ref), *front_sent) {
            Ok(n) => {
                consume(queue, front_sent, queued, n);
                total += n;
                if n < offered {
                    break;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(total)
}

/// KeyboardInterrupt and SystemExit: what must stop the loop rather than be reported.
pub fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Calls `protocol.pause_writing()` (or `resume_writing()`); a failure goes to the
/// exception handler through `transport._report_error`, as on the stdlib loop, except
/// KeyboardInterrupt/SystemExit, which propagate.
pub fn tell_protocol(
    py: Python<'_>,
    protocol: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    pause: bool,
) -> PyResult<()> {
    let Some(protocol) = protocol else {
        return Ok(());
    };
    let method = if pause {
        "pause_writing"
    } else {
        "resume_writing"
    };
    let Err(err) = protocol.call_method0(py, method) else {
        return Ok(());
    };
    if is_exit(py, &err) {
        return Err(err);
    }
    if let Some(transport) = transport {
        transport.call_method1(
            py,
            "_report_error",
            (format!("protocol.{method}() failed"), err.into_value(py)),
        )?;
    }
    Ok(())
}
