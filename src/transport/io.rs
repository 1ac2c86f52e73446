//! The syscalls transports read and write with, and the loop thread's read buffer.

use std::cell::RefCell;
use std::os::fd::RawFd;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyType};

/// How much one read takes at most (the stdlib's `max_size`).
pub const READ_CHUNK: usize = 256 * 1024;
/// At most this many queued chunks go into one vectored write.
pub const MAX_IOVECS: usize = 64;

thread_local! {
    /// One read buffer per loop thread, shared by all its transports.
    pub static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Sockets use `recv`/`sendmsg` (no SIGPIPE on a closed peer); pipes and character
/// devices use `read`/`writev`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Syscalls {
    Socket,
    File,
}

/// What a read gave.
pub enum Received {
    Data(usize),
    Eof,
    WouldBlock,
    Failed(std::io::Error),
}

/// Reads once into `buf`, retrying on EINTR.
pub fn recv_into(kind: Syscalls, fd: RawFd, buf: &mut [u8]) -> Received {
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the call.
    retrying(|| unsafe {
        match kind {
            Syscalls::Socket => libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0),
            Syscalls::File => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
        }
    })
}

/// Reads once into `first`, then on into `second` (one `readv`), retrying on EINTR.
pub fn read_into_two(fd: RawFd, first: &mut [u8], second: &mut [u8]) -> Received {
    let iov = [
        libc::iovec {
            iov_base: first.as_mut_ptr().cast(),
            iov_len: first.len(),
        },
        libc::iovec {
            iov_base: second.as_mut_ptr().cast(),
            iov_len: second.len(),
        },
    ];
    // SAFETY: both iovecs describe valid writable regions that outlive the call.
    retrying(|| unsafe { libc::readv(fd, iov.as_ptr(), 2) })
}

/// What a read syscall (`read` returning a count or -1 with errno) gave, made again while
/// it is interrupted.
fn retrying(read: impl FnMut() -> isize) -> Received {
    match retry_interrupted(read) {
        Ok(0) => Received::Eof,
        Ok(n) => Received::Data(n),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Received::WouldBlock,
        Err(err) => Received::Failed(err),
    }
}

/// The count a syscall returned, or its errno; made again while it fails with EINTR.
pub fn retry_interrupted(mut call: impl FnMut() -> isize) -> std::io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes what it can of `chunks` (the first one from `skip`) in one vectored write.
pub fn send_chunks<'a>(
    kind: Syscalls,
    fd: RawFd,
    chunks: impl Iterator<Item = &'a [u8]>,
    skip: usize,
) -> std::io::Result<usize> {
    // On the stack and left uninitialised past what is filled: a write, usually of one
    // chunk, neither allocates nor clears a KiB of iovecs.
    let mut slots = [std::mem::MaybeUninit::<libc::iovec>::uninit(); MAX_IOVECS];
    let mut count = 0;
    for (slot, (i, chunk)) in slots.iter_mut().zip(chunks.take(MAX_IOVECS).enumerate()) {
        let chunk = if i == 0 { &chunk[skip..] } else { chunk };
        slot.write(libc::iovec {
            iov_base: chunk.as_ptr() as *mut libc::c_void,
            iov_len: chunk.len(),
        });
        count = i + 1;
    }
    // SAFETY: the first `count` slots were written just above; iovec is plain data.
    let iov =
        unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast::<libc::iovec>(), count) };
    // SAFETY: `iov` entries point into chunks that outlive the call; a zeroed msghdr
    // is valid and points at `iov`. MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
    retry_interrupted(|| unsafe {
        match kind {
            // One chunk (the usual write): `send` spares the kernel copying in a msghdr
            // and an iovec array.
            Syscalls::Socket if count == 1 => {
                libc::send(fd, iov[0].iov_base, iov[0].iov_len, libc::MSG_NOSIGNAL)
            }
            Syscalls::Socket => {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL)
            }
            Syscalls::File => libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int),
        }
    })
}

/// The bytes of a bytes-like object (bytes, bytearray, memoryview), or the stdlib's error.
pub fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        let view = PyUntypedBuffer::get(data)?;
        if view.is_c_contiguous() {
            // SAFETY: the exported buffer is C-contiguous and `len_bytes()` long, and stays
            // valid until `view` is dropped; `f` runs no Python code.
            let bytes = unsafe {
                std::slice::from_raw_parts(view.buf_ptr().cast::<u8>(), view.len_bytes())
            };
            return Ok(f(bytes));
        }
        let copy: Vec<u8> = data.call_method0("tobytes")?.extract()?;
        return Ok(f(&copy));
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {}",
        data.get_type().name()?.repr()?
    )))
}

/// `socket.socket`: the class whose instances the loop may work on directly (a subclass may
/// override any method, so it keeps them).
pub fn socket_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static SOCKET_CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    SOCKET_CLASS.import(py, "socket", "socket")
}

/// The address family of a `socket.socket` as a plain int (`sock.family` would build an
/// enum member).
pub fn socket_family(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    static FAMILY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    c_level_int(sock, &FAMILY, "family")
}

/// The type of a `socket.socket` as a plain int (`sock.type` would build an enum member).
pub fn socket_type(sock: &Bound<'_, PyAny>) -> PyResult<i32> {
    static TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    c_level_int(sock, &TYPE, "type")
}

/// `_socket.socket`'s own getter of `name` (kept in `getter`), called on `sock`; a
/// `TypeError` if `sock` is not a `_socket.socket`.
fn c_level_int(
    sock: &Bound<'_, PyAny>,
    getter: &PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<i32> {
    let py = sock.py();
    let getter = getter.get_or_try_init(py, || {
        py.import("_socket")?
            .getattr("socket")?
            .getattr(name)?
            .getattr("__get__")
            .map(Bound::unbind)
    })?;
    getter.call1(py, (sock,))?.extract(py)
}

/// `sock.close()`. For an exact `socket.socket` it does what that method's two Python
/// frames do, with C calls: mark the socket closed, then close the fd unless `makefile()`
/// objects still use it. Anything else (a subclass, a stand-in) gets its own `close`.
pub fn close_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    static CLOSE_FD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = sock.py();
    if !sock.get_type().is(socket_class(py)?) {
        return sock.call_method0(intern!(py, "close")).map(drop);
    }
    sock.setattr(intern!(py, "_closed"), true)?;
    let io_refs: isize = sock.getattr(intern!(py, "_io_refs"))?.extract()?;
    if io_refs <= 0 {
        let close_fd = CLOSE_FD.get_or_try_init(py, || {
            py.import("_socket")?
                .getattr("socket")?
                .getattr("close")
                .map(Bound::unbind)
        })?;
        close_fd.call1(py, (sock,))?;
    }
    Ok(())
}
