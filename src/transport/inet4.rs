//! IPv4 sockets without the socket object's methods: `recvfrom`/`sendto` of an AF_INET
//! datagram socket, and the `(host, port)` tuples of accepted connections and of a stream
//! transport's local address. The results are the ones `socket.socket` gives (the same
//! bytes, the same tuples, the same `OSError`s), without CPython's 256 KiB allocation per
//! `recvfrom`, its `inet_ntop` (a `sprintf`) per address, and its argument parsing and
//! `inet_pton` per `sendto`: an echo answers the tuple it was given, a client sends to the
//! same tuple again and again, and a server's connections share its address, so the last
//! address converted is remembered.

use std::ffi::{c_char, c_int, CStr};
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use crate::errors::os_error;
use crate::transport::datagram::Outcome;
use crate::transport::io::{retry_interrupted, socket_class, READ_BUFFER};

extern "C" {
    // CPython's audit hook entry point (not in pyo3-ffi); `socket.sendto` raises an event.
    fn PySys_Audit(event: *const c_char, format: *const c_char, ...) -> c_int;
}

/// An IPv4 peer and the `(host, port)` tuple that names it.
pub struct Peer {
    ip: Ipv4Addr,
    port: u16,
    tuple: Py<PyAny>,
}

/// The last addresses a transport received from and sent to.
#[derive(Default)]
pub struct PeerCache {
    received: Option<Peer>,
    sent: Option<Peer>,
}

/// Whether `fd` is an AF_INET datagram socket whose Python object is a plain
/// `socket.socket` (a subclass may override `recvfrom`/`sendto`; it keeps those).
pub fn applies(sock: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    if !sock.get_type().is(socket_class(sock.py())?) {
        return Ok(false);
    }
    Ok(socket_option(fd, libc::SO_DOMAIN) == Some(libc::AF_INET)
        && socket_option(fd, libc::SO_TYPE) == Some(libc::SOCK_DGRAM))
}

fn socket_option(fd: RawFd, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// The last host converted to text, and its text: a server's peers, and its own address,
/// are mostly the same few hosts, and `str(ip)` is most of the cost of an address.
static LAST_HOST: Mutex<Option<(Ipv4Addr, Py<PyString>)>> = Mutex::new(None);

/// The `(host, port)` tuple `socket` gives for an IPv4 address (the host as `inet_ntop`
/// writes it, which is what `Ipv4Addr`'s `Display` writes).
pub fn address(py: Python<'_>, ip: Ipv4Addr, port: u16) -> PyResult<Bound<'_, PyAny>> {
    let host = {
        let mut last = LAST_HOST.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((known, host)) if *known == ip => host.bind(py).clone(),
            _ => {
                let host = PyString::new(py, &ip.to_string());
                *last = Some((ip, host.clone().unbind()));
                host
            }
        }
    };
    Ok((host, port).into_pyobject(py)?.into_any())
}

/// The IPv4 address and port a call filled in, if it did (`len` is what the kernel wrote).
pub fn from_sockaddr(addr: &libc::sockaddr_in, len: libc::socklen_t) -> Option<(Ipv4Addr, u16)> {
    let filled = len as usize >= size_of::<libc::sockaddr_in>();
    (filled && c_int::from(addr.sin_family) == libc::AF_INET).then(|| {
        (
            Ipv4Addr::from(addr.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(addr.sin_port),
        )
    })
}

/// The tuple for `ip:port`: the one `last` holds when it names the same address, else a new
/// one, which `last` then holds.
fn remembered<'py>(
    py: Python<'py>,
    last: &mut Option<Peer>,
    ip: Ipv4Addr,
    port: u16,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(peer) = last {
        if peer.ip == ip && peer.port == port {
            return Ok(peer.tuple.bind(py).clone());
        }
    }
    let tuple = address(py, ip, port)?;
    *last = Some(Peer {
        ip,
        port,
        tuple: tuple.clone().unbind(),
    });
    Ok(tuple)
}

/// The last local address `sockname` converted: a server's connections share it.
static LAST_SOCKNAME: Mutex<Option<Peer>> = Mutex::new(None);

/// `sock.getsockname()` of an AF_INET socket: None (as the stdlib's transports keep) if it
/// fails, and the tuple of the previous call when the address is the same.
pub fn sockname(py: Python<'_>, fd: RawFd) -> PyResult<Py<PyAny>> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut local: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `local` is writable for `len` bytes, which the kernel is told.
    let rc = unsafe { libc::getsockname(fd, (&raw mut local).cast(), &mut len) };
    match from_sockaddr(&local, len) {
        Some((ip, port)) if rc == 0 => {
            let mut last = LAST_SOCKNAME.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(remembered(py, &mut last, ip, port)?.unbind())
        }
        _ => Ok(py.None()),
    }
}

/// A failed call as the transport reports it: would-block, or an `OSError` for the protocol.
fn failed<T>(py: Python<'_>, err: std::io::Error) -> Outcome<T> {
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Outcome::WouldBlock
    } else {
        Outcome::SocketError(os_error(py, err))
    }
}

/// `sock.recvfrom(MAX)`: one datagram and its sender's `(host, port)`.
pub fn recvfrom<'py>(
    py: Python<'py>,
    fd: RawFd,
    cache: &mut PeerCache,
) -> PyResult<Outcome<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let received = READ_BUFFER.with_borrow_mut(|buf| {
        // SAFETY: `buf` is writable for `buf.len()` bytes and `addr` for `len` bytes.
        retry_interrupted(|| unsafe {
            len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut addr).cast(),
                &mut len,
            )
        })
        .map(|n| PyBytes::new(py, &buf[..n]).into_any())
    });
    let data = match received {
        Ok(data) => data,
        Err(err) => return Ok(failed(py, err)),
    };
    let Some((ip, port)) = from_sockaddr(&addr, len) else {
        return Ok(Outcome::Done((data, py.None().into_bound(py))));
    };
    let tuple = remembered(py, &mut cache.received, ip, port)?;
    Ok(Outcome::Done((data, tuple)))
}

/// The IPv4 destination `addr` names, when it is a tuple this transport converted before or
/// a plain `(str, int)` that `socket.sendto` would take as this very address (a dotted-quad
/// host, a port in range); None sends through the socket object, which parses (or
/// rejects) everything else.
fn destination(addr: &Bound<'_, PyAny>, cache: &mut PeerCache) -> Option<(Ipv4Addr, u16)> {
    for peer in [&cache.received, &cache.sent].into_iter().flatten() {
        if peer.tuple.bind(addr.py()).is(addr) {
            return Some((peer.ip, peer.port));
        }
    }
    let (ip, port) = plain_address(addr)?;
    cache.sent = Some(Peer {
        ip,
        port,
        tuple: addr.clone().unbind(),
    });
    Some((ip, port))
}

/// The IPv4 address `addr` names when it is a plain `(str, int)` that the socket module
/// would take as this very address (a dotted-quad host, a port in range); None for
/// anything else, which the socket object parses (or rejects).
pub fn plain_address(addr: &Bound<'_, PyAny>) -> Option<(Ipv4Addr, u16)> {
    let tuple = addr.cast_exact::<PyTuple>().ok()?;
    if tuple.len() != 2 {
        return None;
    }
    let host = tuple.get_item(0).ok()?;
    let port = tuple.get_item(1).ok()?;
    let ip: Ipv4Addr = host
        .cast_exact::<PyString>()
        .ok()?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let port: u16 = port.cast_exact::<PyInt>().ok()?.extract().ok()?;
    Some((ip, port))
}

/// Raises the audit event the socket method `event` raises with `(sock, addr)`
/// (`socket.sendto`, `socket.connect`).
pub fn audit(sock: &Bound<'_, PyAny>, event: &CStr, addr: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: attached; the format names two object arguments, both live references.
    let audited =
        unsafe { PySys_Audit(event.as_ptr(), c"OO".as_ptr(), sock.as_ptr(), addr.as_ptr()) };
    if audited < 0 {
        return Err(PyErr::fetch(sock.py()));
    }
    Ok(())
}

/// The `sockaddr_in` of `ip:port`.
pub fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// The address `recvfrom`/`accept` report for `len` bytes of `addr`, as the socket module
/// gives it: `(host, port)`, or None when the kernel gave no IPv4 address.
pub fn address_of<'py>(
    py: Python<'py>,
    addr: &libc::sockaddr_in,
    len: libc::socklen_t,
) -> PyResult<Bound<'py, PyAny>> {
    match from_sockaddr(addr, len) {
        Some((ip, port)) => address(py, ip, port),
        None => Ok(py.None().into_bound(py)),
    }
}

/// One `sendto` of `data` to `target`: what the syscall returned.
pub fn send_to(fd: RawFd, data: &[u8], target: &libc::sockaddr_in) -> isize {
    // SAFETY: `data` is readable for its length and `target` is a sockaddr_in of the size
    // given.
    unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (target as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    }
}

/// `sock.sendto(data, addr)`, or None when `addr` is for the socket object to parse.
pub fn sendto(
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    data: &[u8],
    addr: &Bound<'_, PyAny>,
    cache: &mut PeerCache,
) -> PyResult<Option<Outcome<()>>> {
    let py = sock.py();
    let Some((ip, port)) = destination(addr, cache) else {
        return Ok(None);
    };
    audit(sock, c"socket.sendto", addr)?;
    let target = sockaddr(ip, port);
    let sent = retry_interrupted(|| send_to(fd, data, &target));
    Ok(Some(match sent {
        Ok(_) => Outcome::Done(()),
        Err(err) => failed(py, err),
    }))
}
