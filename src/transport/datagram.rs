//! `DatagramCore`: the Rust half of a UDP or Unix datagram transport.
//!
//! `ferroloop._datagram_transport.DatagramTransport` (an `asyncio.DatagramTransport`) holds
//! one and binds its methods as its own. Per readiness it receives datagrams until the
//! socket is empty (at most `DATAGRAMS_PER_TURN`, then it yields to the rest of the loop
//! and continues next iteration), each handed to `datagram_received(data, addr)`; an
//! `OSError` from the socket (an ICMP error on a connected socket, say) goes to
//! `error_received`. `sendto` sends at once when nothing is queued and queues (as an
//! immutable copy) what the socket refuses, flushed on the next writable edge.
//!
//! # Implementation notes
//! The socket calls go through the socket object's own C methods (`recvfrom`, `send`,
//! `sendto`), so every address family and address form works exactly as with `socket`;
//! what is Rust is the dispatch around them. The exception is a plain AF_INET socket's
//! `recvfrom` and `sendto` to an address in the form `socket` would give back, done in
//! `inet4.rs` with the same results. The fd is registered edge-triggered for the
//! transport's whole life.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::LoopCore;
use crate::handle::lock;
use crate::transport::flow::{is_exit, tell_protocol, water_marks, DEFAULT_HIGH_WATER};
use crate::transport::inet4::{self, PeerCache};
use crate::transport::io::{close_socket, with_bytes};
use crate::transport::IoTransport;

/// The largest datagram read (the stdlib's `max_size`).
const MAX_DATAGRAM: usize = 256 * 1024;
/// Datagrams received per readiness before yielding to the rest of the loop.
const DATAGRAMS_PER_TURN: usize = 64;
const CONNLOST_WRITES_BEFORE_WARNING: u32 = 5;

struct DatagramState {
    loop_: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    datagram_received: Option<Py<PyAny>>,
    error_received: Option<Py<PyAny>>,
    /// The connected peer's address, if the socket is connected (`remote_addr`).
    address: Option<Py<PyAny>>,
    queue: VecDeque<(Py<PyBytes>, Option<Py<PyAny>>)>,
    queued: usize,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading_started: bool,
    /// `pause_reading()`: datagrams wait in the socket until `resume_reading()`.
    reading_paused: bool,
    read_pending: bool,
    closing: bool,
    conn_lost: u32,
    registered: bool,
    /// The last IPv4 addresses converted (only used when `DatagramCore::inet4`).
    peers: PeerCache,
}

/// The Rust half of a datagram transport (see the module docs).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct DatagramCore {
    fd: RawFd,
    /// 3.13 sends empty datagrams; earlier versions drop them.
    send_empty: bool,
    /// Bytes counted per queued datagram on top of its data (3.13 counts a header).
    header_size: usize,
    /// The socket itself is connected (it has a peer): `send`, not `sendto`.
    connected: bool,
    /// A plain `socket.socket` of AF_INET: `inet4.rs` receives and sends.
    inet4: bool,
    state: Mutex<DatagramState>,
}

fn would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

/// How a socket call went.
pub(crate) enum Outcome<T> {
    Done(T),
    WouldBlock,
    /// An OSError: the protocol's `error_received` gets it.
    SocketError(PyErr),
    /// Anything else: a fatal error of the transport.
    Fatal(PyErr),
}

fn classify<T>(py: Python<'_>, result: PyResult<T>) -> Result<Outcome<T>, PyErr> {
    match result {
        Ok(value) => Ok(Outcome::Done(value)),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) if would_block(py, &err) => Ok(Outcome::WouldBlock),
        Err(err) if err.is_instance_of::<PyOSError>(py) => Ok(Outcome::SocketError(err)),
        Err(err) => Ok(Outcome::Fatal(err)),
    }
}

impl DatagramCore {
    fn state(&self) -> MutexGuard<'_, DatagramState> {
        lock(&self.state)
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn loop_of(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state().loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state().sock.as_ref().map(|s| s.clone_ref(py))
    }

    pub fn on_ready(slf: &Bound<'_, Self>, readable: bool, writable: bool) -> PyResult<()> {
        if writable {
            Self::send_queued(slf)?;
        }
        if readable {
            Self::receive(slf)?;
        }
        Ok(())
    }

    fn error_received(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let callback = slf
            .get()
            .state()
            .error_received
            .as_ref()
            .map(|c| c.clone_ref(py));
        if let Some(callback) = callback {
            if let Err(raised) = callback.call1(py, (err.into_value(py),)) {
                if is_exit(py, &raised) {
                    return Err(raised);
                }
                return Self::fatal_error(
                    slf,
                    raised,
                    "Fatal error: protocol.error_received() call failed.",
                );
            }
        }
        Ok(())
    }

    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let transport = slf
            .get()
            .state()
            .transport
            .as_ref()
            .map(|t| t.clone_ref(py));
        if let Some(transport) = transport {
            transport.call_method1(
                py,
                "_report_fatal_error",
                (err.clone_ref(py).into_value(py), message),
            )?;
        }
        Self::force_close(slf, Some(err))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let (dropped, loop_) = {
            let mut state = slf.get().state();
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.closing = true;
            state.conn_lost += 1;
            state.queued = 0;
            (
                std::mem::take(&mut state.queue),
                state.loop_.as_ref().map(|l| l.clone_ref(py)),
            )
        };
        drop(dropped);
        Self::schedule_connection_lost(slf, loop_, exc)
    }

    fn schedule_connection_lost(
        slf: &Bound<'_, Self>,
        loop_: Option<Py<LoopCore>>,
        exc: Option<PyErr>,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = loop_ {
            let exc = exc.map(|e| e.into_value(py).into_any());
            let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
            loop_
                .bind(py)
                .call_method1(intern!(py, "call_soon"), (callback, exc))?;
        }
        Ok(())
    }

    fn queue_read(slf: &Bound<'_, Self>) {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py) {
            loop_.get().queue_transport(Self::me(slf), true, false);
        }
    }

    fn me(slf: &Bound<'_, Self>) -> IoTransport {
        IoTransport::Datagram(slf.clone().unbind())
    }

    /// Starts delivering data (queued right behind `connection_made`).
    pub(crate) fn start_reading(slf: &Bound<'_, Self>) {
        let pending = {
            let mut state = slf.get().state();
            if state.closing {
                return;
            }
            state.reading_started = true;
            !state.reading_paused && std::mem::replace(&mut state.read_pending, false)
        };
        if pending {
            Self::queue_read(slf);
        }
    }

    /// Receives what is waiting (up to a turn's worth) and hands it to the protocol.
    fn receive(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (sock, datagram_received) = {
            let mut state = this.state();
            if state.conn_lost > 0 || state.closing {
                return Ok(());
            }
            if !state.reading_started || state.reading_paused {
                state.read_pending = true;
                return Ok(());
            }
            match (&state.sock, &state.datagram_received) {
                (Some(sock), Some(callback)) => (sock.clone_ref(py), callback.clone_ref(py)),
                _ => return Ok(()),
            }
        };
        // The socket object's method, unless `inet4.rs` receives.
        let recvfrom = match this.inet4 {
            true => None,
            false => Some(sock.bind(py).getattr(intern!(py, "recvfrom"))?),
        };
        for _ in 0..DATAGRAMS_PER_TURN {
            {
                let mut state = this.state();
                if state.closing {
                    return Ok(());
                }
                if state.reading_paused {
                    // Paused by the protocol: more may be waiting, read on resume.
                    state.read_pending = true;
                    return Ok(());
                }
            }
            let outcome = match &recvfrom {
                None => {
                    // Taken out of the state: making the address tuple may run a collection,
                    // and finalizers may use this transport.
                    let mut peers = std::mem::take(&mut this.state().peers);
                    let outcome = inet4::recvfrom(py, this.fd, &mut peers);
                    this.state().peers = peers;
                    outcome?
                }
                Some(recvfrom) => match classify(py, recvfrom.call1((MAX_DATAGRAM,)))? {
                    Outcome::Done(pair) => Outcome::Done(pair.extract()?),
                    Outcome::WouldBlock => Outcome::WouldBlock,
                    Outcome::SocketError(err) => Outcome::SocketError(err),
                    Outcome::Fatal(err) => Outcome::Fatal(err),
                },
            };
            match outcome {
                Outcome::Done((data, addr)) => {
                    if let Err(err) = datagram_received.call1(py, (data, addr)) {
                        if is_exit(py, &err) {
                            return Err(err);
                        }
                        return Self::fatal_error(
                            slf,
                            err,
                            "Fatal error: protocol.datagram_received() call failed.",
                        );
                    }
                }
                Outcome::WouldBlock => return Ok(()),
                Outcome::SocketError(err) => Self::error_received(slf, err)?,
                Outcome::Fatal(err) => {
                    return Self::fatal_error(slf, err, "Fatal read error on datagram transport")
                }
            }
        }
        // Possibly more waiting, and no new edge will say so: go on next iteration.
        Self::queue_read(slf);
        Ok(())
    }

    /// Sends one datagram now: to the connected peer, or to `addr`.
    fn send_now(
        &self,
        py: Python<'_>,
        sock: &Py<PyAny>,
        data: &Bound<'_, PyBytes>,
        addr: Option<&Py<PyAny>>,
    ) -> PyResult<Outcome<()>> {
        let connected = self.connected;
        if let (true, false, Some(addr)) = (self.inet4, connected, addr) {
            // Taken out of the state: audit hooks run inside.
            let mut peers = std::mem::take(&mut self.state().peers);
            let sent = inet4::sendto(
                sock.bind(py),
                self.fd,
                data.as_bytes(),
                addr.bind(py),
                &mut peers,
            );
            self.state().peers = peers;
            if let Some(outcome) = sent? {
                return Ok(outcome);
            }
        }
        let result = match (connected, addr) {
            (true, _) | (false, None) => sock.call_method1(py, intern!(py, "send"), (data,)),
            (false, Some(addr)) => sock.call_method1(py, intern!(py, "sendto"), (data, addr)),
        };
        classify(py, result.map(drop))
    }

    /// Flushes queued datagrams on a writable edge.
    fn send_queued(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let (sock, data, addr) = {
                let mut state = this.state();
                if state.conn_lost > 0 {
                    return Ok(());
                }
                let Some((data, addr)) = state.queue.pop_front() else {
                    break;
                };
                let Some(sock) = state.sock.as_ref().map(|s| s.clone_ref(py)) else {
                    return Ok(());
                };
                state.queued -= data.bind(py).as_bytes().len() + this.header_size;
                (sock, data, addr)
            };
            match this.send_now(py, &sock, data.bind(py), addr.as_ref())? {
                Outcome::Done(()) => {}
                Outcome::WouldBlock => {
                    let mut state = this.state();
                    state.queued += data.bind(py).as_bytes().len() + this.header_size;
                    state.queue.push_front((data, addr));
                    return Ok(());
                }
                Outcome::SocketError(err) => return Self::error_received(slf, err),
                Outcome::Fatal(err) => {
                    return Self::fatal_error(slf, err, "Fatal write error on datagram transport")
                }
            }
        }
        Self::maybe_resume_protocol(slf)?;
        let loop_ = {
            let mut state = this.state();
            if !state.closing || !state.queue.is_empty() {
                return Ok(());
            }
            state.conn_lost += 1;
            state.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        Self::schedule_connection_lost(slf, loop_, None)
    }

    /// Pauses the protocol above the high mark or resumes it at the low one.
    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let (protocol, transport) = {
            let mut state = slf.get().state();
            let due = if pause {
                !state.protocol_paused && state.queued > state.high_water
            } else {
                state.protocol_paused && state.queued <= state.low_water
            };
            if !due {
                return Ok(());
            }
            state.protocol_paused = pause;
            (
                state.protocol.as_ref().map(|p| p.clone_ref(py)),
                state.transport.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        tell_protocol(py, protocol, transport, pause)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, true)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, false)
    }
}

/// An immutable copy of bytes-like `data`, or the stdlib's TypeError.
fn datagram_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let py = data.py();
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.clone());
    }
    with_bytes(data, |bytes| PyBytes::new(py, bytes))
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, transport, address, connected))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        connected: bool,
    ) -> PyResult<Self> {
        // 3.13 sends empty datagrams and counts an 8-byte header per queued one.
        let is_313 = sock.py().version_info() >= (3, 13);
        let (send_empty, header_size) = (is_313, if is_313 { 8 } else { 0 });
        let fd: RawFd = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the socket is closed"));
        }
        Ok(Self {
            fd,
            send_empty,
            header_size,
            connected,
            inet4: inet4::applies(sock, fd)?,
            state: Mutex::new(DatagramState {
                loop_: Some(loop_.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                transport: Some(transport.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                datagram_received: Some(
                    protocol
                        .getattr(intern!(protocol.py(), "datagram_received"))?
                        .unbind(),
                ),
                error_received: Some(
                    protocol
                        .getattr(intern!(protocol.py(), "error_received"))?
                        .unbind(),
                ),
                address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
                queue: VecDeque::new(),
                queued: 0,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                reading_started: false,
                reading_paused: false,
                read_pending: false,
                closing: false,
                conn_lost: 0,
                registered: false,
                peers: PeerCache::default(),
            }),
        })
    }

    /// Registers the fd with the loop's poller (reading starts with `_start_reading`).
    fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(loop_) = slf.get().loop_of(py) else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "Event loop is closed",
            ));
        };
        loop_.get().register_transport(py, Self::me(slf))?;
        slf.get().state().registered = true;
        Ok(())
    }

    /// Queues the start of reading right behind `connection_made` (no Python callback).
    fn _start_reading_soon(slf: &Bound<'_, Self>) {
        if let Some(loop_) = slf.get().loop_of(slf.py()) {
            loop_.get().queue_start_reading(Self::me(slf));
        }
    }

    /// Send `data` to `addr` (or to the connected peer).
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let data = datagram_bytes(data)?;
        if data.as_bytes().is_empty() && !this.send_empty {
            return Ok(());
        }
        let mut addr = addr.filter(|a| !a.is_none()).map(|a| a.clone().unbind());
        let (connected, lost, queued_before, sock) = {
            let state = this.state();
            (
                state.address.as_ref().map(|a| a.clone_ref(py)),
                state.conn_lost,
                !state.queue.is_empty(),
                state.sock.as_ref().map(|s| s.clone_ref(py)),
            )
        };
        if let Some(peer) = &connected {
            if let Some(given) = &addr {
                if !given.bind(py).eq(peer.bind(py))? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        peer.bind(py).str()?
                    )));
                }
            }
            addr = Some(peer.clone_ref(py));
        }
        if lost > 0 && connected.is_some() {
            this.state().conn_lost += 1;
            if lost >= CONNLOST_WRITES_BEFORE_WARNING {
                py.import("asyncio.log")?
                    .getattr("logger")?
                    .call_method1("warning", ("socket.send() raised exception.",))?;
            }
            return Ok(());
        }
        if !queued_before {
            if let Some(sock) = &sock {
                match this.send_now(py, sock, &data, addr.as_ref())? {
                    Outcome::Done(()) => return Ok(()),
                    Outcome::WouldBlock => {}
                    Outcome::SocketError(err) => return Self::error_received(slf, err),
                    Outcome::Fatal(err) => {
                        return Self::fatal_error(
                            slf,
                            err,
                            "Fatal write error on datagram transport",
                        )
                    }
                }
            }
        }
        {
            let mut state = this.state();
            state.queued += data.as_bytes().len() + this.header_size;
            state.queue.push_back((data.unbind(), addr));
        }
        Self::maybe_pause_protocol(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut state = slf.get().state();
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            if !state.queue.is_empty() {
                return Ok(());
            }
            state.conn_lost += 1;
            state.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        Self::schedule_connection_lost(slf, loop_, None)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let err = exc
            .filter(|e| !e.is_none())
            .map(|e| PyErr::from_value(e.clone()));
        Self::force_close(slf, err)
    }

    /// Whether datagrams are delivered (not paused, not closing).
    fn is_reading(&self) -> bool {
        let state = self.state();
        !state.reading_paused && !state.closing
    }

    /// Stop calling `datagram_received` until `resume_reading()`.
    fn pause_reading(&self) {
        let mut state = self.state();
        if !state.closing {
            state.reading_paused = true;
        }
    }

    /// Deliver datagrams again, those that arrived meanwhile first.
    fn resume_reading(slf: &Bound<'_, Self>) {
        let pending = {
            let mut state = slf.get().state();
            if state.closing || !state.reading_paused {
                return;
            }
            state.reading_paused = false;
            state.reading_started && std::mem::replace(&mut state.read_pending, false)
        };
        if pending {
            Self::queue_read(slf);
        }
    }

    fn is_closing(&self) -> bool {
        self.state().closing
    }

    fn get_write_buffer_size(&self) -> usize {
        self.state().queued
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let state = self.state();
        (state.low_water, state.high_water)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (high, low) = water_marks(high, low)?;
        {
            let mut state = slf.get().state();
            state.high_water = high;
            state.low_water = low;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let datagram_received = protocol
            .getattr(intern!(protocol.py(), "datagram_received"))?
            .unbind();
        let error_received = protocol
            .getattr(intern!(protocol.py(), "error_received"))?
            .unbind();
        let old = {
            let mut state = self.state();
            (
                state.protocol.replace(protocol.clone().unbind()),
                state.datagram_received.replace(datagram_received),
                state.error_received.replace(error_received),
            )
        };
        drop(old);
        Ok(())
    }

    /// Runs `connection_lost(exc)`, then closes the socket and lets go of everything.
    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this.state().protocol.as_ref().map(|p| p.clone_ref(py));
        let outcome = match protocol {
            Some(protocol) => protocol
                .call_method1(py, intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        let taken = {
            let mut state = this.state();
            (
                std::mem::replace(&mut state.registered, false),
                state.loop_.take(),
                state.sock.take(),
                state.transport.take(),
                state.protocol.take(),
                state.datagram_received.take(),
                state.error_received.take(),
                std::mem::take(&mut state.queue),
            )
        };
        let (registered, loop_, sock, ..) = &taken;
        if let (true, Some(loop_)) = (registered, loop_) {
            loop_.get().deregister_transport(this.fd);
        }
        let closed = match sock {
            Some(sock) => close_socket(sock.bind(py)),
            None => Ok(()),
        };
        drop(taken);
        outcome.and(closed)
    }

    /// (fd, closed, closing, queued bytes) for the transport's repr.
    fn _describe(&self) -> (RawFd, bool, bool, usize) {
        let state = self.state();
        (self.fd, state.sock.is_none(), state.closing, state.queued)
    }

    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(state) = self.state.try_lock() else {
            return Ok(());
        };
        visit.call(&state.sock)?;
        visit.call(&state.transport)?;
        visit.call(&state.protocol)?;
        visit.call(&state.datagram_received)?;
        visit.call(&state.error_received)?;
        visit.call(&state.address)?;
        for (data, addr) in &state.queue {
            visit.call(data)?;
            visit.call(addr)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = {
            let mut state = self.state();
            (
                state.sock.take(),
                state.transport.take(),
                state.protocol.take(),
                state.datagram_received.take(),
                state.error_received.take(),
                state.address.take(),
                std::mem::take(&mut state.queue),
            )
        };
        drop(taken);
    }
}
