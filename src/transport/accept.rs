//! Accepting connections on a plain AF_INET stream listener, done here instead of through
//! `socket.accept()`.
//!
//! A server accepts every connection once, and `socket.accept()` pays for it in Python: the
//! `accept` and `socket.__init__` frames, an `inet_ntop` (a `sprintf`) for the peer's
//! address, and the `ioctl` that makes the socket non-blocking, which asyncio then asks
//! for. `Acceptor` gives the same `(socket.socket, (host, port))` pair and the same
//! `OSError`s, with the socket already non-blocking (`accept4` with `SOCK_NONBLOCK`, which
//! `socket.socket` reads as a timeout of 0.0, as `setblocking(False)` leaves it).

use std::mem::size_of;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::os_error;
use crate::transport::inet4;
use crate::transport::io::{retry_interrupted, socket_class};

/// `listener.accept()`, as `Acceptor.accept`, for a `socket.socket` listening on AF_INET
/// with SOCK_STREAM (`fast_accept` checks that before making one); the listener's own type
/// and protocol go to every accepted socket, as `socket.accept` gives them.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct Acceptor {
    listener: Py<PyAny>,
    kind: i32,
    proto: i32,
}

/// `_socket.socket`'s own methods, called without the `socket.socket` layer.
struct SocketApi {
    new: Py<PyAny>,
    init: Py<PyAny>,
    fileno: Py<PyAny>,
}

fn socket_api(py: Python<'_>) -> PyResult<&'static SocketApi> {
    static API: PyOnceLock<SocketApi> = PyOnceLock::new();
    API.get_or_try_init(py, || {
        let base = py.import("_socket")?.getattr("socket")?;
        Ok(SocketApi {
            new: base.getattr("__new__")?.unbind(),
            init: base.getattr("__init__")?.unbind(),
            fileno: base.getattr("fileno")?.unbind(),
        })
    })
}

#[pymethods]
impl Acceptor {
    #[new]
    fn new(listener: Bound<'_, PyAny>, kind: i32, proto: i32) -> Self {
        Self {
            listener: listener.unbind(),
            kind,
            proto,
        }
    }

    /// One connection: `(socket.socket, (host, port))`, or None when none is waiting (where
    /// `socket.accept()` raises `BlockingIOError`: on a listener that is drained at every
    /// readiness, building that exception cost more than the rest of the call); raises the
    /// other errors `socket.accept()` raises.
    fn accept<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let api = socket_api(py)?;
        // Asked every time, as `socket.accept()` does: the listener may have been closed
        // by the code that ran for the previous connection (then -1 gives EBADF).
        let listener = self.listener.bind(py);
        let fd: i32 = api.fileno.call1(py, (listener,))?.extract(py)?;
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `peer` is writable for `len` bytes, which the kernel is told.
        let accepted = retry_interrupted(|| unsafe {
            len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            libc::accept4(
                fd,
                (&raw mut peer).cast(),
                &mut len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            ) as isize
        });
        let conn_fd = match accepted {
            Ok(fd) => fd as i32,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(os_error(py, err)),
        };
        let conn = self.wrap(py, api, conn_fd)?;
        let address = match inet4::from_sockaddr(&peer, len) {
            Some((ip, port)) => inet4::address(py, ip, port)?,
            None => py.None().into_bound(py), // no address given, which CPython reports as None
        };
        Ok(Some((conn, address)))
    }
}

impl Acceptor {
    /// A `socket.socket` owning `fd`: what `socket.socket(family, type, proto, fd)` builds,
    /// without its Python `__init__` frame (which sets exactly these two attributes).
    fn wrap<'py>(&self, py: Python<'py>, api: &SocketApi, fd: i32) -> PyResult<Bound<'py, PyAny>> {
        // Every failure before `__init__` takes the fd leaves it to be closed here.
        let owned = socket_class(py)
            .and_then(|class| api.new.bind(py).call1((class,)))
            .and_then(|conn| {
                let args = (
                    &conn,
                    libc::AF_INET,
                    self.kind | libc::SOCK_NONBLOCK,
                    self.proto,
                    fd,
                );
                api.init.call1(py, args).map(|_| conn)
            });
        let conn = match owned {
            Ok(conn) => conn,
            Err(err) => {
                // SAFETY: `fd` came from accept4 and no socket object took it.
                unsafe { libc::close(fd) };
                return Err(err);
            }
        };
        conn.setattr(intern!(py, "_io_refs"), 0)?;
        conn.setattr(intern!(py, "_closed"), false)?;
        Ok(conn)
    }
}
