//! Accepting connections on a plain stream listener (AF_INET, AF_INET6 or AF_UNIX), done
//! here instead of through `socket.accept()`.
//!
//! A server accepts every connection once, and `socket.accept()` pays for it in Python: the
//! `accept` and `socket.__init__` frames, an `inet_ntop` (a `sprintf`) for an IPv4 peer's
//! address, the `ioctl` that makes the socket non-blocking, which asyncio then asks for,
//! and, once the listener is drained, a `BlockingIOError`. `Acceptor` gives the same
//! `(socket.socket, address)` pair and the same other `OSError`s, with the socket already
//! non-blocking (`accept4` with `SOCK_NONBLOCK`, which `socket.socket` reads as a timeout
//! of 0.0, as `setblocking(False)` leaves it), and None when no connection is waiting. The
//! address is the one `socket.accept()` gives: the socket module's conversion of the
//! `sockaddr` the kernel filled, done the same way (see `peer_address`).

use std::ffi::{c_char, c_int, CStr};
use std::mem::{offset_of, size_of};

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::errors::os_error;

extern "C" {
    // The C library's, which the socket module formats IPv6 addresses with (the libc crate
    // does not declare it).
    fn inet_ntop(
        af: c_int,
        src: *const std::ffi::c_void,
        dst: *mut c_char,
        size: libc::socklen_t,
    ) -> *const c_char;
}

/// The longest IPv6 address text, with its NUL (`<netinet/in.h>`).
const INET6_ADDRSTRLEN: usize = 46;
use crate::transport::inet4;
use crate::transport::io::{retry_interrupted, socket_class};

/// `listener.accept()`, as `Acceptor.accept`, for a `socket.socket` listening with
/// SOCK_STREAM on AF_INET, AF_INET6 or AF_UNIX (`fast_accept` checks that before making
/// one); the listener's own family, type and protocol go to every accepted socket, as
/// `socket.accept` gives them.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct Acceptor {
    listener: Py<PyAny>,
    family: i32,
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
    fn new(listener: Bound<'_, PyAny>, family: i32, kind: i32, proto: i32) -> PyResult<Self> {
        if !matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX) {
            return Err(PyValueError::new_err(format!(
                "Acceptor takes AF_INET, AF_INET6 or AF_UNIX listeners, not family {family}"
            )));
        }
        Ok(Self {
            listener: listener.unbind(),
            family,
            kind,
            proto,
        })
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
        // Zeroed, as the socket module zeroes it: an unnamed Unix peer fills in only the
        // family, and its path then reads as "".
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `peer` is writable for `len` bytes, which the kernel is told.
        let accepted = retry_interrupted(|| unsafe {
            len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
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
        let address = peer_address(py, &peer, len)?;
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
                    self.family,
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

/// The address `socket.accept()` gives for the `len` bytes of `peer` the kernel filled:
/// None for none; `(host, port)` for IPv4; `(host, port, flowinfo, scope_id)` for IPv6,
/// the host as `inet_ntop` writes it; for a Unix peer, an abstract name as `bytes`, else
/// its path decoded with the file system encoding ("" for an unnamed peer).
fn peer_address<'py>(
    py: Python<'py>,
    peer: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> PyResult<Bound<'py, PyAny>> {
    if len == 0 {
        return Ok(py.None().into_bound(py));
    }
    match c_int::from(peer.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote an AF_INET address, a sockaddr_in, into storage
            // large and aligned enough for any sockaddr.
            let addr = unsafe { &*(peer as *const libc::sockaddr_storage).cast() };
            inet4::address_of(py, addr, len)
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let addr: &libc::sockaddr_in6 =
                unsafe { &*(peer as *const libc::sockaddr_storage).cast() };
            let mut text = [0 as c_char; INET6_ADDRSTRLEN];
            // SAFETY: `sin6_addr` is an in6_addr; `text` is writable for its length.
            let written = unsafe {
                inet_ntop(
                    libc::AF_INET6,
                    (&raw const addr.sin6_addr).cast(),
                    text.as_mut_ptr(),
                    text.len() as libc::socklen_t,
                )
            };
            if written.is_null() {
                return Err(os_error(py, std::io::Error::last_os_error()));
            }
            // SAFETY: inet_ntop wrote a NUL-terminated string into `text`.
            let host = unsafe { CStr::from_ptr(text.as_ptr()) }.to_string_lossy();
            let port = u16::from_be(addr.sin6_port);
            let flowinfo = u32::from_be(addr.sin6_flowinfo);
            Ok((host, port, flowinfo, addr.sin6_scope_id)
                .into_pyobject(py)?
                .into_any())
        }
        libc::AF_UNIX => {
            // SAFETY: as above, for a sockaddr_un.
            let addr: &libc::sockaddr_un =
                unsafe { &*(peer as *const libc::sockaddr_storage).cast() };
            let path_len = (len as usize).saturating_sub(offset_of!(libc::sockaddr_un, sun_path));
            if path_len > 0 && addr.sun_path[0] == 0 {
                // SAFETY: the kernel wrote `path_len` bytes of path, within `sun_path`.
                let name = unsafe {
                    std::slice::from_raw_parts(addr.sun_path.as_ptr().cast::<u8>(), path_len)
                };
                return Ok(PyBytes::new(py, name).into_any());
            }
            // SAFETY: `peer` was zeroed and is larger than a sockaddr_un, so a NUL follows
            // the path even when it fills `sun_path`; the function returns a new reference
            // or NULL with an exception set.
            unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_DecodeFSDefault(addr.sun_path.as_ptr()),
                )
            }
        }
        family => Err(PyValueError::new_err(format!(
            "accept() gave an address of family {family}"
        ))),
    }
}
