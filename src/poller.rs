//! The poller: mio's `Poll` plus the table of Python-level fd watchers (`add_reader`,
//! `add_writer`).
//!
//! # Implementation notes
//! mio registers fds edge-triggered, while `add_reader` promises the selector's
//! level-triggered behaviour (the callback runs again next iteration if data is still
//! unread). So after a watcher's callback has run, the loop *re-arms* the fd with
//! `reregister`: epoll then reports it again if it is still ready, and never reports it
//! spuriously before the callback has had its chance to drain it.
//!
//! The `sock_*` operations' one-shot watchers may *park* their fd instead of removing the
//! watcher: the watcher goes, the epoll registration stays, and the next one-shot wait on
//! the same socket re-installs its watcher without a syscall (`unpark`). That is sound
//! because such a wait always follows a call that found the socket not ready: any data
//! arriving after it raises a new edge, reported to the new watcher. A parked fd that
//! reports an event while no one waits is deregistered (the socket may have been closed
//! with its registration kept alive by a duplicate), so the next wait registers anew.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use pyo3::prelude::*;

use crate::handle::Handle;
use crate::transport::IoTransport;

/// An entry of the loop's ready queue.
pub enum Ready {
    /// A scheduled callback.
    Callback(Py<Handle>),
    /// A transport whose fd is ready (or that asked to read again).
    Transport {
        transport: IoTransport,
        readable: bool,
        writable: bool,
        /// The peer closed its side (or the socket failed): read on until EOF.
        read_closed: bool,
    },
    /// A new transport starts reading (the stdlib's callback after `connection_made`).
    StartReading(IoTransport),
}

/// The token of the loop's waker (`call_soon_threadsafe`); fds use their number.
pub const WAKER_TOKEN: Token = Token(usize::MAX);
const EVENTS_CAPACITY: usize = 1024;

/// The blocking half: only the loop's own thread polls.
pub struct Poller {
    poll: Poll,
    events: Events,
}

impl Poller {
    /// A poller, a registry handle usable from any thread, and the waker.
    pub fn new() -> std::io::Result<(Self, Registry, Arc<Waker>)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let poller = Self {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
        };
        Ok((poller, registry, waker))
    }

    /// Waits for readiness; `None` waits until an event or a wake-up. mio rounds
    /// sub-millisecond timeouts up, so a timer is never reached early.
    pub fn poll(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.poll.poll(&mut self.events, timeout)
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }
}

/// The reader and writer callbacks watching one fd.
#[derive(Default)]
pub struct FdWatch {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
    /// The interest epoll has for the fd (set by each register or reregister).
    registered: Option<Interest>,
}

/// What an event on a watched fd asks of the loop once its callbacks have run.
pub enum Wake {
    /// Nothing: the fd has no Python watchers.
    Nothing,
    /// Re-arm it (`FdWatchers::rearm`), for level-triggered semantics.
    Rearm,
    /// It is parked and no one waits: deregister it (`FdWatchers::drop_if_parked`).
    Stale,
}

impl FdWatch {
    fn slot(&mut self, side: Side) -> &mut Option<Py<Handle>> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }

    fn interest(&self) -> Option<Interest> {
        interest_of(self.reader.is_some(), self.writer.is_some())
    }

    /// The interest with a watcher on `side` too.
    fn interest_with(&self, side: Side) -> Option<Interest> {
        match side {
            Side::Read => interest_of(true, self.writer.is_some()),
            Side::Write => interest_of(self.reader.is_some(), true),
        }
    }
}

/// The epoll interest of an fd watched for reading and/or writing.
fn interest_of(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}

/// Which side of an fd a watcher is on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
}

/// Hashes an fd with one multiplication (Fibonacci hashing): fds are small distinct
/// integers, looked up once per readiness event, so SipHash's DoS resistance buys nothing.
#[derive(Default)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_i32(&mut self, fd: i32) {
        self.0 = u64::from(fd as u32).wrapping_mul(FIBONACCI);
    }
}

/// 2^64 / φ: spreads consecutive integers over the whole range, high bits included.
const FIBONACCI: u64 = 0x9E37_79B9_7F4A_7C15;

type FdHash = BuildHasherDefault<FdHasher>;

/// The fd → watcher table, kept in step with the registrations in epoll: Python
/// callbacks (`add_reader`/`add_writer`) or a transport, never both on one fd.
#[derive(Default)]
pub struct FdWatchers {
    watches: HashMap<RawFd, FdWatch, FdHash>,
    transports: HashMap<RawFd, IoTransport, FdHash>,
}

impl FdWatchers {
    /// Installs `handle` on one side of `fd`, registering or updating the fd in epoll.
    /// Returns the handle it replaced. On a registration error nothing changes.
    pub fn add(
        &mut self,
        registry: &Registry,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
    ) -> Result<Option<Py<Handle>>, (std::io::Error, Py<Handle>)> {
        let is_new = !self.watches.contains_key(&fd);
        let watch = self.watches.entry(fd).or_default();
        let previous = watch.slot(side).replace(handle);
        let interest = watch.interest().unwrap_or(Interest::READABLE);
        let token = Token(fd as usize);
        let outcome = if is_new {
            registry.register(&mut SourceFd(&fd), token, interest)
        } else {
            // epoll forgets an fd when it is closed; its number may since have been reused.
            registry
                .reregister(&mut SourceFd(&fd), token, interest)
                .or_else(|err| match err.raw_os_error() {
                    Some(libc::ENOENT) => registry.register(&mut SourceFd(&fd), token, interest),
                    _ => Err(err),
                })
        };
        match outcome {
            Ok(()) => {
                if let Some(watch) = self.watches.get_mut(&fd) {
                    watch.registered = Some(interest);
                }
                Ok(previous)
            }
            Err(err) => {
                let watch = self.watches.entry(fd).or_default();
                let ours = std::mem::replace(watch.slot(side), previous);
                if is_new {
                    self.watches.remove(&fd);
                }
                match ours {
                    Some(ours) => Err((err, ours)),
                    None => Ok(None),
                }
            }
        }
    }

    /// Removes one side's watcher, updating or dropping the epoll registration.
    /// Returns the removed handle, if there was one.
    pub fn remove(&mut self, registry: &Registry, fd: RawFd, side: Side) -> Option<Py<Handle>> {
        let watch = self.watches.get_mut(&fd)?;
        let removed = watch.slot(side).take();
        match watch.interest() {
            // The fd may already be closed (epoll forgot it then): nothing to undo.
            Some(interest) => {
                let _ = registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest);
                watch.registered = Some(interest);
            }
            None => {
                self.watches.remove(&fd);
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
        }
        removed
    }

    /// Removes one side's watcher and leaves the epoll registration as it is (see the
    /// module notes). Returns the removed handle, if there was one.
    pub fn park(&mut self, fd: RawFd, side: Side) -> Option<Py<Handle>> {
        self.watches.get_mut(&fd)?.slot(side).take()
    }

    /// Installs `handle` on one side of `fd` after a call on it found it not ready: with
    /// no syscall if the fd is registered with exactly the interest it now needs (parked),
    /// else as `add` does.
    pub fn unpark(
        &mut self,
        registry: &Registry,
        fd: RawFd,
        side: Side,
        handle: Py<Handle>,
    ) -> Result<Option<Py<Handle>>, (std::io::Error, Py<Handle>)> {
        if let Some(watch) = self.watches.get_mut(&fd) {
            if watch.slot(side).is_none() && watch.interest_with(side) == watch.registered {
                *watch.slot(side) = Some(handle);
                return Ok(None);
            }
        }
        // Not parked, or the registration needs changing: as `add` does it.
        self.add(registry, fd, side, handle)
    }

    /// Deregisters `fd` if it is parked with no watcher (an event came while no one
    /// waited: see the module notes).
    pub fn drop_if_parked(&mut self, registry: &Registry, fd: RawFd) {
        if self
            .watches
            .get(&fd)
            .is_some_and(|watch| watch.interest().is_none())
        {
            self.watches.remove(&fd);
            let _ = registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Queues what an event wakes (an error or hang-up wakes both sides, as the
    /// selectors module does), and says what the fd needs once they have run.
    pub fn ready(&self, py: Python<'_>, event: &Event, out: &mut VecDeque<Ready>) -> Wake {
        let fd = event.token().0 as RawFd;
        let failed = event.is_error();
        let readable = event.is_readable() || event.is_read_closed() || failed;
        let writable = event.is_writable() || event.is_write_closed() || failed;
        let Some(watch) = self.watches.get(&fd) else {
            if let Some(transport) = self.transports.get(&fd) {
                out.push_back(Ready::Transport {
                    transport: transport.clone_ref(py),
                    readable,
                    writable,
                    read_closed: event.is_read_closed() || failed,
                });
            }
            return Wake::Nothing;
        };
        if watch.interest().is_none() {
            return Wake::Stale;
        }
        for (wanted, slot) in [(readable, &watch.reader), (writable, &watch.writer)] {
            if let Some(handle) = slot.as_ref().filter(|_| wanted) {
                if !handle.get().is_cancelled() {
                    out.push_back(Ready::Callback(handle.clone_ref(py)));
                }
            }
        }
        Wake::Rearm
    }

    /// Registers a transport's fd, edge-triggered both ways. Python watchers left on the
    /// fd are replaced; their handles are returned.
    pub fn add_transport(
        &mut self,
        registry: &Registry,
        transport: IoTransport,
    ) -> std::io::Result<Vec<Py<Handle>>> {
        let fd = transport.fd();
        let mut replaced = Vec::new();
        if let Some(watch) = self.watches.remove(&fd) {
            let _ = registry.deregister(&mut SourceFd(&fd));
            replaced.extend(watch.reader);
            replaced.extend(watch.writer);
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut SourceFd(&fd), Token(fd as usize), interest)?;
        self.transports.insert(fd, transport);
        Ok(replaced)
    }

    /// Whether any fd other than `except` is registered (watchers and transports).
    /// Asked every iteration: the table is searched only when one fd is registered.
    pub fn any_except(&self, except: Option<RawFd>) -> bool {
        match self.watches.len() + self.transports.len() {
            0 => false,
            1 => !except.is_some_and(|fd| self.watches.contains_key(&fd)),
            _ => true,
        }
    }

    /// Forgets a transport's fd (before its socket is closed).
    pub fn remove_transport(&mut self, registry: &Registry, fd: RawFd) -> Option<IoTransport> {
        let transport = self.transports.remove(&fd)?;
        let _ = registry.deregister(&mut SourceFd(&fd));
        Some(transport)
    }

    /// Re-arms an fd after its callbacks ran, so a still-ready fd is reported again. (A
    /// callback that parked the fd leaves it as it is.)
    pub fn rearm(&mut self, registry: &Registry, fd: RawFd) {
        let Some(watch) = self.watches.get_mut(&fd) else {
            return;
        };
        if let Some(interest) = watch.interest() {
            let _ = registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest);
            watch.registered = Some(interest);
        }
    }

    /// Forgets every watcher and transport, deregistering the fds; returns what it
    /// held, for dropping outside the caller's lock.
    pub fn clear(&mut self, registry: &Registry) -> (Vec<Py<Handle>>, Vec<IoTransport>) {
        let mut handles = Vec::new();
        for (fd, watch) in self.watches.drain() {
            let _ = registry.deregister(&mut SourceFd(&fd));
            handles.extend(watch.reader);
            handles.extend(watch.writer);
        }
        let mut transports = Vec::new();
        for (fd, transport) in self.transports.drain() {
            let _ = registry.deregister(&mut SourceFd(&fd));
            transports.push(transport);
        }
        (handles, transports)
    }
}
