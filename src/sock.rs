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
            let size = size as usize;
            loop {
                let received = READ_BUFFER.with_borrow_mut(|buf| {
                    // SAFETY: `buf` holds READ_CHUNK >= size writable bytes.
                    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), size, 0) };
                    match n {
                        n if n >= 0 => Ok(PyBytes::new(py, &buf[..n as usize])),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
                match received {
                    Ok(data) => return Ok(Some(data.into_any())),
                    Err(err) => match after_failure(py, err)? {
                        Retry::Again => continue,
                        Retry::Later => return Ok(None),
                    },
                }
            }
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
        if let Some(sent) = with_plain_bytes(data, |bytes| send(py, fd, bytes))? {
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
    match sock.call_method1(intern!(py, "connect"), (address,)) {
        Ok(_) => Ok(true),
        Err(err)
            if err.is_instance_of::<PyBlockingIOError>(py)
                || err.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
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
            loop {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let received = READ_BUFFER.with_borrow_mut(|buf| {
                    // SAFETY: `buf` holds READ_CHUNK >= size writable bytes; `peer` is
                    // writable for `len` bytes, which the kernel is told.
                    let n = unsafe {
                        libc::recvfrom(
                            fd,
                            buf.as_mut_ptr().cast(),
                            size as usize,
                            0,
                            (&raw mut peer).cast(),
                            &mut len,
                        )
                    };
                    match n {
                        n if n >= 0 => Ok(PyBytes::new(py, &buf[..n as usize])),
                        _ => Err(std::io::Error::last_os_error()),
                    }
                });
                match received {
                    Ok(data) => {
                        let address = match inet4::from_sockaddr(&peer, len) {
                            Some((ip, port)) => inet4::address(py, ip, port)?,
                            None => py.None().into_bound(py),
                        };
                        let pair = (data, address).into_pyobject(py)?;
                        return Ok(Some(pair.into_any()));
                    }
                    Err(err) => match after_failure(py, err)? {
                        Retry::Again => continue,
                        Retry::Later => return Ok(None),
                    },
                }
            }
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
            loop {
                // SAFETY: `target` holds a writable buffer of `len` bytes, exported for us
                // until it is dropped; `recv` runs no Python code.
                let n = unsafe { libc::recv(fd, target.ptr(), target.len(), 0) };
                if n >= 0 {
                    return count_or_none(py, Some(n as usize));
                }
                match after_failure(py, std::io::Error::last_os_error())? {
                    Retry::Again => continue,
                    Retry::Later => return Ok(None),
                }
            }
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
            loop {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: `target` holds a writable buffer of at least `size` bytes, exported
                // for us until it is dropped; `peer` is writable for `len` bytes.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        target.ptr(),
                        size as usize,
                        0,
                        (&raw mut peer).cast(),
                        &mut len,
                    )
                };
                if n >= 0 {
                    let address = match inet4::from_sockaddr(&peer, len) {
                        Some((ip, port)) => inet4::address(py, ip, port)?,
                        None => py.None().into_bound(py),
                    };
                    return Ok(Some((n as usize, address).into_pyobject(py)?.into_any()));
                }
                match after_failure(py, std::io::Error::last_os_error())? {
                    Retry::Again => continue,
                    Retry::Later => return Ok(None),
                }
            }
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
            loop {
                // SAFETY: `bytes` is readable for its length and `target` is a sockaddr_in
                // of the size given.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        0,
                        (&raw const target).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                if n >= 0 {
                    return Ok(Some(n as usize));
                }
                match after_failure(py, std::io::Error::last_os_error())? {
                    Retry::Again => continue,
                    Retry::Later => return Ok(None),
                }
            }
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

/// One `send` of `data`: the count sent, or `None` if the socket would block.
fn send(py: Python<'_>, fd: RawFd, data: &[u8]) -> PyResult<Option<usize>> {
    loop {
        // SAFETY: `data` is valid for reads of its length for the call.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match after_failure(py, std::io::Error::last_os_error())? {
            Retry::Again => continue,
            Retry::Later => return Ok(None),
        }
    }
}

enum Retry {
    /// Interrupted by a signal whose handler did not raise: make the call again (PEP 475).
    Again,
    /// Not ready: wait for the socket.
    Later,
}

/// What to do after a failed socket call; for anything but EINTR and EAGAIN, the
/// exception the socket method raises.
fn after_failure(py: Python<'_>, err: std::io::Error) -> PyResult<Retry> {
    match err.kind() {
        std::io::ErrorKind::Interrupted => {
            py.check_signals()?;
            Ok(Retry::Again)
        }
        std::io::ErrorKind::WouldBlock => Ok(Retry::Later),
        _ => Err(os_error(py, err)),
    }
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
