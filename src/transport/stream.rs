//! `StreamCore`: the Rust half of a TCP or Unix stream transport.
//!
//! `ferroloop._transport.SocketTransport` (an `asyncio.Transport`) holds one and binds its
//! methods as its own, so `transport.write(data)` is a direct call into Rust.
//!
//! Reads: one `recv` per readiness edge into the thread's read buffer, handed to
//! `data_received` as one `bytes`, recycled when the protocol kept no reference to it
//! (`recycle.rs`) (or `recv` straight into `get_buffer()` for a
//! `BufferedProtocol`). A read that fills the buffer queues another read for the next
//! iteration, since an edge-triggered poller reports no new edge for data already there.
//!
//! Writes never block and never lose bytes: with nothing queued, `write` sends at once,
//! except that a loop callback's small writes are held and sent together, in one `send`,
//! when it returns (`send_held`; docs/architecture.md). What the socket does not take is
//! queued (a `bytes` object by reference, anything else as a copy) and sent on writable
//! edges. `pause_writing`/`resume_writing` fire at the high/low water marks.
//!
//! # Implementation notes
//! The fd is registered once, edge-triggered, for both directions; pausing reading only
//! stops acting on readable edges (noting that one came). State is behind a mutex that is
//! never held while Python code runs (protocol callbacks call back into the transport).

use crate::gil_cell::{GilCell, GilGuard};
use std::collections::VecDeque;
use std::os::fd::RawFd;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::transport::flow::{
    is_exit, send_queue, tell_protocol, water_marks, Chunk, DEFAULT_HIGH_WATER,
};
use crate::transport::io::{
    close_socket, recv_into, send_chunks, socket_class, socket_family, with_bytes, Received,
    Syscalls, READ_CHUNK,
};
use crate::transport::recycle::{receive, recycle};
use crate::transport::{inet4, IoTransport};

/// The most a callback's writes are held for before they go out at once (never more than
/// the high-water mark: held bytes do not count as queued, so they must not need to).
const HOLD_LIMIT: usize = 64 * 1024;

/// After this many writes to a lost connection, each further one logs a warning.
const CONNLOST_WRITES_BEFORE_WARNING: u32 = 5;

/// The protocol and the methods the hot paths call, looked up once per `set_protocol`.
struct ProtocolCalls {
    protocol: Py<PyAny>,
    receive: Receive,
}

enum Receive {
    /// `asyncio.Protocol`: `data_received(bytes)`.
    Data(Py<PyAny>),
    /// `asyncio.BufferedProtocol`: `get_buffer(-1)`, then `buffer_updated(n)`.
    Buffered {
        get_buffer: Py<PyAny>,
        buffer_updated: Py<PyAny>,
    },
}

struct StreamState {
    loop_: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    /// The Python transport: what protocols and error reports are given.
    transport: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    protocol: Option<ProtocolCalls>,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    front_sent: usize,
    queued: usize,
    /// Writes of the running callback, not tried yet (the queue is empty meanwhile): the
    /// loop sends them when the callback returns (`send_held`). Copied, so that the
    /// `bytes` a protocol echoes is free again, for the next read to refill, when
    /// `data_received` returns.
    held: Vec<u8>,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading_started: bool,
    reading_paused: bool,
    /// A readable edge (or a full read) came while we could not act on it.
    read_pending: bool,
    /// The poller said the peer closed its side: an edge-triggered poller will not say
    /// it again, so reads go on until they see EOF (or EAGAIN).
    peer_closed: bool,
    closing: bool,
    eof_requested: bool,
    conn_lost: u32,
    /// `loop.sendfile` waits for the queue to drain: tell the transport when it has.
    drain_waiter: bool,
    /// Registered with the poller, which then keeps the transport alive. As on the stdlib
    /// loop, only while reading or sending: an idle, unreferenced transport is collected.
    registered: bool,
    /// `getsockname()` of the socket, once asked for (or taken just before the socket
    /// closes, so that it is still known afterwards, as on the stdlib loop).
    sockname: Option<Py<PyAny>>,
}

/// The Rust half of a stream transport (see the module docs).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct StreamCore {
    fd: RawFd,
    state: GilCell<StreamState>,
}

/// What `write` did with the data.
enum Written {
    AfterEof,
    Nothing,
    /// Dropped: the connection is lost (the count of such writes so far).
    ToLostConnection(u32),
    Sent,
    /// Held for the loop to send when the running callback returns; the loop to tell, if
    /// this is the first write held.
    Held(Option<Py<LoopCore>>),
    Failed(std::io::Error),
}

impl StreamCore {
    fn state(&self) -> GilGuard<'_, StreamState> {
        self.state.lock()
    }

    fn protocol_calls(py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<ProtocolCalls> {
        static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let buffered = BUFFERED_PROTOCOL.import(py, "asyncio", "BufferedProtocol")?;
        let receive = if protocol.is_instance(buffered)? {
            Receive::Buffered {
                get_buffer: protocol.getattr(intern!(py, "get_buffer"))?.unbind(),
                buffer_updated: protocol.getattr(intern!(py, "buffer_updated"))?.unbind(),
            }
        } else {
            Receive::Data(protocol.getattr(intern!(py, "data_received"))?.unbind())
        };
        Ok(ProtocolCalls {
            protocol: protocol.clone().unbind(),
            receive,
        })
    }

    /// Asks `sock` for its address unless already known, and remembers the answer (None
    /// if `getsockname` fails). Local addresses are only wanted by some protocols, so a
    /// connection does not build one up front; it is taken before the socket closes.
    fn keep_sockname(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if let Some(known) = &slf.get().state().sockname {
            return Ok(known.clone_ref(py));
        }
        let sockname =
            if sock.get_type().is(socket_class(py)?) && socket_family(sock)? == libc::AF_INET {
                inet4::sockname(py, slf.get().fd)?
            } else {
                match sock.call_method0(intern!(py, "getsockname")) {
                    Ok(address) => address.unbind(),
                    Err(err) if err.is_instance_of::<PyOSError>(py) => py.None(),
                    Err(err) => return Err(err),
                }
            };
        slf.get().state().sockname = Some(sockname.clone_ref(py));
        Ok(sockname)
    }

    fn loop_of(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state().loop_.as_ref().map(|l| l.clone_ref(py))
    }

    /// The stdlib's `_fatal_error`: report (OSErrors only in debug mode), then force-close.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let transport = slf
            .get()
            .state()
            .transport
            .as_ref()
            .map(|t| t.clone_ref(py));
        if let Some(transport) = transport {
            let exc = err.clone_ref(py).into_value(py);
            transport.call_method1(py, intern!(py, "_report_fatal_error"), (exc, message))?;
        }
        Self::force_close(slf, Some(err))
    }

    /// Closes at once, dropping unsent data; `connection_lost(exc)` runs next iteration.
    fn force_close(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (dropped, loop_) = {
            let mut state = this.state();
            if state.conn_lost > 0 {
                return Ok(());
            }
            let dropped = std::mem::take(&mut state.queue);
            state.queued = 0;
            state.front_sent = 0;
            let held = std::mem::take(&mut state.held);
            state.give_back(held);
            state.closing = true;
            state.conn_lost += 1;
            (dropped, state.loop_.as_ref().map(|l| l.clone_ref(py)))
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

    /// Reads once and delivers the data (or EOF, or the error) to the protocol.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let receive = {
            let mut state = this.state();
            if state.conn_lost > 0 || state.closing {
                return Ok(());
            }
            if !state.reading_started || state.reading_paused {
                state.read_pending = true;
                return Ok(());
            }
            state.read_pending = false;
            match state.protocol.as_ref().map(|p| &p.receive) {
                Some(Receive::Data(data_received)) => Receive::Data(data_received.clone_ref(py)),
                Some(Receive::Buffered {
                    get_buffer,
                    buffer_updated,
                }) => Receive::Buffered {
                    get_buffer: get_buffer.clone_ref(py),
                    buffer_updated: buffer_updated.clone_ref(py),
                },
                None => return Ok(()),
            }
        };
        match receive {
            Receive::Data(data_received) => Self::read_into_bytes(slf, data_received),
            Receive::Buffered {
                get_buffer,
                buffer_updated,
            } => Self::read_into_protocol_buffer(slf, get_buffer, buffer_updated),
        }
    }

    fn read_into_bytes(slf: &Bound<'_, Self>, data_received: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.get().fd;
        let (received, data) = receive(py, fd)?;
        match received {
            Received::Data(n) => {
                Self::read_again_if_more(slf, n, READ_CHUNK);
                if let Some(data) = data {
                    let outcome = data_received.call1(py, (&data.bytes,));
                    recycle(data);
                    if let Err(err) = outcome {
                        return Self::protocol_failed(
                            slf,
                            err,
                            "Fatal error: protocol.data_received() call failed.",
                        );
                    }
                }
                Ok(())
            }
            other => Self::read_ended(slf, other),
        }
    }

    fn read_into_protocol_buffer(
        slf: &Bound<'_, Self>,
        get_buffer: Py<PyAny>,
        buffer_updated: Py<PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.get().fd;
        let target = match get_buffer.call1(py, (-1,)) {
            Ok(target) => target,
            Err(err) => {
                return Self::protocol_failed(
                    slf,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let mut capacity = 0;
        let received = match PyUntypedBuffer::get(target.bind(py)) {
            Ok(view) if view.readonly() || !view.is_c_contiguous() => Err(PyTypeError::new_err(
                "get_buffer() must return a writable contiguous buffer",
            )),
            Ok(view) if view.len_bytes() == 0 => Err(PyRuntimeError::new_err(
                "get_buffer() returned an empty buffer",
            )),
            Ok(view) => {
                // SAFETY: the buffer is writable, C-contiguous and `len_bytes()` long, and
                // stays exported (so unmoved) until `view` is dropped after the recv; no
                // Python code runs in between.
                let target = unsafe {
                    std::slice::from_raw_parts_mut(view.buf_ptr().cast::<u8>(), view.len_bytes())
                };
                capacity = target.len();
                let received = recv_into(Syscalls::Socket, fd, target);
                drop(view);
                Ok(received)
            }
            Err(err) => Err(err),
        };
        match received {
            Err(err) => {
                Self::protocol_failed(slf, err, "Fatal error: protocol.get_buffer() call failed.")
            }
            Ok(Received::Data(n)) => {
                Self::read_again_if_more(slf, n, capacity);
                if let Err(err) = buffer_updated.call1(py, (n,)) {
                    return Self::protocol_failed(
                        slf,
                        err,
                        "Fatal error: protocol.buffer_updated() call failed.",
                    );
                }
                Ok(())
            }
            Ok(other) => Self::read_ended(slf, other),
        }
    }

    /// A read that filled its buffer may have left data behind, and after the peer
    /// closed, EOF is still to be read: either way no new edge will come, so read again
    /// next iteration.
    fn read_again_if_more(slf: &Bound<'_, Self>, n: usize, capacity: usize) {
        if n >= capacity || slf.get().state().peer_closed {
            Self::queue_read(slf);
        }
    }

    /// A protocol callback raised: KeyboardInterrupt/SystemExit propagate, the rest is
    /// a fatal error of the transport.
    fn protocol_failed(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_exit(py, &err) {
            return Err(err);
        }
        Self::fatal_error(slf, err, message)
    }

    /// EOF, an error, or nothing to read after all.
    fn read_ended(slf: &Bound<'_, Self>, received: Received) -> PyResult<()> {
        let py = slf.py();
        match received {
            Received::Data(_) | Received::WouldBlock => Ok(()),
            Received::Failed(err) => Self::fatal_error(
                slf,
                os_error(py, err),
                "Fatal read error on socket transport",
            ),
            Received::Eof => {
                let protocol = slf
                    .get()
                    .state()
                    .protocol
                    .as_ref()
                    .map(|p| p.protocol.clone_ref(py));
                let Some(protocol) = protocol else {
                    return Ok(());
                };
                match protocol.call_method0(py, intern!(py, "eof_received")) {
                    Err(err) => Self::protocol_failed(
                        slf,
                        err,
                        "Fatal error: protocol.eof_received() call failed.",
                    ),
                    Ok(keep_open) if keep_open.is_truthy(py)? => {
                        // Half-closed: stop reading, keep writing.
                        slf.get().state().reading_paused = true;
                        Self::unregister_if_idle(slf);
                        Ok(())
                    }
                    Ok(_) => Self::close(slf),
                }
            }
        }
    }

    /// Registers with the poller unless already registered or finished.
    fn ensure_registered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut state = slf.get().state();
            if state.registered || state.conn_lost > 0 {
                return Ok(());
            }
            let Some(loop_) = state.loop_.as_ref().map(|l| l.clone_ref(py)) else {
                return Ok(());
            };
            state.registered = true;
            loop_
        };
        let outcome = loop_.get().register_transport(py, Self::me(slf));
        if outcome.is_err() {
            slf.get().state().registered = false;
        }
        outcome
    }

    /// Leaves the poller while neither reading nor sending.
    fn unregister_if_idle(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let loop_ = {
            let mut state = slf.get().state();
            // Reading that has yet to start (it is queued behind connection_made) counts:
            // the transport must still be registered when it does.
            let reading = !state.reading_paused && !state.closing;
            // Held writes (not in the queue) do not keep it: had they been sent already, as
            // on the stdlib loop, the queue would be empty (what the socket refuses
            // registers it again).
            if !state.registered || reading || !state.queue.is_empty() || state.conn_lost > 0 {
                return;
            }
            state.registered = false;
            state.loop_.as_ref().map(|l| l.clone_ref(py))
        };
        if let Some(loop_) = loop_ {
            loop_.get().deregister_transport(slf.get().fd);
        }
    }

    /// Queues a read attempt for the next iteration.
    fn queue_read(slf: &Bound<'_, Self>) {
        if let Some(loop_) = slf.get().loop_of(slf.py()) {
            loop_.get().queue_transport(Self::me(slf), true, false);
        }
    }

    fn me(slf: &Bound<'_, Self>) -> IoTransport {
        IoTransport::Stream(slf.clone().unbind())
    }

    /// Starts delivering data (scheduled right after `connection_made`).
    pub(crate) fn start_reading(slf: &Bound<'_, Self>) {
        let pending = {
            let mut state = slf.get().state();
            if state.closing {
                return;
            }
            state.reading_started = true;
            !state.reading_paused && state.read_pending
        };
        if pending {
            Self::queue_read(slf);
        }
    }

    /// Sends queued data; finishes a pending close or write_eof once the queue is empty.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let outcome = {
            let mut state = this.state();
            if state.conn_lost > 0 || state.queue.is_empty() {
                return Ok(());
            }
            state.send_queue(this.fd)
        };
        match outcome {
            Ok(_) => {}
            Err(err) => {
                return Self::fatal_error(
                    slf,
                    os_error(py, err),
                    "Fatal write error on socket transport",
                )
            }
        }
        Self::maybe_resume_protocol(slf)?;
        // The protocol may have written meanwhile (`resume_writing`); if that is held, the
        // queue counts as empty only once it is sent (`send_held` finishes then).
        let drained = {
            let state = this.state();
            state.queue.is_empty() && state.held.is_empty()
        };
        if drained {
            Self::queue_drained(slf)?;
        }
        Ok(())
    }

    /// The queue is empty: wake a drain waiter, finish a pending close or write_eof, and
    /// leave the poller if nothing else needs it.
    fn queue_drained(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        Self::notify_drained(slf, |_| None)?;
        let (closing, eof) = {
            let state = this.state();
            (state.closing, state.eof_requested)
        };
        if closing {
            let loop_ = {
                let mut state = this.state();
                state.conn_lost += 1;
                state.loop_.as_ref().map(|l| l.clone_ref(py))
            };
            return Self::schedule_connection_lost(slf, loop_, None);
        }
        if eof {
            Self::shutdown_write(slf)?;
        }
        Self::unregister_if_idle(slf);
        Ok(())
    }

    /// Resolves `loop.sendfile`'s wait for an empty queue (with an error if it never will).
    /// Wakes a `_make_empty_waiter` waiter; `exc` is built only if there is one.
    fn notify_drained(
        slf: &Bound<'_, Self>,
        exc: impl FnOnce(Python<'_>) -> Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let transport = {
            let mut state = slf.get().state();
            if !std::mem::replace(&mut state.drain_waiter, false) {
                return Ok(());
            }
            state.transport.as_ref().map(|t| t.clone_ref(py))
        };
        if let Some(transport) = transport {
            transport.call_method1(py, intern!(py, "_write_drained"), (exc(py),))?;
        }
        Ok(())
    }

    fn shutdown_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let sock = slf.get().state().sock.as_ref().map(|s| s.clone_ref(py));
        if let Some(sock) = sock {
            sock.call_method1(py, intern!(py, "shutdown"), (libc::SHUT_WR,))?;
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, true)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::flow_control(slf, false)
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
                state.protocol.as_ref().map(|p| p.protocol.clone_ref(py)),
                state.transport.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        tell_protocol(py, protocol, transport, pause)
    }

    /// Called by the loop when the fd is ready.
    pub fn on_ready(
        slf: &Bound<'_, Self>,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) -> PyResult<()> {
        if read_closed {
            slf.get().state().peer_closed = true;
        }
        if writable {
            Self::write_ready(slf)?;
        }
        if readable {
            Self::read_ready(slf)?;
        }
        Ok(())
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// `transport.write(data)` (bytes-like): never blocks, never loses bytes. Reached
    /// through the hand-written entry point in `fastcall.rs`.
    pub(crate) fn write_data(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // What the socket does not take of a bytes object is queued by reference; other
        // bytes-like objects may change after the call, so the rest of them is copied.
        let immutable = data.cast::<PyBytes>().ok();
        let outcome = with_bytes(data, |bytes| {
            let mut state = this.state();
            if state.eof_requested {
                return Written::AfterEof;
            }
            if bytes.is_empty() {
                return Written::Nothing;
            }
            if state.conn_lost > 0 {
                state.conn_lost += 1;
                return Written::ToLostConnection(state.conn_lost - 1);
            }
            let hold_limit = state.high_water.min(HOLD_LIMIT);
            if !state.held.is_empty() {
                state.held.extend_from_slice(bytes);
                if state.held.len() <= hold_limit {
                    return Written::Held(None);
                }
                // Too much to hold: all of it goes now, as one write would have.
                if let Err(err) = state.send_held_now(this.fd) {
                    return Written::Failed(err);
                }
                return Written::Sent;
            }
            if state.queue.is_empty() && bytes.len() <= hold_limit {
                if let Some(loop_) = state.loop_.as_ref().filter(|l| l.get().is_dispatching()) {
                    let loop_ = loop_.clone_ref(py);
                    if state.held.capacity() == 0 {
                        state.held = loop_.get().take_hold_buffer();
                    }
                    state.held.extend_from_slice(bytes);
                    return Written::Held(Some(loop_));
                }
            }
            let mut sent = 0;
            if state.queue.is_empty() {
                match send_chunks(Syscalls::Socket, this.fd, std::iter::once(bytes), 0) {
                    Ok(n) => sent = n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => return Written::Failed(err),
                }
            }
            if sent < bytes.len() {
                match &immutable {
                    // Queued whole; if it is the front now, `sent` of it has gone out.
                    Some(object) => {
                        if state.queue.is_empty() {
                            state.front_sent = sent;
                        }
                        state
                            .queue
                            .push_back(Chunk::Bytes(object.as_unbound().clone_ref(py)));
                    }
                    None => state.queue.push_back(Chunk::Copied(bytes[sent..].to_vec())),
                }
                state.queued += bytes.len() - sent;
            }
            Written::Sent
        })?;
        match outcome {
            Written::AfterEof => Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            )),
            Written::Nothing | Written::Held(None) => Ok(()),
            Written::Held(Some(loop_)) => {
                loop_.get().hold_writes_of(slf.clone().unbind());
                Ok(())
            }
            Written::ToLostConnection(count) => {
                if count >= CONNLOST_WRITES_BEFORE_WARNING {
                    py.import("asyncio.log")?
                        .getattr("logger")?
                        .call_method1("warning", ("socket.send() raised exception.",))?;
                }
                Ok(())
            }
            Written::Sent => {
                if this.state().queued > 0 {
                    Self::ensure_registered(slf)?;
                }
                Self::maybe_pause_protocol(slf)
            }
            Written::Failed(err) => Self::fatal_error(
                slf,
                os_error(py, err),
                "Fatal write error on socket transport",
            ),
        }
    }
}

impl StreamCore {
    /// Whether the transport has closed (its socket let go).
    pub(crate) fn is_closed(&self) -> bool {
        self.state().sock.is_none()
    }

    /// Sends the writes held for the running callback (the loop calls this when it returns;
    /// the transport's own methods, before anything that must see them sent). What the
    /// socket does not take is queued as any write's rest is.
    pub(crate) fn send_held(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let outcome = {
            let mut state = this.state();
            if state.held.is_empty() {
                return Ok(());
            }
            state.send_held_now(this.fd).map(|()| {
                let waiting = state.closing || state.eof_requested || state.drain_waiter;
                (state.queued > 0, waiting)
            })
        };
        match outcome {
            Err(err) => Self::fatal_error(
                slf,
                os_error(slf.py(), err),
                "Fatal write error on socket transport",
            ),
            Ok((true, _)) => {
                Self::ensure_registered(slf)?;
                Self::maybe_pause_protocol(slf)
            }
            // A close or write_eof that waited for the queue, or a drain waiter, completes
            // now that it is empty, as on a writable edge.
            Ok((false, true)) => Self::queue_drained(slf),
            Ok((false, false)) => Ok(()),
        }
    }
}

impl StreamState {
    /// Sends the held writes now, in one `send`; the socket's refusal of the rest is
    /// queued (the queue is empty while writes are held).
    fn send_held_now(&mut self, fd: RawFd) -> std::io::Result<()> {
        let held = std::mem::take(&mut self.held);
        let sent = match send_chunks(Syscalls::Socket, fd, std::iter::once(&held[..]), 0) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(err) => {
                self.give_back(held);
                return Err(err);
            }
        };
        if sent < held.len() {
            self.queue.push_back(Chunk::Copied(held[sent..].to_vec()));
            self.queued += held.len() - sent;
        }
        self.give_back(held);
        Ok(())
    }

    /// Hands a held-writes buffer, sent or dropped, back to the loop for the next one.
    fn give_back(&self, held: Vec<u8>) {
        if let Some(loop_) = &self.loop_ {
            loop_.get().give_back_hold_buffer(held);
        }
    }

    /// Sends queued chunks until the queue is empty or the socket is full (`send_queue`).
    fn send_queue(&mut self, fd: RawFd) -> std::io::Result<usize> {
        send_queue(
            Syscalls::Socket,
            fd,
            &mut self.queue,
            &mut self.front_sent,
            &mut self.queued,
        )
    }
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, transport, server=None))]
    pub(crate) fn new(
        loop_: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the socket is closed"));
        }
        Ok(Self {
            fd,
            state: GilCell::new(StreamState {
                loop_: Some(loop_.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                transport: Some(transport.clone().unbind()),
                server: server.map(|s| s.clone().unbind()),
                protocol: Some(Self::protocol_calls(py, protocol)?),
                queue: VecDeque::new(),
                front_sent: 0,
                queued: 0,
                held: Vec::new(),
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                reading_started: false,
                reading_paused: false,
                read_pending: false,
                peer_closed: false,
                closing: false,
                eof_requested: false,
                conn_lost: 0,
                drain_waiter: false,
                registered: false,
                sockname: None,
            }),
        })
    }

    /// Registers the fd with the loop's poller (reading starts with `_start_reading`).
    pub(crate) fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().state().loop_.is_none() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Self::ensure_registered(slf)
    }

    /// Queues the start of reading right behind `connection_made` (no Python callback).
    pub(crate) fn _start_reading_soon(slf: &Bound<'_, Self>) {
        if let Some(loop_) = slf.get().loop_of(slf.py()) {
            loop_.get().queue_start_reading(Self::me(slf));
        }
    }

    /// Write each item of an iterable of bytes-like objects: all or, if one is not
    /// bytes-like, none of them. As the stdlib does it: 3.11 joins them into one `bytes`
    /// and writes that; 3.12 takes a `memoryview` of each, then writes them in turn.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if py.version_info() < (3, 12) {
            let joined =
                PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
            return Self::write_data(slf, &joined);
        }
        if slf.get().state().eof_requested {
            return Err(PyRuntimeError::new_err(
                "Cannot call writelines() after write_eof()",
            ));
        }
        if !list_of_data.is_truthy()? {
            return Ok(());
        }
        let memoryview = py.get_type::<pyo3::types::PyMemoryView>();
        let views = list_of_data
            .try_iter()?
            .map(|data| memoryview.call1((data?,)))
            .collect::<PyResult<Vec<_>>>()?;
        for view in views {
            Self::write_data(slf, &view)?;
        }
        Ok(())
    }

    /// Close the write side once queued data is sent (half-close).
    pub(crate) fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::send_held(slf)?;
        let now = {
            let mut state = slf.get().state();
            if state.closing || state.eof_requested {
                return Ok(());
            }
            state.eof_requested = true;
            state.queue.is_empty()
        };
        if now {
            Self::shutdown_write(slf)?;
        }
        Ok(())
    }

    pub(crate) fn can_write_eof(&self) -> bool {
        true
    }

    /// Close: stop reading, send what is queued, then `connection_lost(None)`.
    pub(crate) fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        // Held writes go first, so that what follows (connection_lost scheduled now if all
        // is sent) happens in the stdlib loop's order.
        Self::send_held(slf)?;
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

    /// Close at once, dropping queued data.
    pub(crate) fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        // On the stdlib loop the held bytes would have reached the socket already, and
        // closing it sends them: so here too.
        Self::send_held(slf)?;
        Self::force_close(slf, None)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.state().closing
    }

    /// Close at once because of `exc` (used by `asyncio.sslproto`).
    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let err = exc
            .filter(|e| !e.is_none())
            .map(|e| PyErr::from_value(e.clone()));
        Self::force_close(slf, err)
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.state().protocol_paused
    }

    /// Ask for `transport._write_drained(None)` once the queue is empty.
    fn _notify_when_drained(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::send_held(slf)?;
        slf.get().state().drain_waiter = true;
        Ok(())
    }

    pub(crate) fn is_reading(&self) -> bool {
        let state = self.state();
        !state.reading_paused && !state.closing
    }

    /// Stop calling the protocol with data until `resume_reading()`.
    pub(crate) fn pause_reading(slf: &Bound<'_, Self>) {
        {
            let mut state = slf.get().state();
            if state.closing || state.reading_paused {
                return;
            }
            state.reading_paused = true;
        }
        Self::unregister_if_idle(slf);
    }

    /// Resume delivering data after `pause_reading()`.
    pub(crate) fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut state = slf.get().state();
            if state.closing || !state.reading_paused {
                return Ok(());
            }
            state.reading_paused = false;
            if !state.reading_started {
                return Ok(());
            }
        }
        Self::ensure_registered(slf)?;
        // Data may have arrived (or been left) while paused: look next iteration.
        Self::queue_read(slf);
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let signed = |v: Option<&Bound<'_, PyAny>>| -> PyResult<Option<i64>> {
            v.map(|v| v.extract::<i64>()).transpose()
        };
        let (high, low) = water_marks(signed(high)?, signed(low)?)?;
        {
            let mut state = slf.get().state();
            state.high_water = high;
            state.low_water = low;
        }
        Self::maybe_pause_protocol(slf)
    }

    pub(crate) fn get_write_buffer_limits(&self) -> (usize, usize) {
        let state = self.state();
        (state.low_water, state.high_water)
    }

    /// Bytes queued and not yet sent (held writes are sent first, so this is what the
    /// socket did not take, as on the stdlib loop).
    pub(crate) fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
        Self::send_held(slf)?;
        Ok(slf.get().state().queued)
    }

    pub(crate) fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state()
            .protocol
            .as_ref()
            .map(|p| p.protocol.clone_ref(py))
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let calls = Self::protocol_calls(protocol.py(), protocol)?;
        let old = self.state().protocol.replace(calls);
        drop(old);
        Ok(())
    }

    /// Runs `connection_lost(exc)`, then closes the socket and lets go of everything.
    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = this
            .state()
            .protocol
            .as_ref()
            .map(|p| p.protocol.clone_ref(py));
        let outcome = match protocol {
            Some(protocol) => protocol
                .call_method1(py, intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        let outcome = outcome.and(Self::notify_drained(slf, |py| {
            let lost = PyConnectionError::new_err("Connection is closed by peer");
            Some(lost.into_value(py).into_any())
        }));
        let (registered, loop_, sock, transport, server, protocol, queue) = {
            let mut state = this.state();
            (
                std::mem::replace(&mut state.registered, false),
                state.loop_.take(),
                state.sock.take(),
                state.transport.take(),
                state.server.take(),
                state.protocol.take(),
                std::mem::take(&mut state.queue),
            )
        };
        if let (true, Some(loop_)) = (registered, &loop_) {
            loop_.get().deregister_transport(this.fd);
        }
        let closed = match &sock {
            Some(sock) => Self::keep_sockname(slf, sock.bind(py))
                .map(drop)
                .and(close_socket(sock.bind(py))),
            None => Ok(()),
        };
        let detached = match (&server, &transport) {
            (Some(server), Some(transport)) => server
                .call_method1(py, intern!(py, "_detach"), (transport,))
                .map(drop),
            _ => Ok(()),
        };
        drop((loop_, sock, transport, server, protocol, queue));
        outcome.and(closed).and(detached)
    }

    /// The transport's `get_extra_info("sockname")`: asked of the socket the first time
    /// (None if it fails, as on the stdlib loop), the same object afterwards.
    fn _sockname(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let sock = {
            let state = slf.get().state();
            if let Some(known) = &state.sockname {
                return Ok(known.clone_ref(py));
            }
            state.sock.as_ref().map(|sock| sock.clone_ref(py))
        };
        match sock {
            Some(sock) => Self::keep_sockname(slf, sock.bind(py)),
            None => Ok(py.None()),
        }
    }

    /// (fd, reading state, write state, queued bytes) for the transport's repr.
    fn _describe(&self) -> (RawFd, bool, bool, bool, usize) {
        let state = self.state();
        (
            self.fd,
            state.sock.is_none(),
            state.closing,
            !state.reading_paused,
            // Held writes are as good as sent (see `get_write_buffer_size`): not counted.
            state.queued,
        )
    }

    /// The Python transport's repr (for the "fd is used by transport" error).
    fn _transport_repr(&self, py: Python<'_>) -> PyResult<String> {
        let transport = self.state().transport.as_ref().map(|t| t.clone_ref(py));
        match transport {
            Some(transport) => Ok(transport.bind(py).repr()?.to_string()),
            None => Ok(format!("<closed transport fd={}>", self.fd)),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // The loop's thread may hold the lock; then this object is in use, not garbage.
        let Some(state) = self.state.try_lock() else {
            return Ok(());
        };
        visit.call(&state.sock)?;
        visit.call(&state.transport)?;
        visit.call(&state.server)?;
        if let Some(calls) = &state.protocol {
            visit.call(&calls.protocol)?;
            match &calls.receive {
                Receive::Data(f) => visit.call(f)?,
                Receive::Buffered {
                    get_buffer,
                    buffer_updated,
                } => {
                    visit.call(get_buffer)?;
                    visit.call(buffer_updated)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = {
            let mut state = self.state();
            (
                state.sock.take(),
                state.transport.take(),
                state.server.take(),
                state.protocol.take(),
            )
        };
        drop(taken);
    }
}
