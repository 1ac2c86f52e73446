//! The socket calls of `loop.sock_recv` and `loop.sock_sendall`, made here for a plain
//! non-blocking `socket.socket`.
//!
//! `sock.recv(n)` and `sock.send(data)` parse their arguments with the old `PyArg_Parse*`
//! machinery, release the GIL around a syscall that cannot block, allocate `n` bytes and
//! shrink them, and report "not ready" as a `BlockingIOError` that the coroutine then
//! catches: in a request/response exchange that is every first attempt. Here the syscall
//! is made directly, the data copied out of the thread's read buffer, and "not ready"
//! returned as `None`. What these functions do not take on (a subclass, which may
//! override the method; a blocking or timed socket, whose method waits; a closed socket,
//! an unusual size or buffer) goes to the socket's own method, as on the stdlib loop, with
//! its would-block errors also returned as `None`.

use std::mem::size_of;
use std::os::fd::RawFd;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyMemoryView};

use crate::errors::os_error;
use crate::transport::inet4;
use crate::transport::io::{socket_class, socket_family, socket_type, READ_BUFFER, READ_CHUNK};

/// `sock.recv(n)`, or `None` where that would raise `BlockingIOError` or
/// `InterruptedError`.
#[pyfunction]
pub fn _sock_recv_now<'py>(
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let (Some(fd), Ok(size)) = (plain_nonblocking_fd(sock)?, n.extract::<isize>()) {
        if size > 0 && size as usize <= READ_CHUNK {
            let data = retrying(py, || {
                READ_BUFFER.with_borrow_mut(|buf| {
                    // SAFETY: `buf` holds READ_CHUNK >= size writable bytes.
                    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), size as usize, 0) };
                    counted(n).map(|n| PyBytes::new(py, &buf[..n]).into_any())
                })
            })?;
            return Ok(data);
        }
    }
    none_if_not_ready(py, sock.call_method1(intern!(py, "recv"), (n,)))
}

/// `sock.send(data)`, or `None` where that would raise `BlockingIOError` or
/// `InterruptedError`.
#[pyfunction]
pub fn _sock_send_now<'py>(
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let Some(fd) = plain_nonblocking_fd(sock)? {
        let sent = with_plain_bytes(data, |bytes| {
            // SAFETY: `bytes` is valid for reads of its length for the call.
            retrying(py, || {
                counted(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) })
            })
        })?;
        if let Some(sent) = sent {
            return count_or_none(py, sent?);
        }
    }
    none_if_not_ready(py, sock.call_method1(intern!(py, "send"), (data,)))
}

/// `sock.connect(address)`: True once connected, False while the connection goes on in
/// the background (where `sock.connect` raises `BlockingIOError` or `InterruptedError`,
/// as for every TCP connection started on a non-blocking socket: building that exception
/// cost more than the rest of `loop.sock_connect`'s first step). A plain non-blocking
/// AF_INET `socket.socket` with a `(dotted quad, port)` address connects here, after the
/// same audit event; anything else goes to `sock.connect`.
#[pyfunction]
pub fn _sock_connect_now(sock: &Bound<'_, PyAny>, address: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = sock.py();
    if let Some(fd) = plain_nonblocking_fd(sock)? {
        if let (libc::AF_INET, Some((ip, port))) =
            (socket_family(sock)?, inet4::plain_address(address))
        {
            inet4::audit(sock, c"socket.connect", address)?;
            let target = inet4::sockaddr(ip, port);
            // SAFETY: `target` is a sockaddr_in of the size given.
            let rc = unsafe {
                libc::connect(
                    fd,
                    (&raw const target).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                return Ok(true);
            }
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                // The errnos the socket module raises as BlockingIOError.
                Some(libc::EINPROGRESS | libc::EALREADY | libc::EAGAIN) => Ok(false),
                Some(libc::EINTR) => {
                    // As the socket module does: a signal handler may raise first.
                    py.check_signals()?;
                    Ok(false)
                }
                _ => Err(os_error(py, err)),
            };
        }
    }
    Ok(none_if_not_ready(py, sock.call_method1(intern!(py, "connect"), (address,)))?.is_some())
}

/// `sock.recvfrom(bufsize)`, or `None` where that would raise `BlockingIOError` or
/// `InterruptedError`. Made here for a plain non-blocking AF_INET datagram socket and a size
/// in 1..256 KiB (a longer datagram is cut to `bufsize`, as `recvfrom` does).
#[pyfunction]
pub fn _sock_recvfrom_now<'py>(
    sock: &Bound<'py, PyAny>,
    bufsize: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let (Some(fd), Ok(size)) = (plain_inet4_datagram_fd(sock)?, bufsize.extract::<isize>()) {
        if size > 0 && size as usize <= READ_CHUNK {
            let received = retrying(py, || {
                READ_BUFFER.with_borrow_mut(|buf| {
                    // SAFETY: `buf` holds READ_CHUNK >= size writable bytes.
                    unsafe { recvfrom(fd, buf.as_mut_ptr().cast(), size as usize) }
                        .map(|(n, peer, len)| (PyBytes::new(py, &buf[..n]), peer, len))
                })
            })?;
            return received
                .map(|(data, peer, len)| pair(py, data.into_any(), &peer, len))
                .transpose();
        }
    }
    none_if_not_ready(py, sock.call_method1(intern!(py, "recvfrom"), (bufsize,)))
}

/// `sock.recv_into(buf)`, or `None` where that would raise `BlockingIOError` or
/// `InterruptedError`. Made here for a plain non-blocking socket and a non-empty `bytearray`
/// or `memoryview` that exports a writable C-contiguous buffer.
#[pyfunction]
pub fn _sock_recv_into_now<'py>(
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let Some(fd) = plain_nonblocking_fd(sock)? {
        if let Some(target) = WritableBuffer::of(buf) {
            // SAFETY: `target` holds a writable buffer of `len` bytes, exported for us until
            // it is dropped.
            let received = retrying(py, || {
                counted(unsafe { libc::recv(fd, target.ptr(), target.len(), 0) })
            })?;
            return count_or_none(py, received);
        }
    }
    none_if_not_ready(py, sock.call_method1(intern!(py, "recv_into"), (buf,)))
}

/// `sock.recvfrom_into(buf, nbytes)`, or `None` where that would raise `BlockingIOError`
/// or `InterruptedError`. Made here for a plain non-blocking AF_INET datagram socket, a
/// buffer as `recv_into` takes it and `nbytes` in 1..=its length in bytes.
#[pyfunction]
pub fn _sock_recvfrom_into_now<'py>(
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
    nbytes: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let (Some(fd), Ok(size)) = (plain_inet4_datagram_fd(sock)?, nbytes.extract::<isize>()) {
        if let Some(target) =
            WritableBuffer::of(buf).filter(|b| size > 0 && size as usize <= b.len())
        {
            // SAFETY: `target` holds a writable buffer of at least `size` bytes, exported for
            // us until it is dropped.
            let received = retrying(py, || unsafe { recvfrom(fd, target.ptr(), size as usize) })?;
            return received
                .map(|(n, peer, len)| pair(py, n.into_pyobject(py)?.into_any(), &peer, len))
                .transpose();
        }
    }
    none_if_not_ready(
        py,
        sock.call_method1(intern!(py, "recvfrom_into"), (buf, nbytes)),
    )
}

/// A writable, C-contiguous, non-empty buffer exported by a `bytearray` or `memoryview`
/// (asked for with `PyBUF_WRITABLE`, which pyo3's buffer type does not request), released
/// on drop.
struct WritableBuffer(Box<ffi::Py_buffer>);

impl WritableBuffer {
    /// The buffer of `obj`, or None for any other object or a buffer that is read-only,
    /// not C-contiguous or empty: the socket's own method takes (or rejects) those.
    fn of(obj: &Bound<'_, PyAny>) -> Option<Self> {
        if !(obj.is_exact_instance_of::<PyByteArray>()
            || obj.is_exact_instance_of::<PyMemoryView>())
        {
            return None;
        }
        // SAFETY: all-zero is a valid Py_buffer to be filled.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: attached; `obj` is live and `view` is writable. On failure the exception
        // is cleared: the socket's method then raises its own for the same object.
        let flags = ffi::PyBUF_WRITABLE | ffi::PyBUF_C_CONTIGUOUS;
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            unsafe { ffi::PyErr_Clear() };
            return None;
        }
        let exported = Self(view);
        (exported.len() > 0).then_some(exported)
    }

    fn ptr(&self) -> *mut libc::c_void {
        self.0.buf
    }

    fn len(&self) -> usize {
        self.0.len as usize
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        // SAFETY: the buffer was exported by a successful PyObject_GetBuffer and is
        // released once; buffers are only held by functions that run attached.
        unsafe { ffi::PyBuffer_Release(&mut *self.0) };
    }
}

/// `sock.sendto(data, address)`, or `None` where that would raise `BlockingIOError` or
/// `InterruptedError`. Made here, after the same `socket.sendto` audit event, for a plain
/// non-blocking AF_INET datagram socket, a `(dotted quad, port)` address and a `bytes` or
/// contiguous `bytearray`/`memoryview`.
#[pyfunction]
pub fn _sock_sendto_now<'py>(
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    address: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    if let (Some(fd), Some((ip, port))) = (
        plain_inet4_datagram_fd(sock)?,
        inet4::plain_address(address),
    ) {
        let target = inet4::sockaddr(ip, port);
        let sent = with_plain_bytes(data, |bytes| -> PyResult<Option<usize>> {
            inet4::audit(sock, c"socket.sendto", address)?;
            retrying(py, || counted(inet4::send_to(fd, bytes, &target)))
        })?;
        if let Some(sent) = sent {
            return count_or_none(py, sent?);
        }
    }
    none_if_not_ready(
        py,
        sock.call_method1(intern!(py, "sendto"), (data, address)),
    )
}

/// `f` of the bytes of `data` when it is a `bytes`, or a `bytearray` or `memoryview` whose
/// buffer is C-contiguous; None (without calling `f`) for anything else, which the socket
/// object's own method takes (or rejects) instead.
fn with_plain_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<Option<R>> {
    if let Ok(bytes) = data.cast_exact::<PyBytes>() {
        return Ok(Some(f(bytes.as_bytes())));
    }
    if !(data.is_exact_instance_of::<PyByteArray>() || data.is_exact_instance_of::<PyMemoryView>())
    {
        return Ok(None);
    }
    let view = PyUntypedBuffer::get(data)?;
    if !view.is_c_contiguous() {
        return Ok(None);
    }
    // SAFETY: the exported buffer is C-contiguous, `len_bytes()` long, and stays valid
    // while `view` lives; `f` only makes syscalls with it (an audit hook it may run gets
    // no access to the slice).
    let bytes =
        unsafe { std::slice::from_raw_parts(view.buf_ptr().cast::<u8>(), view.len_bytes()) };
    Ok(Some(f(bytes)))
}

/// A byte count as a Python int, or None.
fn count_or_none(py: Python<'_>, sent: Option<usize>) -> PyResult<Option<Bound<'_, PyAny>>> {
    sent.map(|n| n.into_pyobject(py).map(Bound::into_any))
        .transpose()
        .map_err(Into::into)
}

/// The fd of `sock` if it is a plain non-blocking `socket.socket` of AF_INET and
/// SOCK_DGRAM.
fn plain_inet4_datagram_fd(sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let Some(fd) = plain_nonblocking_fd(sock)? else {
        return Ok(None);
    };
    let datagram = socket_family(sock)? == libc::AF_INET && socket_type(sock)? == libc::SOCK_DGRAM;
    Ok(datagram.then_some(fd))
}

/// The fd of `sock` if it is a plain `socket.socket` in non-blocking mode (timeout 0).
fn plain_nonblocking_fd(sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = sock.py();
    if !sock.get_type().is(socket_class(py)?) {
        return Ok(None);
    }
    let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
    match timeout.cast::<PyFloat>() {
        Ok(timeout) if timeout.value() == 0.0 => {}
        _ => return Ok(None),
    }
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    Ok((fd >= 0).then_some(fd))
}

/// `attempt` (a socket call) until it does not fail with EINTR (PEP 475: signal handlers
/// run between tries, and one that raises ends it): its result, or None when the socket is
/// not ready; any other failure is the exception the socket method raises.
fn retrying<T>(
    py: Python<'_>,
    mut attempt: impl FnMut() -> std::io::Result<T>,
) -> PyResult<Option<T>> {
    loop {
        match attempt() {
            Ok(value) => return Ok(Some(value)),
            Err(err) => match err.kind() {
                std::io::ErrorKind::Interrupted => py.check_signals()?,
                std::io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(os_error(py, err)),
            },
        }
    }
}

/// A syscall's count, or its error.
fn counted(n: isize) -> std::io::Result<usize> {
    if n >= 0 {
        Ok(n as usize)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `recvfrom` of at most `size` bytes into `buf`: the count and the sender's address.
///
/// # Safety
/// `buf` is writable for `size` bytes.
unsafe fn recvfrom(
    fd: RawFd,
    buf: *mut libc::c_void,
    size: usize,
) -> std::io::Result<(usize, libc::sockaddr_in, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `buf` is writable for `size` bytes (the caller's promise) and `peer` for
    // `len` bytes, which the kernel is told.
    let n = unsafe { libc::recvfrom(fd, buf, size, 0, (&raw mut peer).cast(), &mut len) };
    counted(n).map(|n| (n, peer, len))
}

/// `(first, address)`, the address being the sender's as the socket module gives it.
fn pair<'py>(
    py: Python<'py>,
    first: Bound<'py, PyAny>,
    peer: &libc::sockaddr_in,
    len: libc::socklen_t,
) -> PyResult<Bound<'py, PyAny>> {
    let address = inet4::address_of(py, peer, len)?;
    Ok((first, address).into_pyobject(py)?.into_any())
}

/// The socket method's result, or `None` for its would-block errors.
fn none_if_not_ready<'py>(
    py: Python<'py>,
    result: PyResult<Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err)
            if err.is_instance_of::<PyBlockingIOError>(py)
                || err.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}
