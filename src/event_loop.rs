//! `LoopCore`: the per-event half of the event loop — ready queue, timers, poll step —
//! which `ferroloop.Loop` (Python) extends with the once-per-loop and once-per-connection
//! API.
//!
//! One iteration (`_run_once`), as in the stdlib: drop cancelled timers at the head of the
//! heap (or compact it when they dominate), poll for I/O (not at all blocking if callbacks
//! are ready, else until the next deadline), queue the callbacks of ready fds, queue due
//! timers, then run exactly the callbacks queued so far. Callbacks they schedule run in the
//! next iteration, after another poll.
//!
//! # Implementation notes
//! All state sits behind one mutex that is never held while Python code can run: Python
//! objects are created before it is taken and dropped after it is released (a `__del__` may
//! call back into the loop). The GIL is released only around a poll that may block, and
//! `call_soon_threadsafe` wakes such a poll through mio's waker only when the loop is
//! actually asleep.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::{Registry, Waker};
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyOverflowError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::call_args::Args;
use crate::clock;
use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::handle::{
    closed_loop_error, hide_while_queued, leave_queue, lock, prefetch_object, show_handle, Handle,
    HandlePool, TimerHandle, TimerState,
};
use crate::poller::{FdWatchers, Poller, Ready, Side, Wake, WAKER_TOKEN};
use crate::timers::TimerHeap;
use crate::transport::stream::StreamCore;
use crate::transport::IoTransport;

/// The longest single poll, as in the stdlib (one day): keeps far deadlines from
/// overflowing the poll timeout.
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;

/// Drops `items`, skipping the out-of-line drop code when they own no memory (most
/// iterations' scratch vectors).
#[inline(always)]
fn discard<T>(items: Vec<T>) {
    if items.capacity() == 0 && items.is_empty() {
        std::mem::forget(items);
    }
}

/// How many handles ahead the loop asks the CPU to load the handle it will touch next.
const PREFETCH_AHEAD: usize = 7;

/// The capacity the buffer of due timers keeps between iterations.
const DUE_BUFFER_KEPT: usize = 1024;

/// At most this many iterations in a row skip their zero-timeout poll (`poll_timeout`).
const MAX_POLLS_SKIPPED: u32 = 63;

/// What an iteration does about I/O.
enum PollPlan {
    /// Poll with this timeout (`None`: until an event or a wake-up).
    Poll(Option<Duration>),
    /// Don't poll: nothing is registered that could report anything.
    Skip,
}

struct State {
    ready: VecDeque<Ready>,
    /// The previous iteration's emptied batch, reused so steady state allocates nothing.
    spare: VecDeque<Ready>,
    timers: TimerHeap<Py<Handle>>,
    watchers: FdWatchers,
    /// Fds whose watchers were woken this iteration; re-armed after their callbacks ran.
    rearm: Vec<RawFd>,
    /// Parked fds that reported an event while no one waited (`Wake::Stale`).
    stale: Vec<RawFd>,
    /// The timers an iteration found due, before they are queued (kept for its buffer).
    due: Vec<Option<Py<Handle>>>,
    registry: Option<Registry>,
    waker: Option<Arc<Waker>>,
    /// The read end of the signal socket pair (`_signals.py`), if watched.
    signal_fd: Option<RawFd>,
    /// Zero-timeout polls skipped in a row (see `poll_timeout`).
    polls_skipped: u32,
}

/// The Rust core of a ferroloop event loop. Use `ferroloop.Loop`, which subclasses it.
#[pyclass(subclass, frozen, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    state: GilCell<State>,
    poller: Mutex<Option<Poller>>,
    debug: AtomicBool,
    stopping: AtomicBool,
    closed: AtomicBool,
    /// Set (under the state lock) when the loop decides to block in poll.
    sleeping: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    running_thread: AtomicU64,
    /// Cancelled timers still in the heap.
    timers_cancelled: Arc<AtomicUsize>,
    /// `set_task_factory`'s factory (the stdlib's `_task_factory`).
    task_factory: Mutex<Option<Py<PyAny>>>,
    /// Handles that ran and timers that left the heap, kept for `call_soon` and
    /// `call_later` to refill.
    spare_handles: HandlePool,
    /// `{"loop": self}` while `_run_loop` runs (a cycle through the loop only then): the
    /// keyword arguments of every `Future`/`Task` it makes, passed as they are instead of
    /// CPython building and parsing a new dictionary per call (see `call_with_loop_keyword`).
    loop_keyword: GilCell<Option<Py<PyDict>>>,
    /// Set while `run_batch` runs a callback (a task step, a future's done callback, a
    /// `call_soon`): a stream write made then is held until it returns (see
    /// `StreamCore::write_data`). Not while a transport hands data to its protocol: a
    /// protocol answering in `data_received` writes once, and the `bytes` it answers with
    /// is best sent at once and freed for the next read to reuse.
    dispatching: AtomicBool,
    /// Emptied buffers of held writes, for the next transport that holds some.
    spare_hold_buffers: GilCell<Vec<Vec<u8>>>,
    /// Stream transports holding the running callback's writes, sent when it returns.
    held_writes: GilCell<Vec<Py<StreamCore>>>,
    /// `held_writes` is not empty: what the loop checks after each callback.
    writes_held: AtomicBool,
}

/// `callable(*positional, **kwargs)` with the dictionary itself handed on: a type's
/// `__init__` reads its keywords straight out of it.
fn call_with_dict<'py>(
    callable: &Bound<'py, PyAny>,
    positional: Bound<'py, PyTuple>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: attached; all three pointers are live for the call (borrowed from `Bound`s).
    unsafe {
        let result =
            pyo3::ffi::PyObject_Call(callable.as_ptr(), positional.as_ptr(), kwargs.as_ptr());
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
}

fn thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions. Its value is what CPython's
    // threading.get_ident() returns on POSIX.
    unsafe { libc::pthread_self() as u64 }
}

fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// A helper from `ferroloop._format` (slow paths: debug checks, reprs).
fn format_helper<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        MODULE.get_or_try_init(py, || py.import("ferroloop._format").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// The most arguments `call_with_keywords` passes (`Task(coro, loop=, name=, context=)`).
const MAX_KEYWORD_CALL_ARGS: usize = 4;

/// `callable(*positional, **dict(zip(keywords, values)))` as one vectorcall, its argument
/// vector on the stack (this makes every task and future).
fn call_with_keywords<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    keywords: &Bound<'py, PyTuple>,
    values: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    debug_assert_eq!(keywords.len(), values.len());
    let mut args = [std::ptr::null_mut(); MAX_KEYWORD_CALL_ARGS];
    let count = positional.len() + values.len();
    assert!(count <= MAX_KEYWORD_CALL_ARGS, "too many arguments");
    for (slot, arg) in args.iter_mut().zip(positional.iter().chain(values)) {
        *slot = arg.as_ptr();
    }
    // SAFETY: attached; every pointer in `args` is borrowed from a `Bound` that outlives
    // the call, `keywords` is a tuple of str naming the last `values.len()` of them.
    unsafe {
        let result = pyo3::ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            args.as_ptr(),
            positional.len(),
            keywords.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
}

/// `selectors`' rule for what may be watched: an int fd, or an object with `fileno()` whose
/// result `int()` accepts; negative is invalid. `None` is a valid number beyond a C int,
/// which no selector can hold: removing it finds nothing, adding it overflows.
fn fileobj_to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = fileobj.py();
    let number = match fileobj.cast::<PyInt>() {
        Ok(number) => number.clone(),
        Err(_) => fileobj
            .call_method0(intern!(py, "fileno"))
            .and_then(|fd| py.get_type::<PyInt>().call1((fd,)))
            .and_then(|fd| Ok(fd.cast_into::<PyInt>()?))
            .map_err(|_| {
                let repr = fileobj
                    .repr()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "<object>".into());
                PyValueError::new_err(format!("Invalid file object: {repr}"))
            })?,
    };
    if let Ok(fd) = number.extract::<RawFd>() {
        if fd >= 0 {
            return Ok(Some(fd));
        }
    }
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {number}"
        )));
    }
    Ok(None)
}

impl LoopCore {
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(closed_loop_error())
        } else {
            Ok(())
        }
    }

    fn check_thread(&self) -> PyResult<()> {
        let running = self.running_thread.load(Ordering::Acquire);
        if running != 0 && running != thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks of a callback (the stdlib makes them only in debug mode too).
    fn check_callback(&self, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
        format_helper(callback.py(), "check_callback")?.call1((callback, method))?;
        Ok(())
    }

    fn source_traceback(&self, py: Python<'_>, debug: bool) -> PyResult<Option<Py<PyAny>>> {
        if !debug {
            return Ok(None);
        }
        Ok(Some(
            format_helper(py, "source_traceback")?.call0()?.unbind(),
        ))
    }

    /// A new handle (not a spare one), with its source traceback in debug mode.
    fn new_handle(
        &self,
        py: Python<'_>,
        (callback, args, context): (Bound<'_, PyAny>, Args, Option<Bound<'_, PyAny>>),
        debug: bool,
        timer: Option<TimerState>,
    ) -> PyResult<Handle> {
        Handle::new(
            py,
            callback.unbind(),
            args,
            context.map(Bound::unbind),
            self.source_traceback(py, debug)?,
            timer,
        )
    }

    fn push_ready(&self, py: Python<'_>, handle: &Py<Handle>) {
        self.state
            .lock()
            .ready
            .push_back(Ready::Callback(handle.clone_ref(py)));
    }

    fn schedule_timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        self.check_closed()?;
        let debug = self.debug.load(Ordering::Relaxed);
        if debug {
            self.check_thread()?;
            self.check_callback(&callback, "call_at")?;
        }
        let timer = if debug {
            let state = TimerState::new(when, self.timers_cancelled.clone());
            let base = self.new_handle(py, (callback, args, context), debug, Some(state))?;
            Py::new(py, PyClassInitializer::from(base).add_subclass(TimerHandle))?
        } else {
            self.spare_handles.take_timer(
                py,
                when,
                (callback.unbind(), args, context.map(Bound::unbind)),
                &self.timers_cancelled,
            )?
        };
        hide_while_queued(timer.bind(py).as_super());
        let as_handle: Py<Handle> = timer.clone_ref(py).into_bound(py).into_super().unbind();
        self.state.lock().timers.push(when, as_handle);
        Ok(timer)
    }

    /// A handle for `call_soon`/`call_soon_threadsafe`, checked as `method` does it (the
    /// thread check only for `call_soon`), hidden from the collector until it runs.
    fn queued_handle<'py>(
        &self,
        method: &str,
        callback: Bound<'py, PyAny>,
        args: Args,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = callback.py();
        self.check_closed()?;
        let debug = self.debug.load(Ordering::Relaxed);
        if debug {
            if method == "call_soon" {
                self.check_thread()?;
            }
            self.check_callback(&callback, method)?;
        }
        let handle = if debug {
            Py::new(
                py,
                self.new_handle(py, (callback, args, context), debug, None)?,
            )?
        } else {
            self.spare_handles
                .take(py, callback.unbind(), args, context.map(Bound::unbind))?
        };
        hide_while_queued(handle.bind(py));
        Ok(handle)
    }

    /// `call_soon` (entered through `fastcall.rs`).
    pub fn schedule_soon<'py>(
        &self,
        callback: Bound<'py, PyAny>,
        args: Args,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = callback.py();
        let handle = self.queued_handle("call_soon", callback, args, context)?;
        self.push_ready(py, &handle);
        Ok(handle.into_bound(py))
    }

    /// `call_soon_threadsafe`: like `call_soon`, from any thread; wakes the loop if asleep.
    pub fn schedule_threadsafe<'py>(
        &self,
        callback: Bound<'py, PyAny>,
        args: Args,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = callback.py();
        let handle = self.queued_handle("call_soon_threadsafe", callback, args, context)?;
        let waker = {
            let mut state = self.state.lock();
            state.ready.push_back(Ready::Callback(handle.clone_ref(py)));
            if self.sleeping.swap(false, Ordering::SeqCst) {
                state.waker.clone()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            // A failed wake-up (only if the loop closed meanwhile) loses nothing.
            let _ = waker.wake();
        }
        Ok(handle.into_bound(py))
    }

    /// `call_later`: `callback(*args)` after `delay` seconds.
    pub fn schedule_later<'py>(
        &self,
        delay: Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Args,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let py = delay.py();
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = clock::monotonic();
        let is_number = delay.is_instance_of::<PyFloat>() || delay.is_instance_of::<PyInt>();
        let when = match delay.extract::<f64>() {
            Ok(delay) if is_number => now + delay,
            // Anything else adds the way the stdlib's `self.time() + delay` does, with its
            // errors (numpy scalars work, strings raise the usual TypeError).
            _ => PyFloat::new(py, now).add(&delay)?.extract::<f64>()?,
        };
        self.schedule_timer(py, when, callback, args, context)
            .map(|timer| timer.into_bound(py))
    }

    /// `call_at`: like `call_later`, with an absolute time on the loop clock.
    pub fn schedule_at<'py>(
        &self,
        when: Bound<'py, PyAny>,
        callback: Bound<'py, PyAny>,
        args: Args,
        context: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let py = when.py();
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        // The stdlib accepts any object here and fails when the heap compares it with
        // another deadline; we fail at once, with that comparison's error. (An object that
        // converts to float but does not compare with one fails too, as it would there.)
        if !(when.is_instance_of::<PyFloat>() || when.is_instance_of::<PyInt>()) {
            when.lt(0.0)?;
        }
        let when: f64 = when.extract().map_err(|_| {
            let name = when
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "object".into());
            PyTypeError::new_err(format!(
                "'<' not supported between instances of '{name}' and 'float'"
            ))
        })?;
        self.schedule_timer(py, when, callback, args, context)
            .map(|timer| timer.into_bound(py))
    }

    /// `{"loop": self}`, while the loop runs.
    fn running_loop_keyword<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyDict>> {
        let kwargs = self.loop_keyword.lock();
        kwargs.as_ref().map(|kwargs| kwargs.bind(py).clone())
    }

    /// `create_future`: `asyncio.Future(loop=self)`.
    pub fn new_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        static FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static LOOP_KEYWORD: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
        let py = slf.py();
        let future = FUTURE.import(py, "asyncio.futures", "Future")?;
        if let Some(kwargs) = slf.get().running_loop_keyword(py) {
            return call_with_dict(future, PyTuple::empty(py), &kwargs);
        }
        let keywords =
            LOOP_KEYWORD.get_or_init(py, || PyTuple::new(py, ["loop"]).unwrap().unbind());
        call_with_keywords(future, &[], keywords.bind(py), &[slf.as_any()])
    }

    /// `create_task` without a task factory and outside debug mode: `asyncio.Task(coro,
    /// loop=self, name=name, context=context)`. Anything else goes to the Python method
    /// `_create_task_general` (factories, debug tracebacks, per-version details).
    pub fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        static TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static KEYWORDS: PyOnceLock<[Py<PyTuple>; 4]> = PyOnceLock::new();
        let py = slf.py();
        let this = slf.get();
        if this.debug.load(Ordering::Relaxed) || lock(&this.task_factory).is_some() {
            return slf.call_method1(
                intern!(slf.py(), "_create_task_general"),
                (coro, name, context),
            );
        }
        this.check_closed()?;
        let task = TASK.import(py, "asyncio.tasks", "Task")?;
        if name.is_none() && context.is_none() {
            if let Some(kwargs) = this.running_loop_keyword(py) {
                return call_with_dict(task, PyTuple::new(py, [coro])?, &kwargs);
            }
        }
        // Only the keywords given: each one costs CPython a dictionary entry and its parsing.
        let keywords = KEYWORDS.get_or_init(py, || {
            [
                &["loop"][..],
                &["loop", "name"],
                &["loop", "context"],
                &["loop", "name", "context"],
            ]
            .map(|names| PyTuple::new(py, names).unwrap().unbind())
        });
        let which = usize::from(name.is_some()) | usize::from(context.is_some()) << 1;
        let mut values = [slf.as_any(); 3];
        let mut count = 1;
        for value in [name, context].into_iter().flatten() {
            values[count] = value;
            count += 1;
        }
        call_with_keywords(task, &[coro], keywords[which].bind(py), &values[..count])
    }

    /// Registers a transport's fd with the poller.
    pub fn register_transport(&self, py: Python<'_>, transport: IoTransport) -> PyResult<()> {
        let outcome = {
            let mut state = self.state.lock();
            let State {
                watchers, registry, ..
            } = &mut *state;
            match registry {
                Some(registry) => watchers.add_transport(registry, transport),
                None => return Err(closed_loop_error()),
            }
        };
        match outcome {
            Ok(replaced) => {
                for handle in replaced {
                    Handle::cancel(handle.bind(py))?;
                }
                Ok(())
            }
            Err(err) => Err(os_error(py, err)),
        }
    }

    /// Forgets a transport's fd (the transport closes its socket next).
    pub fn deregister_transport(&self, fd: RawFd) {
        let removed = {
            let mut state = self.state.lock();
            let State {
                watchers, registry, ..
            } = &mut *state;
            registry
                .as_ref()
                .and_then(|registry| watchers.remove_transport(registry, fd))
        };
        drop(removed);
    }

    /// Queues a transport's readiness to be handled in the next batch.
    pub fn queue_transport(&self, transport: IoTransport, readable: bool, writable: bool) {
        self.state.lock().ready.push_back(Ready::Transport {
            transport,
            readable,
            writable,
            read_closed: false,
        });
    }

    /// Queues the start of a new transport's reading, right behind its `connection_made`.
    pub fn queue_start_reading(&self, transport: IoTransport) {
        self.state
            .lock()
            .ready
            .push_back(Ready::StartReading(transport));
    }

    /// Adds or replaces the reader/writer of `fileobj`; `after_not_ready`: the caller just
    /// found the fd not ready on that side, so a parked registration serves as it is.
    fn add_watcher(
        &self,
        fileobj: &Bound<'_, PyAny>,
        side: Side,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        after_not_ready: bool,
    ) -> PyResult<Py<Handle>> {
        let py = fileobj.py();
        self.check_closed()?;
        let Some(fd) = fileobj_to_fd(fileobj)? else {
            return Err(PyOverflowError::new_err(
                "Python int too large to convert to C int",
            ));
        };
        let call = (callback, Args::Tuple(args.unbind()), None);
        let handle = Py::new(py, self.new_handle(py, call, false, None)?)?;
        show_handle(handle.bind(py));
        let installed = handle.clone_ref(py);
        let outcome = {
            let mut state = self.state.lock();
            let State {
                watchers, registry, ..
            } = &mut *state;
            match registry {
                Some(registry) if after_not_ready => watchers.unpark(registry, fd, side, handle),
                Some(registry) => watchers.add(registry, fd, side, handle),
                None => Err((std::io::Error::from_raw_os_error(libc::EBADF), handle)),
            }
        };
        match outcome {
            Ok(previous) => {
                if let Some(previous) = previous {
                    Handle::cancel(previous.bind(py))?;
                }
                Ok(installed)
            }
            Err((err, _handle)) => Err(os_error(py, err)),
        }
    }

    fn remove_watcher(&self, fileobj: &Bound<'_, PyAny>, side: Side) -> PyResult<bool> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(false);
        }
        let Some(fd) = fileobj_to_fd(fileobj)? else {
            return Ok(false);
        };
        let removed = {
            let mut state = self.state.lock();
            let State {
                watchers, registry, ..
            } = &mut *state;
            match registry {
                Some(registry) => watchers.remove(registry, fd, side),
                None => None,
            }
        };
        Ok(match removed {
            Some(handle) => {
                Handle::cancel(handle.bind(fileobj.py()))?;
                true
            }
            None => false,
        })
    }

    /// How long this iteration may block in poll (marking the loop asleep if at all), or
    /// `Skip` when a zero-timeout poll cannot find anything to act on.
    fn poll_timeout(&self, garbage: &mut Vec<Py<Handle>>) -> PollPlan {
        let mut state = self.state.lock();
        let cancelled = self.timers_cancelled.load(Ordering::Acquire);
        let is_cancelled = |h: &Py<Handle>| h.get().is_cancelled();
        if !state
            .timers
            .compact_if_mostly_cancelled(cancelled, is_cancelled, garbage)
        {
            state.timers.drop_cancelled_heads(is_cancelled, garbage);
        }
        let timeout = if !state.ready.is_empty() || self.stopping.load(Ordering::Acquire) {
            Some(Duration::ZERO)
        } else {
            state.timers.next_deadline().map(|when| {
                let delay = when - clock::monotonic();
                if delay > 0.0 {
                    Duration::from_secs_f64(delay.min(MAX_POLL_TIMEOUT))
                } else {
                    Duration::ZERO // also NaN: the stdlib runs such a timer at once
                }
            })
        };
        if timeout != Some(Duration::ZERO) {
            self.sleeping.store(true, Ordering::SeqCst);
            state.polls_skipped = 0;
            return PollPlan::Poll(timeout);
        }
        // Not blocking, and nothing registered but the waker (which only matters to a
        // blocking poll) and the signal socket: the syscall would find nothing to act on.
        // The signal socket is still read every `MAX_POLLS_SKIPPED + 1` iterations, so a
        // busy loop runs its signal handlers promptly.
        if state.polls_skipped < MAX_POLLS_SKIPPED && !state.watchers.any_except(state.signal_fd) {
            state.polls_skipped += 1;
            return PollPlan::Skip;
        }
        state.polls_skipped = 0;
        PollPlan::Poll(timeout)
    }

    /// Polls and queues the callbacks of ready fds.
    fn poll_io(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<()> {
        let mut poller_slot = lock(&self.poller);
        let Some(poller) = poller_slot.as_mut() else {
            return Err(closed_loop_error());
        };
        let outcome = if timeout == Some(Duration::ZERO) {
            poller.poll(timeout)
        } else {
            py.detach(|| poller.poll(timeout))
        };
        self.sleeping.store(false, Ordering::SeqCst);
        match outcome {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {
                drop(poller_slot);
                // Ctrl-C while blocked: let Python's signal handlers run (and raise) now.
                return py.check_signals();
            }
            Err(err) => return Err(os_error(py, err)),
        }
        {
            let mut state = self.state.lock();
            let State {
                watchers,
                rearm,
                stale,
                ready,
                ..
            } = &mut *state;
            for event in poller.events() {
                if event.token() == WAKER_TOKEN {
                    continue;
                }
                match watchers.ready(py, event, ready) {
                    Wake::Nothing => {}
                    Wake::Rearm => rearm.push(event.token().0 as RawFd),
                    Wake::Stale => stale.push(event.token().0 as RawFd),
                }
            }
        }
        drop(poller_slot);
        if timeout != Some(Duration::ZERO) {
            py.check_signals()?;
        }
        Ok(())
    }

    /// Moves due timers to the ready queue and takes the batch this iteration runs.
    fn take_batch(&self, garbage: &mut Vec<Py<Handle>>) -> VecDeque<Ready> {
        let mut state = self.state.lock();
        let State {
            timers, due, ready, ..
        } = &mut *state;
        // Popped first, then marked: popping reads only the heap, and marking a timer
        // reads the handle, which many due timers (scheduled long ago, in another order)
        // have let fall out of the cache: loading a few ahead hides that wait. (No timers,
        // no clock reading: loops of task steps and I/O often have none.)
        if !timers.is_empty() {
            let now = clock::monotonic();
            while let Some(timer) = timers.pop_due(now) {
                due.push(Some(timer));
            }
        }
        for i in 0..due.len() {
            if let Some(Some(ahead)) = due.get(i + PREFETCH_AHEAD) {
                prefetch_object(ahead.as_any());
            }
            let Some(timer) = due[i].take() else { continue };
            timer.get().unschedule();
            if timer.get().is_cancelled() {
                garbage.push(timer);
            } else {
                ready.push_back(Ready::Callback(timer));
            }
        }
        due.clear();
        // A burst of due timers leaves no large buffer behind.
        due.shrink_to(DUE_BUFFER_KEPT);
        let mut batch = std::mem::take(&mut state.spare);
        std::mem::swap(&mut batch, &mut state.ready);
        batch
    }

    /// Whether a stream write now is made by a callback of this loop's batch, and so may be
    /// held until the callback returns.
    pub fn is_dispatching(&self) -> bool {
        self.dispatching.load(Ordering::Relaxed)
    }

    /// A buffer for a transport's held writes.
    pub fn take_hold_buffer(&self) -> Vec<u8> {
        self.spare_hold_buffers.lock().pop().unwrap_or_default()
    }

    /// Takes back a buffer of held writes, once sent; a few are kept (a callback's writes
    /// usually go to one transport, so one buffer goes round).
    pub fn give_back_hold_buffer(&self, mut buffer: Vec<u8>) {
        const KEPT: usize = 16;
        const LARGEST_KEPT: usize = 64 * 1024;
        if buffer.capacity() == 0 || buffer.capacity() > LARGEST_KEPT {
            return;
        }
        buffer.clear();
        let mut spares = self.spare_hold_buffers.lock();
        if spares.len() < KEPT {
            spares.push(buffer);
        }
    }

    /// `transport` holds writes of the running callback: send them when it returns.
    pub fn hold_writes_of(&self, transport: Py<StreamCore>) {
        self.held_writes.lock().push(transport);
        self.writes_held.store(true, Ordering::Relaxed);
    }

    /// Sends the writes held by the callback that just returned. A transport's errors are
    /// its own (it reports them and closes); only exit exceptions, or errors of the
    /// exception handler itself, come out.
    #[inline(never)] // off the path of batches with no writes held
    fn send_held_writes(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let Some(transport) = self.held_writes.lock().pop() else {
                self.writes_held.store(false, Ordering::Relaxed);
                return Ok(());
            };
            if let Err(err) = StreamCore::send_held(transport.bind(py)) {
                if is_exit_exception(py, &err) {
                    return Err(err);
                }
                let context = PyDict::new(py);
                context.set_item("message", "Exception in transport I/O")?;
                context.set_item("exception", err.into_value(py))?;
                slf.call_method1(intern!(py, "call_exception_handler"), (context,))?;
            }
        }
    }

    /// Runs one batch; on an exception that must propagate, puts the rest back in front.
    /// What a callback wrote to stream transports is sent as it returns (several writes of
    /// one callback leave in one `send`).
    fn run_batch(&self, slf: &Bound<'_, Self>, batch: &mut VecDeque<Ready>) -> PyResult<()> {
        let py = slf.py();
        let debug = self.debug.load(Ordering::Relaxed);
        let slow_callback_duration = if debug {
            slf.getattr(intern!(slf.py(), "slow_callback_duration"))?
                .extract::<f64>()?
        } else {
            f64::INFINITY
        };
        while let Some(entry) = batch.pop_front() {
            // A handle's first touch here is often a cache miss (timers scheduled long
            // ago), and so is its context's: load them a few callbacks ahead.
            if let Some(Ready::Callback(ahead)) = batch.get(PREFETCH_AHEAD) {
                prefetch_object(ahead.as_any());
            }
            if let Some(Ready::Callback(ahead)) = batch.get(PREFETCH_AHEAD / 2) {
                ahead.get().prefetch_context();
            }
            let handle = match entry {
                Ready::Callback(handle) => handle,
                Ready::Transport {
                    transport,
                    readable,
                    writable,
                    read_closed,
                } => {
                    // Transports report their own errors; only exit exceptions come out.
                    let mut outcome = transport.on_ready(py, readable, writable, read_closed);
                    if let Err(err) = outcome {
                        // A transport bug must not stop the loop: report it like a callback's.
                        outcome = if is_exit_exception(py, &err) {
                            Err(err)
                        } else {
                            let context = PyDict::new(py);
                            context.set_item("message", "Exception in transport I/O")?;
                            context.set_item("exception", err.into_value(py))?;
                            slf.call_method1(
                                intern!(slf.py(), "call_exception_handler"),
                                (context,),
                            )
                            .map(drop)
                        };
                    }
                    if let Err(err) = outcome {
                        let mut state = self.state.lock();
                        while let Some(rest) = batch.pop_back() {
                            state.ready.push_front(rest);
                        }
                        return Err(err);
                    }
                    continue;
                }
                Ready::StartReading(transport) => {
                    transport.start_reading(py);
                    continue;
                }
            };
            let h = handle.get();
            if h.is_cancelled() {
                self.spare_handles.retire(py, handle);
                continue;
            }
            let started = if debug { clock::monotonic() } else { 0.0 };
            self.dispatching.store(true, Ordering::Relaxed);
            let mut outcome = h.run(py);
            self.dispatching.store(false, Ordering::Relaxed);
            if let Err(err) = outcome {
                outcome = if is_exit_exception(py, &err) {
                    Err(err)
                } else {
                    // into_value attaches the traceback (not yet on the value on 3.11).
                    slf.call_method1(
                        intern!(slf.py(), "_report_callback_error"),
                        (&handle, err.into_value(py)),
                    )
                    .map(drop)
                };
            }
            if outcome.is_ok() && debug {
                let took = clock::monotonic() - started;
                if took >= slow_callback_duration {
                    outcome = slf
                        .call_method1(intern!(py, "_warn_slow_callback"), (&handle, took))
                        .map(drop);
                }
            }
            if self.writes_held.load(Ordering::Relaxed) {
                let sent = self.send_held_writes(slf);
                if outcome.is_ok() {
                    outcome = sent;
                }
            }
            self.spare_handles.retire(py, handle);
            if let Err(err) = outcome {
                let mut state = self.state.lock();
                while let Some(rest) = batch.pop_back() {
                    state.ready.push_front(rest);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Re-arms the fds whose watchers ran, and keeps the emptied batch's buffer (if the
    /// iteration got as far as taking one) as the next iteration's ready queue.
    fn rearm_and_recycle(&self, batch: Option<VecDeque<Ready>>) {
        let mut state = self.state.lock();
        let State {
            watchers,
            rearm,
            stale,
            registry,
            spare,
            ..
        } = &mut *state;
        if !rearm.is_empty() {
            if let Some(registry) = registry {
                for fd in rearm.drain(..) {
                    watchers.rearm(registry, fd);
                }
            }
            rearm.clear();
        }
        if !stale.is_empty() {
            if let Some(registry) = registry {
                for fd in stale.drain(..) {
                    watchers.drop_if_parked(registry, fd);
                }
            }
            stale.clear();
        }
        if let Some(batch) = batch.filter(VecDeque::is_empty) {
            // `take_batch` took the spare buffer, leaving a deque that owns no memory:
            // forgetting it frees nothing and skips its drop (most of this function's
            // cost for a loop running one callback per iteration).
            let taken = std::mem::replace(spare, batch);
            if taken.capacity() == 0 {
                std::mem::forget(taken);
            }
        }
    }

    /// Lets go of the cancelled timers taken out of the heap (`garbage`, left empty).
    fn retire_timers(&self, py: Python<'_>, garbage: &mut Vec<Py<Handle>>) {
        // Most iterations have none: skip the (out-of-line) drop of an iterator.
        if !garbage.is_empty() {
            for timer in garbage.drain(..) {
                timer.get().unschedule();
                self.spare_handles.retire(py, timer);
            }
        }
    }

    fn run_once(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut garbage = Vec::new();
        let plan = self.poll_timeout(&mut garbage);
        self.retire_timers(py, &mut garbage);
        let polled = match plan {
            PollPlan::Poll(timeout) => self.poll_io(py, timeout),
            PollPlan::Skip => Ok(()),
        };
        let mut batch = match polled {
            Ok(()) => self.take_batch(&mut garbage),
            Err(err) => {
                self.rearm_and_recycle(None);
                return Err(err);
            }
        };
        self.retire_timers(py, &mut garbage);
        discard(garbage);
        let outcome = self.run_batch(slf, &mut batch);
        self.rearm_and_recycle(Some(batch));
        outcome
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let (poller, registry, waker) = Poller::new().map_err(|err| os_error(py, err))?;
        Ok(Self {
            state: GilCell::new(State {
                ready: VecDeque::new(),
                spare: VecDeque::new(),
                timers: TimerHeap::default(),
                watchers: FdWatchers::default(),
                rearm: Vec::new(),
                stale: Vec::new(),
                due: Vec::new(),
                registry: Some(registry),
                waker: Some(waker),
                signal_fd: None,
                polls_skipped: 0,
            }),
            poller: Mutex::new(Some(poller)),
            debug: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            running_thread: AtomicU64::new(0),
            timers_cancelled: Arc::new(AtomicUsize::new(0)),
            task_factory: Mutex::new(None),
            spare_handles: HandlePool::new(),
            loop_keyword: GilCell::new(None),
            dispatching: AtomicBool::new(false),
            held_writes: GilCell::new(Vec::new()),
            writes_held: AtomicBool::new(false),
            spare_hold_buffers: GilCell::new(Vec::new()),
        })
    }

    /// The loop clock: `time.monotonic()`, at full resolution.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    fn get_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// Sets the debug flag only; `Loop.set_debug` adds coroutine origin tracking.
    fn _set_debug_flag(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.running_thread.load(Ordering::Acquire) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stop after the current iteration (or after one iteration if not running yet).
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// `threading.get_ident()` of the running thread, or None.
    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.running_thread.load(Ordering::Acquire) {
            0 => None,
            ident => Some(ident),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(factory) = self.task_factory.try_lock() {
            visit.call(&*factory)?;
        }
        if let Some(kwargs) = self.loop_keyword.try_lock() {
            visit.call(&*kwargs)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let factory = lock(&self.task_factory).take();
        drop(factory);
        let kwargs = self.loop_keyword.lock().take();
        drop(kwargs);
    }

    /// The task factory `create_task` uses, or None (the stdlib's attribute).
    #[getter(_task_factory)]
    fn task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        lock(&self.task_factory).as_ref().map(|f| f.clone_ref(py))
    }

    #[setter(_task_factory)]
    fn set_task_factory_slot(&self, factory: Option<Py<PyAny>>) {
        let previous = std::mem::replace(&mut *lock(&self.task_factory), factory);
        drop(previous);
    }

    /// A snapshot of the callbacks waiting to run (the stdlib's `loop._ready`; read-only:
    /// changing the list does not change the loop).
    #[getter]
    fn _ready(&self, py: Python<'_>) -> Vec<Py<Handle>> {
        self.state
            .lock()
            .ready
            .iter()
            .filter_map(|entry| match entry {
                Ready::Callback(handle) => Some(handle.clone_ref(py)),
                Ready::Transport { .. } | Ready::StartReading(_) => None,
            })
            .collect()
    }

    /// A snapshot of the timers in the heap, cancelled ones included (the stdlib's
    /// `loop._scheduled`, in heap order; read-only).
    #[getter]
    fn _scheduled(&self, py: Python<'_>) -> Vec<Py<Handle>> {
        self.state
            .lock()
            .timers
            .iter()
            .map(|timer| timer.clone_ref(py))
            .collect()
    }

    /// Tells the loop which watched fd is the signal socket (`-1`: none): its readiness
    /// alone is not worth a poll per iteration while callbacks are ready.
    fn _set_signal_fd(&self, fd: RawFd) {
        self.state.lock().signal_fd = (fd >= 0).then_some(fd);
    }

    /// Number of callbacks waiting to run (the stdlib's `len(loop._ready)`).
    fn _ready_count(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// Number of timers in the heap, cancelled ones included (`len(loop._scheduled)`).
    fn _timer_count(&self) -> usize {
        self.state.lock().timers.len()
    }

    /// Runs iterations until `stop()`; `Loop.run_forever` does the setup around it.
    fn _run_loop(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let kwargs = PyDict::new(slf.py());
        kwargs.set_item(intern!(slf.py(), "loop"), slf)?;
        *this.loop_keyword.lock() = Some(kwargs.unbind());
        this.running_thread.store(thread_ident(), Ordering::Release);
        let outcome = loop {
            if let Err(err) = this.run_once(slf) {
                break Err(err);
            }
            if this.stopping.load(Ordering::Acquire) {
                break Ok(());
            }
        };
        this.stopping.store(false, Ordering::Release);
        this.running_thread.store(0, Ordering::Release);
        let kwargs = this.loop_keyword.lock().take();
        drop(kwargs);
        outcome
    }

    /// One iteration of the loop.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().run_once(slf)
    }

    /// Wakes the loop from a blocking poll (the stdlib's `_write_to_self`).
    fn _write_to_self(&self) {
        let waker = self.state.lock().waker.clone();
        if let Some(waker) = waker {
            let _ = waker.wake();
        }
    }

    /// Start watching `fd` for reading; `callback(*args)` runs while it is readable.
    /// Returns the handle (as the stdlib's `_add_reader` does; `Loop.add_reader` drops it).
    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        &self,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watcher(fd, Side::Read, callback, args, false)
    }

    /// Stop watching `fd` for reading; returns whether it was watched.
    fn remove_reader(&self, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(fd, Side::Read)
    }

    /// For the `sock_*` one-shot waits: `add_reader`/`add_writer` (`write` picks the side)
    /// right after a call on `fd` found it not ready, reusing a parked registration.
    #[pyo3(signature = (write, fd, callback, *args))]
    fn _unpark_watcher(
        &self,
        write: bool,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let side = if write { Side::Write } else { Side::Read };
        self.add_watcher(fd, side, callback, args, true)
    }

    /// The running callback of `fd`'s watcher read it until it would block (as the accept
    /// loop does): the edge-triggered registration will report the next readiness, so the
    /// re-arming after the callback (an `epoll_ctl`) is skipped.
    fn _fd_drained(&self, fd: RawFd) {
        self.state.lock().rearm.retain(|&woken| woken != fd);
    }

    /// For the `sock_*` one-shot waits: removes the reader (or writer) of the int `fd`
    /// and leaves its epoll registration for `_unpark_watcher`. Returns whether one was
    /// removed.
    fn _park_watcher(&self, py: Python<'_>, write: bool, fd: RawFd) -> PyResult<bool> {
        let side = if write { Side::Write } else { Side::Read };
        let parked = self.state.lock().watchers.park(fd, side);
        Ok(match parked {
            Some(handle) => {
                Handle::cancel(handle.bind(py))?;
                true
            }
            None => false,
        })
    }

    /// Start watching `fd` for writing; `callback(*args)` runs while it is writable.
    /// Returns the handle (as the stdlib's `_add_writer` does; `Loop.add_writer` drops it).
    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        &self,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watcher(fd, Side::Write, callback, args, false)
    }

    /// Stop watching `fd` for writing; returns whether it was watched.
    fn remove_writer(&self, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_watcher(fd, Side::Write)
    }

    /// Marks the loop closed, drops every queued callback and timer and watcher, and
    /// closes the poller's fds. `Loop.close` does the checks and the executor.
    fn _close_core(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Release);
        let (ready, spare, timers, watched) = {
            let mut state = self.state.lock();
            let ready = std::mem::take(&mut state.ready);
            let spare = std::mem::take(&mut state.spare);
            let timers = state.timers.drain_all();
            let watched = match state.registry.take() {
                Some(registry) => state.watchers.clear(&registry),
                None => (Vec::new(), Vec::new()),
            };
            state.waker = None;
            (ready, spare, timers, watched)
        };
        drop(lock(&self.poller).take());
        for timer in timers {
            timer.get().unschedule();
            leave_queue(py, timer);
        }
        for entry in ready.into_iter().chain(spare) {
            match entry {
                Ready::Callback(handle) => leave_queue(py, handle),
                transport => drop(transport),
            }
        }
        drop(watched);
        self.spare_handles.clear(py);
    }
}
