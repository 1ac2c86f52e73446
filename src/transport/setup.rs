//! `SocketTransport.__init__`'s work after its plain attributes, done in one call.
//!
//! A server builds a transport for every connection it accepts. As Python, that set-up was
//! about a hundred bytecodes. The attribute stores stay in `__init__` (a specialised store
//! is cheaper than a C-level `setattr`); the rest is here, in the same order: the peer's
//! address, the `TCP_NODELAY` decision, the core, the server's and the loop's records of
//! the transport, the first callbacks. Where a class may override a step
//! (`server._attach`, `loop.call_soon`), the same method is called.

use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyWeakrefReference;

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::transport::io::{socket_class, socket_family, socket_type};
use crate::transport::stream::StreamCore;

/// Whether `sock` is a TCP socket (IPv4 or IPv6 stream, protocol TCP), which gets
/// `TCP_NODELAY` as the stdlib loop gives every one: small writes go out at once.
fn is_tcp(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    let (family, kind) = match (socket_family(sock), socket_type(sock)) {
        (Ok(family), Ok(kind)) => (Some(family), Some(kind)),
        // Not a `_socket.socket`: its own attributes answer.
        (Err(err), _) | (_, Err(err)) if err.is_instance_of::<PyTypeError>(py) => (
            sock.getattr(intern!(py, "family"))?.extract().ok(),
            sock.getattr(intern!(py, "type"))?.extract().ok(),
        ),
        (Err(err), _) | (_, Err(err)) => return Err(err),
    };
    if !matches!(family, Some(libc::AF_INET | libc::AF_INET6)) || kind != Some(libc::SOCK_STREAM) {
        return Ok(false);
    }
    let proto = sock.getattr(intern!(py, "proto"))?;
    Ok(proto.extract::<i32>().ok() == Some(libc::IPPROTO_TCP))
}

/// `sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)`; the syscall itself for an exact
/// `socket.socket` (whose method does only that), the method for anything else.
fn set_nodelay(sock: &Bound<'_, PyAny>, fd: i32) -> PyResult<()> {
    let py = sock.py();
    if !sock.get_type().is(socket_class(py)?) {
        let args = (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        return sock.call_method1(intern!(py, "setsockopt"), args).map(drop);
    }
    let on: libc::c_int = 1;
    // SAFETY: `on` is a readable c_int for the call, whose size the kernel is told.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(py, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets up `transport`, a new `SocketTransport` over the connected non-blocking `sock`,
/// and returns the socket's fd. `SocketTransport.__init__` has stored the plain attributes
/// (`_extra` is `extra`, a dict); this adds the peer's address to `extra` unless given,
/// `TCP_NODELAY` on a TCP socket, the core (`_core`) and its registration, the server's
/// and the loop's records of the transport, then queues `connection_made`, the start of
/// reading and the waiter's result.
#[pyfunction]
#[pyo3(signature = (transport, loop_, sock, protocol, waiter, extra, server))]
pub fn _init_socket_transport(
    transport: &Bound<'_, PyAny>,
    loop_: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    waiter: &Bound<'_, PyAny>,
    extra: &Bound<'_, PyAny>,
    server: &Bound<'_, PyAny>,
) -> PyResult<i32> {
    let py = transport.py();
    let peername = intern!(py, "peername");
    if !extra.contains(peername)? {
        let address = match sock.call_method0(intern!(py, "getpeername")) {
            Ok(address) => address,
            Err(err) if err.is_instance_of::<PyOSError>(py) => py.None().into_bound(py),
            Err(err) => return Err(err),
        };
        extra.set_item(peername, address)?;
    }
    let fd: i32 = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    if is_tcp(sock)? {
        set_nodelay(sock, fd)?;
    }
    let server = Some(server).filter(|server| !server.is_none());
    let core = Bound::new(
        py,
        StreamCore::new(loop_, sock, protocol, transport, server)?,
    )?;
    transport.setattr(intern!(py, "_core"), &core)?;
    StreamCore::_register(&core)?;
    // One weak reference serves the loop's fd map and the server's set of clients.
    let client = match server {
        Some(server) => server.call_method1(intern!(py, "_attach"), (transport,))?,
        None => py.None().into_bound(py),
    };
    let client = if client.is_none() {
        PyWeakrefReference::new(transport)?.into_any()
    } else {
        client
    };
    loop_
        .getattr(intern!(py, "_transports"))?
        .set_item(fd, client)?;
    // As on the stdlib loop: connection_made first, reading right after (queued as a step
    // of the loop's own, not a Python callback), then the waiter.
    let call_soon = intern!(py, "call_soon");
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    loop_.call_method1(call_soon, (connection_made, transport))?;
    StreamCore::_start_reading_soon(&core);
    if !waiter.is_none() {
        static SET_RESULT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let set_result =
            SET_RESULT.import(py, "asyncio.futures", "_set_result_unless_cancelled")?;
        loop_.call_method1(call_soon, (set_result, waiter, py.None()))?;
    }
    Ok(fd)
}
