//! `PipeCore`: the Rust half of the read and write pipe transports (`connect_read_pipe`,
//! `connect_write_pipe`, and so subprocess pipes).
//!
//! It follows the stdlib's pipe transports, which differ from socket ones: reading ends at
//! EOF (`eof_received`, then `connection_lost(None)`, whatever `eof_received` returns); a
//! write pipe learns that its reader went away from the poller (an error/hang-up on its
//! fd) and closes, with `BrokenPipeError` if data was still queued; `write_eof()` and
//! `close()` of a write pipe close it once the queue is flushed; `EIO` from a PTY master
//! whose slave closed ends a read pipe quietly.
//!
//! # Implementation notes
//! `read`/`writev` instead of `recv`/`sendmsg`; otherwise the same edge-triggered scheme as
//! `StreamCore`: one read per edge, a full read queues another; queued writes flush on
//! writable edges. The fd is registered only while it needs watching.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyBrokenPipeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::handle::lock;
use crate::transport::flow::{is_exit, send_queue, tell_protocol, water_marks, DEFAULT_HIGH_WATER};
use crate::transport::io::{
    recv_into, send_chunks, with_bytes, Received, Syscalls, READ_BUFFER, READ_CHUNK,
};
use crate::transport::IoTransport;

const CONNLOST_WRITES_BEFORE_WARNING: u32 = 5;

struct PipeState {
    loop_: Option<Py<LoopCore>>,
    pipe: Option<Py<PyAny>>,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    queue: VecDeque<Vec<u8>>,
    front_sent: usize,
    queued: usize,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading_started: bool,
    paused: bool,
    read_pending: bool,
    /// The writer hung up: an edge-triggered poller will not say so again, so reads go
    /// on until they see EOF.
    peer_closed: bool,
    closing: bool,
    conn_lost: u32,
    registered: bool,
}

/// The Rust half of a read or write pipe transport (see the module docs).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct PipeCore {
    fd: RawFd,
    writer: bool,
    /// A write pipe watches for its reader going away (FIFOs and sockets).
    watch_peer: bool,
    state: Mutex<PipeState>,
}

impl PipeCore {
    fn state(&self) -> MutexGuard<'_, PipeState> {
        lock(&self.state)
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn loop_of(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state().loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn me(slf: &Bound<'_, Self>) -> IoTransport {
        IoTransport::Pipe(slf.clone().unbind())
    }

    fn set_registered(slf: &Bound<'_, Self>, wanted: bool) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let mut state = slf.get().state();
            if state.registered == wanted || (wanted && state.conn_lost > 0) {
                return Ok(());
            }
            let Some(loop_) = state.loop_.as_ref().map(|l| l.clone_ref(py)) else {
                return Ok(());
            };
            state.registered = wanted;
            loop_
        };
        if wanted {
            let outcome = loop_.get().register_transport(py, Self::me(slf));
            if outcome.is_err() {
                slf.get().state().registered = false;
            }
            outcome
        } else {
            loop_.get().deregister_transport(slf.get().fd);
            Ok(())
        }
    }

    /// Watched while it reads, has data queued, or (write pipes) watches its peer.
    fn update_registration(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let wanted = {
            let state = this.state();
            if state.conn_lost > 0 || state.pipe.is_none() {
                false
            } else if this.writer {
                this.watch_peer || !state.queue.is_empty()
            } else {
                !state.paused && !state.closing
            }
        };
        Self::set_registered(slf, wanted)
    }

    fn schedule(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        arg: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py) {
            match arg {
                Some(arg) => loop_
                    .bind(py)
                    .call_method1(intern!(py, "call_soon"), (callback, arg))?,
                None => loop_
                    .bind(py)
                    .call_method1(intern!(py, "call_soon"), (callback,))?,
            };
        }
        Ok(())
    }

    /// The stdlib's `_close(exc)`: stop, drop queued data, `connection_lost(exc)` next.
    fn close_with(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let dropped = {
            let mut state = slf.get().state();
            state.closing = true;
            state.queued = 0;
            state.front_sent = 0;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        Self::update_registration(slf)?;
        let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
        Self::schedule(
            slf,
            callback,
            Some(exc.map_or_else(|| py.None(), |e| e.into_value(py).into_any())),
        )
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
        Self::close_with(slf, Some(err))
    }

    pub fn on_ready(
        slf: &Bound<'_, Self>,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) -> PyResult<()> {
        if read_closed && !slf.get().writer {
            slf.get().state().peer_closed = true;
        }
        let readable = readable || read_closed;
        if slf.get().writer {
            if writable {
                Self::write_ready(slf)?;
            }
            if readable && slf.get().watch_peer {
                Self::peer_gone(slf)?;
            }
            Ok(())
        } else if readable {
            Self::read_ready(slf)
        } else {
            Ok(())
        }
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut state = this.state();
            if state.closing || state.conn_lost > 0 {
                return Ok(());
            }
            if !state.reading_started || state.paused {
                state.read_pending = true;
                return Ok(());
            }
            match &state.protocol {
                Some(protocol) => protocol.clone_ref(py),
                None => return Ok(()),
            }
        };
        let (received, data) =
            READ_BUFFER.with_borrow_mut(|buf| match recv_into(Syscalls::File, this.fd, buf) {
                Received::Data(n) => (Received::Data(n), Some(PyBytes::new(py, &buf[..n]))),
                other => (other, None),
            });
        match received {
            Received::Data(n) => {
                if n >= READ_CHUNK || this.state().peer_closed {
                    Self::queue_read(slf);
                }
                if let Some(data) = data {
                    if let Err(err) =
                        protocol.call_method1(py, intern!(py, "data_received"), (data,))
                    {
                        // As on the stdlib loop: logged, and the pipe stays open.
                        if is_exit(py, &err) {
                            return Err(err);
                        }
                        Self::report(slf, "Exception in protocol.data_received()", err)?;
                    }
                }
                Ok(())
            }
            Received::WouldBlock => Ok(()),
            Received::Failed(err) => {
                Self::fatal_error(slf, os_error(py, err), "Fatal read error on pipe transport")
            }
            Received::Eof => {
                let transport = this.state().transport.as_ref().map(|t| t.clone_ref(py));
                if let Some(transport) = &transport {
                    transport.call_method0(py, intern!(py, "_log_closed_by_peer"))?;
                }
                this.state().closing = true;
                Self::update_registration(slf)?;
                Self::schedule(
                    slf,
                    protocol.bind(py).getattr(intern!(py, "eof_received"))?,
                    None,
                )?;
                let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
                Self::schedule(slf, callback, Some(py.None()))
            }
        }
    }

    fn queue_read(slf: &Bound<'_, Self>) {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py) {
            loop_.get().queue_transport(Self::me(slf), true, false);
        }
    }

    /// Starts delivering data (queued right behind `connection_made`).
    pub(crate) fn start_reading(slf: &Bound<'_, Self>) {
        let pending = {
            let mut state = slf.get().state();
            if state.closing {
                return;
            }
            state.reading_started = true;
            !state.paused && std::mem::replace(&mut state.read_pending, false)
        };
        if pending {
            Self::queue_read(slf);
        }
    }

    /// The reader of a write pipe went away.
    fn peer_gone(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (queued, done, transport) = {
            let state = slf.get().state();
            (
                !state.queue.is_empty(),
                state.conn_lost > 0 || state.pipe.is_none(),
                state.transport.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        if done {
            return Ok(());
        }
        if let Some(transport) = &transport {
            transport.call_method0(py, intern!(py, "_log_closed_by_peer"))?;
        }
        let exc = queued.then(|| PyBrokenPipeError::new_err(()));
        Self::close_with(slf, exc)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let outcome = {
            let mut state = this.state();
            if state.conn_lost > 0 || state.queue.is_empty() {
                return Ok(());
            }
            let PipeState {
                queue,
                front_sent,
                queued,
                ..
            } = &mut *state;
            send_queue(Syscalls::File, this.fd, queue, front_sent, queued)
        };
        match outcome {
            Ok(_) => {}
            Err(err) => {
                this.state().conn_lost += 1;
                return Self::fatal_error(
                    slf,
                    os_error(py, err),
                    "Fatal write error on pipe transport",
                );
            }
        }
        if !this.state().queue.is_empty() {
            return Ok(());
        }
        Self::flow_control(slf, false)?;
        let closing = this.state().closing;
        Self::update_registration(slf)?;
        if closing {
            Self::_call_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn report(slf: &Bound<'_, Self>, message: &str, err: PyErr) -> PyResult<()> {
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
                intern!(py, "_report_error"),
                (message, err.into_value(py)),
            )?;
        }
        Ok(())
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
}

#[pymethods]
impl PipeCore {
    #[new]
    #[pyo3(signature = (loop_, pipe, protocol, transport, writer, watch_peer))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        writer: bool,
        watch_peer: bool,
    ) -> PyResult<Self> {
        let fd: RawFd = pipe.call_method0(intern!(pipe.py(), "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the pipe is closed"));
        }
        Ok(Self {
            fd,
            writer,
            watch_peer,
            state: Mutex::new(PipeState {
                loop_: Some(loop_.clone().unbind()),
                pipe: Some(pipe.clone().unbind()),
                transport: Some(transport.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                queue: VecDeque::new(),
                front_sent: 0,
                queued: 0,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                reading_started: false,
                paused: false,
                read_pending: false,
                peer_closed: false,
                closing: false,
                conn_lost: 0,
                registered: false,
            }),
        })
    }

    fn _register(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::update_registration(slf)
    }

    /// Queues the start of reading right behind `connection_made` (no Python callback).
    fn _start_reading_soon(slf: &Bound<'_, Self>) {
        if let Some(loop_) = slf.get().loop_of(slf.py()) {
            loop_.get().queue_start_reading(Self::me(slf));
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let bytes: Vec<u8> = with_bytes(data, <[u8]>::to_vec)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let lost = {
            let mut state = this.state();
            if state.conn_lost > 0 || state.closing {
                state.conn_lost += 1;
                Some(state.conn_lost - 1)
            } else {
                None
            }
        };
        if let Some(lost) = lost {
            if lost >= CONNLOST_WRITES_BEFORE_WARNING {
                py.import("asyncio.log")?.getattr("logger")?.call_method1(
                    "warning",
                    ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                )?;
            }
            return Ok(());
        }
        let failed = {
            let mut state = this.state();
            let mut sent = 0;
            let mut failed = None;
            if state.queue.is_empty() {
                match send_chunks(
                    Syscalls::File,
                    this.fd,
                    std::iter::once(bytes.as_slice()),
                    0,
                ) {
                    Ok(n) => sent = n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) => failed = Some(err),
                }
            }
            if failed.is_none() && sent < bytes.len() {
                state.queued += bytes.len() - sent;
                state.queue.push_back(bytes[sent..].to_vec());
            }
            failed
        };
        if let Some(err) = failed {
            this.state().conn_lost += 1;
            return Self::fatal_error(
                slf,
                os_error(py, err),
                "Fatal write error on pipe transport",
            );
        }
        Self::update_registration(slf)?;
        Self::flow_control(slf, true)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        for data in list_of_data.try_iter()? {
            Self::write(slf, &data?)?;
        }
        Ok(())
    }

    /// Write pipes: close once queued data is sent.
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let now = {
            let mut state = slf.get().state();
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            state.queue.is_empty()
        };
        if now {
            let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
            Self::schedule(slf, callback, Some(py.None()))?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (closing, open) = {
            let state = slf.get().state();
            (state.closing, state.pipe.is_some())
        };
        if closing || !open {
            return Ok(());
        }
        if slf.get().writer {
            Self::write_eof(slf)
        } else {
            Self::close_with(slf, None)
        }
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, None)
    }

    fn is_closing(&self) -> bool {
        self.state().closing
    }

    fn is_reading(&self) -> bool {
        let state = self.state();
        !state.paused && !state.closing
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut state = slf.get().state();
            if state.paused || state.closing {
                return Ok(());
            }
            state.paused = true;
        }
        Self::update_registration(slf)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut state = slf.get().state();
            if state.closing || !state.paused {
                return Ok(());
            }
            state.paused = false;
            if !state.reading_started {
                return Ok(());
            }
        }
        Self::update_registration(slf)?;
        Self::queue_read(slf);
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
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
        Self::flow_control(slf, true)
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.state().protocol_paused
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let old = self.state().protocol.replace(protocol.clone().unbind());
        drop(old);
    }

    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let err = exc
            .filter(|e| !e.is_none())
            .map(|e| PyErr::from_value(e.clone()));
        Self::close_with(slf, err)
    }

    /// Runs `connection_lost(exc)`, then closes the pipe and lets go of everything.
    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut state = this.state();
            if state.pipe.is_none() {
                return Ok(());
            }
            state.conn_lost += 1;
            state.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let outcome = match protocol {
            Some(protocol) => protocol
                .call_method1(py, intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        Self::set_registered(slf, false)?;
        let taken = {
            let mut state = this.state();
            (
                state.loop_.take(),
                state.pipe.take(),
                state.transport.take(),
                state.protocol.take(),
                std::mem::take(&mut state.queue),
            )
        };
        let closed = match &taken.1 {
            Some(pipe) => pipe.call_method0(py, intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop(taken);
        outcome.and(closed)
    }

    /// (fd, closed, closing, reading, queued bytes) for the transport's repr.
    fn _describe(&self) -> (RawFd, bool, bool, bool, usize) {
        let state = self.state();
        (
            self.fd,
            state.pipe.is_none(),
            state.closing,
            state.registered,
            state.queued,
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(state) = self.state.try_lock() else {
            return Ok(());
        };
        visit.call(&state.pipe)?;
        visit.call(&state.transport)?;
        visit.call(&state.protocol)?;
        Ok(())
    }

    fn __clear__(&self) {
        let taken = {
            let mut state = self.state();
            (
                state.pipe.take(),
                state.transport.take(),
                state.protocol.take(),
            )
        };
        drop(taken);
    }
}
