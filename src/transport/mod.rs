//! Transports: the per-packet halves of asyncio transports, driven by the loop's poller.

pub mod accept;
pub mod datagram;
pub mod flow;
pub mod inet4;
pub mod io;
pub mod methods;
pub mod pipe;
pub mod recycle;
pub mod setup;
pub mod stream;

use std::os::fd::RawFd;

use pyo3::prelude::*;

use datagram::DatagramCore;
use pipe::PipeCore;
use stream::StreamCore;

/// A transport registered with the poller: the loop hands it readiness directly, with no
/// Python callback in between.
pub enum IoTransport {
    Stream(Py<StreamCore>),
    Datagram(Py<DatagramCore>),
    Pipe(Py<PipeCore>),
}

impl IoTransport {
    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Self::Stream(core) => Self::Stream(core.clone_ref(py)),
            Self::Datagram(core) => Self::Datagram(core.clone_ref(py)),
            Self::Pipe(core) => Self::Pipe(core.clone_ref(py)),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Self::Stream(core) => core.get().fd(),
            Self::Datagram(core) => core.get().fd(),
            Self::Pipe(core) => core.get().fd(),
        }
    }

    /// Handles readiness; only exceptions that must stop the loop come out.
    pub fn on_ready(
        &self,
        py: Python<'_>,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) -> PyResult<()> {
        match self {
            Self::Stream(core) => {
                StreamCore::on_ready(core.bind(py), readable, writable, read_closed)
            }
            Self::Datagram(core) => DatagramCore::on_ready(core.bind(py), readable, writable),
            Self::Pipe(core) => PipeCore::on_ready(core.bind(py), readable, writable, read_closed),
        }
    }

    /// Starts delivering data: what was read before `connection_made` ran, then more.
    pub fn start_reading(&self, py: Python<'_>) {
        match self {
            Self::Stream(core) => StreamCore::start_reading(core.bind(py)),
            Self::Datagram(core) => DatagramCore::start_reading(core.bind(py)),
            Self::Pipe(core) => PipeCore::start_reading(core.bind(py)),
        }
    }
}
