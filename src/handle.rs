//! `Handle` and `TimerHandle`: a scheduled callback, as returned by `call_soon` and
//! `call_later`.
//!
//! A handle owns its callback, the positional arguments (up to two held inline, so
//! scheduling allocates no tuple: `call_args.rs`) and the `contextvars.Context` it
//! runs in. `cancel()` marks it and drops the callback and arguments at once, as the stdlib
//! does, so a cancelled timer still waiting in the heap keeps nothing alive.
//!
//! # Implementation notes
//! The callback is called with `PyObject_Vectorcall` inside `PyContext_Enter`/`Exit`:
//! that is what `Context.run(callback, *args)` does, minus building an argument tuple.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::sync::PyOnceLock;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::PyTuple;
use pyo3::{ffi, IntoPyObjectExt};

use crate::call_args::Args;
use crate::gil_cell::GilCell;
use crate::timers::Sequenced;
use pyo3::{PyTraverseError, PyVisit};

/// The callback and arguments of a handle that has not been cancelled.
struct Call {
    callback: Py<PyAny>,
    args: Args,
}

impl Call {
    /// Lets go of the callback and arguments with a plain decref (no deferral to PyO3's
    /// pool, which paths entered without its trampoline would get from dropping a `Py`).
    fn release(self, py: Python<'_>) {
        drop(self.callback.into_bound(py));
        self.args.release(py);
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (none of ours
/// panic while holding it; this just keeps a panic from turning into a second one).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a handle holds that cancelling or the garbage collector may take away.
struct Slots {
    call: Option<Call>,
    /// `None` only once the garbage collector has cleared the handle.
    context: Option<Py<PyAny>>,
    /// In debug mode, the repr taken when the handle was cancelled, so that logs still
    /// name the callback it no longer holds (the stdlib's `_repr`).
    cancelled_repr: Option<String>,
}

impl Slots {
    /// `callback(*args)` in `context`, or in a copy of the current context.
    #[inline(always)]
    fn holding(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(context) => context,
            None => copy_current_context(py)?,
        };
        Ok(Self {
            call: Some(Call { callback, args }),
            context: Some(context),
            cancelled_repr: None,
        })
    }
}

/// A callback scheduled with `call_soon`, `call_soon_threadsafe` or a reader/writer.
///
/// Freed handles are kept for reuse (`freelist`), as uvloop's are: a busy loop makes and
/// frees one per callback, and an allocation that skips the collector's allocator also
/// leaves its young-generation count alone, so bursts of wake-ups (a thousand connections
/// ready at once) no longer set off collections. A reused handle starts untracked, which
/// is how the loop wants a queued one; `show_handle` tracks the others.
#[pyclass(
    subclass,
    frozen,
    weakref,
    freelist = 1024,
    module = "ferroloop._ferroloop"
)]
pub struct Handle {
    slots: GilCell<Slots>,
    cancelled: AtomicBool,
    /// The stack where the handle was created, kept only in debug mode (stdlib's
    /// `_source_traceback`).
    source_traceback: Option<Py<PyAny>>,
    /// Set for timers (`TimerHandle`).
    timer: Option<TimerState>,
}

/// What a timer adds to a handle: its deadline and its place in the loop's heap.
pub struct TimerState {
    /// The deadline's bits (`f64::to_bits`): set anew when the loop reuses the timer.
    when: AtomicU64,
    /// True while the timer sits in its loop's heap.
    scheduled: AtomicBool,
    /// Its place in scheduling order, given by the heap (`Sequenced`).
    seq: AtomicU64,
    /// The loop's count of cancelled timers still in its heap (drives compaction).
    heap_cancelled: Arc<AtomicUsize>,
}

impl TimerState {
    pub fn new(when: f64, heap_cancelled: Arc<AtomicUsize>) -> Self {
        Self {
            when: AtomicU64::new(when.to_bits()),
            scheduled: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            heap_cancelled,
        }
    }
}

/// A timer's place in its loop's heap among equal deadlines (set once per scheduling,
/// while the timer is out of the heap).
impl Sequenced for Py<Handle> {
    fn set_seq(&self, seq: u64) {
        if let Some(timer) = &self.get().timer {
            timer.seq.store(seq, Ordering::Relaxed);
        }
    }

    fn seq(&self) -> u64 {
        self.get()
            .timer
            .as_ref()
            .map_or(0, |timer| timer.seq.load(Ordering::Relaxed))
    }
}

impl Handle {
    /// A handle for `callback(*args)` in `context`, or in a copy of the current context.
    pub fn new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
        source_traceback: Option<Py<PyAny>>,
        timer: Option<TimerState>,
    ) -> PyResult<Self> {
        let slots = Slots::holding(py, callback, args, context)?;
        Ok(Self::holding(slots, source_traceback, timer))
    }

    /// A handle around `slots`, not cancelled.
    fn holding(
        slots: Slots,
        source_traceback: Option<Py<PyAny>>,
        timer: Option<TimerState>,
    ) -> Self {
        Self {
            slots: GilCell::new(slots),
            cancelled: AtomicBool::new(false),
            source_traceback,
            timer,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the handle cancelled, returning whether it already was.
    fn mark_cancelled(&self) -> bool {
        let was_cancelled = self.cancelled.swap(true, Ordering::AcqRel);
        if let Some(timer) = &self.timer {
            if !was_cancelled && timer.scheduled.load(Ordering::Acquire) {
                timer.heap_cancelled.fetch_add(1, Ordering::AcqRel);
            }
        }
        was_cancelled
    }

    /// The deadline of a timer (NaN for a plain handle, which the loop never asks).
    pub fn when(&self) -> f64 {
        self.timer
            .as_ref()
            .map_or(f64::NAN, |t| f64::from_bits(t.when.load(Ordering::Relaxed)))
    }

    /// True while a timer sits in its loop's heap.
    pub fn is_scheduled(&self) -> bool {
        self.timer
            .as_ref()
            .is_some_and(|t| t.scheduled.load(Ordering::Acquire))
    }

    /// Called when the loop's heap lets go of a timer; keeps the cancelled count exact.
    pub fn unschedule(&self) {
        if let Some(timer) = &self.timer {
            if timer.scheduled.swap(false, Ordering::AcqRel) && self.is_cancelled() {
                timer.heap_cancelled.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Calls the callback in the handle's context. A cancelled handle does nothing.
    pub fn run(&self, py: Python<'_>) -> PyResult<()> {
        // Borrowed out as `Bound`s: their drop is a plain decref.
        let (callback, args, context) = match &*self.slots.lock() {
            Slots {
                call: Some(call),
                context: Some(context),
                ..
            } => (
                call.callback.bind(py).clone(),
                call.args.bind(py),
                context.bind(py).clone(),
            ),
            _ => return Ok(()),
        };
        // SAFETY: attached; `context` is alive through our clone.
        if unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } == 0 {
            // Any object with a `run` method will do, as on the stdlib loop.
            let mut call = vec![callback];
            call.extend(args.into_tuple(py)?.iter());
            return context
                .call_method1(pyo3::intern!(py, "run"), PyTuple::new(py, call)?)
                .map(drop);
        }
        let context = context.as_ptr();
        // SAFETY: we are attached to the interpreter (`py`). `context` is a live
        // contextvars.Context (checked above); `callback` and `args` are kept alive by our
        // clones for the whole call. Every entered context is exited.
        unsafe {
            if ffi::PyContext_Enter(context) < 0 {
                return Err(PyErr::fetch(py));
            }
            let result = args.vectorcall(callback.as_ptr());
            let outcome = if result.is_null() {
                Err(PyErr::fetch(py))
            } else {
                ffi::Py_DECREF(result);
                Ok(())
            };
            if ffi::PyContext_Exit(context) < 0 {
                return Err(PyErr::fetch(py));
            }
            outcome
        }
    }

    fn callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slots
            .lock()
            .call
            .as_ref()
            .map(|c| c.callback.clone_ref(py))
    }

    /// The arguments as a tuple, or `None` once cancelled.
    fn args_tuple<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        // Borrowed out first: making the tuple may run the collector, which may run Python.
        let args = self.slots.lock().call.as_ref().map(|c| c.args.bind(py));
        args.map(|args| args.into_tuple(py)).transpose()
    }

    /// Starts loading this handle's context into the cache (the handle itself should be
    /// there already).
    pub fn prefetch_context(&self) {
        if let Some(slots) = self.slots.try_lock() {
            if let Some(context) = &slots.context {
                prefetch_object(context);
            }
        }
    }

    fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slots.lock().context.as_ref().map(|c| c.clone_ref(py))
    }
}

/// Takes a new handle out of the garbage collector's view while only the loop's queue or
/// heap needs it: a handle there is alive through the loop's reference, so the collector
/// would only traverse it, at every young collection, to learn nothing. (What it holds
/// stays alive meanwhile, as it must.) `leave_queue` puts it back in view if anyone else
/// still holds it once the loop lets go, so cycles through it are collected as before.
///
/// A context only this handle holds (the copy `call_soon` made) is hidden with it: it is
/// most of what young collections traverse on a busy loop. It is put back in view before
/// the handle can let go of it (`leave_queue`, or the handle's `Drop`), because CPython's
/// `Context` deallocator unlinks it from the collector's list unconditionally, which an
/// untracked object would crash.
pub(crate) fn hide_while_queued(handle: &Bound<'_, Handle>) {
    // SAFETY: attached; `handle` is a live GC object the caller just created. Untracking
    // is always allowed (it only forgoes cycle detection), and PyO3's deallocator untracks
    // through `PyObject_GC_UnTrack`, which accepts an untracked object. The context is
    // hidden only while the handle is its one holder, and tracked again before the
    // handle drops it (`show`).
    unsafe {
        ffi::PyObject_GC_UnTrack(handle.as_ptr().cast());
        if let Some(slots) = handle.get().slots.try_lock() {
            if let Some(context) = &slots.context {
                if ffi::Py_REFCNT(context.as_ptr()) == 1
                    && ffi::PyContext_CheckExact(context.as_ptr()) != 0
                {
                    ffi::PyObject_GC_UnTrack(context.as_ptr().cast());
                }
            }
        }
    }
}

/// Puts a handle that is not queued (a reader or writer) in the collector's view: one
/// reused from the free list starts out of it.
pub(crate) fn show_handle(handle: &Bound<'_, Handle>) {
    show(handle.as_any().as_unbound());
}

/// Puts a handle's context back in the collector's view, if it is one `hide_while_queued`
/// may have hidden: a `contextvars.Context`. (`context=` accepts any object with a `run`
/// method, as on the stdlib loop; tracking calls on an object of a type without collector
/// support would write outside it.)
fn show_context(context: &Py<PyAny>) {
    // SAFETY: the caller holds a reference to `context`; the type check reads its header.
    if unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } != 0 {
        show(context);
    }
}

/// Puts an object (a handle, or a context hidden by `hide_while_queued`) back in the
/// collector's view.
fn show(object: &Py<PyAny>) {
    let ptr = object.as_ptr();
    // SAFETY: the caller holds a reference to `ptr` and is attached (a handle's holders
    // run attached: the loop, and the handle's deallocator). Tracking only an untracked
    // object is what CPython requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
        }
    }
}

/// The loop drops its reference to a handle that left the ready queue or the timer heap.
pub(crate) fn leave_queue(py: Python<'_>, handle: Py<Handle>) {
    let handle = handle.into_bound(py);
    let ptr = handle.as_ptr();
    // SAFETY: attached; `ptr` is live (`handle` holds it until the end of this function).
    // Tracking is restored only on an untracked object, as CPython requires, and only
    // when another holder remains: a handle about to be freed needs none (its `Drop`
    // shows its context).
    unsafe {
        if ffi::Py_REFCNT(ptr) > 1 && ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
            if let Some(slots) = handle.get().slots.try_lock() {
                if let Some(context) = &slots.context {
                    show_context(context);
                }
            }
        }
    }
}

/// Handles the loop has finished with, kept to be refilled: plain ones by `call_soon`,
/// timers by `call_later` and `call_at`.
///
/// Every task step and future callback makes a handle and, an iteration later, frees it;
/// every `asyncio.wait_for` or `timeout()` makes a timer and soon cancels it. Allocating
/// and freeing one through PyO3 (its free list behind a mutex, the object header's
/// re-initialisation, the deallocator's trampoline) cost about a fifth of a `call_soon`.
/// A handle nothing else can reach (the loop holds the only reference, no weak reference
/// exists, it is not a subclass, it keeps no debug traceback) is indistinguishable from a
/// fresh one once emptied, so the loop keeps it instead.
pub(crate) struct HandlePool(GilCell<Spares>);

#[derive(Default)]
struct Spares {
    plain: Vec<Py<Handle>>,
    timers: Vec<Py<TimerHandle>>,
}

/// Of each kind, as many as one iteration's batch usually frees (PyO3's free list keeps
/// as many).
const POOL_CAPACITY: usize = 1024;

/// Which pool an emptied handle goes back to.
enum Spare {
    Plain,
    Timer,
}

impl HandlePool {
    pub fn new() -> Self {
        Self(GilCell::new(Spares::default()))
    }

    /// A plain handle for `callback(*args)` in `context` (or a copy of the current one):
    /// a spare one refilled if there is one, else a new one.
    pub fn take(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let slots = Slots::holding(py, callback, args, context)?;
        let spare = self.0.lock().plain.pop();
        match spare {
            Some(handle) => {
                // The spare's slots are empty: replacing them drops nothing.
                *handle.get().slots.lock() = slots;
                Ok(handle)
            }
            None => Py::new(py, Handle::holding(slots, None, None)),
        }
    }

    /// A timer for `callback(*args)` at `when`, counted in `heap_cancelled` once cancelled
    /// in the heap: a spare one refilled if there is one, else a new one.
    pub fn take_timer(
        &self,
        py: Python<'_>,
        when: f64,
        (callback, args, context): (Py<PyAny>, Args, Option<Py<PyAny>>),
        heap_cancelled: &Arc<AtomicUsize>,
    ) -> PyResult<Py<TimerHandle>> {
        let slots = Slots::holding(py, callback, args, context)?;
        let spare = self.0.lock().timers.pop();
        match spare {
            Some(timer) => {
                let handle = timer.bind(py).as_super().get();
                *handle.slots.lock() = slots;
                if let Some(state) = &handle.timer {
                    state.when.store(when.to_bits(), Ordering::Relaxed);
                    state.scheduled.store(true, Ordering::Release);
                }
                Ok(timer)
            }
            None => {
                let state = TimerState::new(when, heap_cancelled.clone());
                let base = Handle::holding(slots, None, Some(state));
                Py::new(py, PyClassInitializer::from(base).add_subclass(TimerHandle))
            }
        }
    }

    /// The loop lets go of a handle that left the ready queue, or of a timer that left
    /// the heap: kept as a spare if nothing else can reach it, otherwise handed to
    /// `leave_queue`. A timer must have been unscheduled first.
    pub fn retire(&self, py: Python<'_>, handle: Py<Handle>) {
        let handle = handle.into_bound(py);
        let Some(kind) = reusable_kind(&handle) else {
            return leave_queue(py, handle.unbind());
        };
        let this = handle.get();
        let taken = {
            let mut slots = this.slots.lock();
            if let Some(context) = &slots.context {
                show_context(context);
            }
            (
                slots.call.take(),
                slots.context.take(),
                slots.cancelled_repr.take(),
            )
        };
        // Dropped before the handle joins the pool, and as `Bound`s (a plain decref): a
        // callback's `__del__` may schedule another callback, which takes from the pool.
        let (call, context, _repr) = taken;
        if let Some(call) = call {
            call.release(py);
        }
        drop(context.map(|context| context.into_bound(py)));
        this.cancelled.store(false, Ordering::Release);
        // A full pool frees the emptied handle (nothing left in it for `Drop` to show).
        let mut spares = self.0.lock();
        match kind {
            Spare::Plain if spares.plain.len() < POOL_CAPACITY => {
                spares.plain.push(handle.unbind());
            }
            Spare::Timer if spares.timers.len() < POOL_CAPACITY => {
                // SAFETY: `reusable_kind` found the object's type to be exactly
                // `TimerHandle`.
                let timer = unsafe { handle.cast_into_unchecked::<TimerHandle>() };
                spares.timers.push(timer.unbind());
            }
            _ => {}
        }
    }

    /// Frees the spare handles (the loop is closing).
    pub fn clear(&self, py: Python<'_>) {
        let spares = std::mem::take(&mut *self.0.lock());
        for handle in spares.plain {
            drop(handle.into_bound(py));
        }
        for timer in spares.timers {
            drop(timer.into_bound(py));
        }
    }
}

/// Whether only the caller's reference reaches `handle`, and it is a plain `Handle` or
/// `TimerHandle` (not a Python subclass) outside debug mode: one that can be emptied and
/// reused without anyone seeing the difference. If so, which kind it is.
fn reusable_kind(handle: &Bound<'_, Handle>) -> Option<Spare> {
    let py = handle.py();
    let ptr = handle.as_ptr();
    let this = handle.get();
    // SAFETY: attached; `ptr` is a live object (the caller's reference), so its type
    // object is live too. `tp_weaklistoffset` is the offset of the weak reference list
    // pointer inside instances of the type (positive for PyO3's `weakref` classes and
    // their subclasses).
    unsafe {
        if ffi::Py_REFCNT(ptr) != 1 || this.source_traceback.is_some() {
            return None;
        }
        let class = ffi::Py_TYPE(ptr);
        let kind = if class == Handle::type_object_raw(py) && this.timer.is_none() {
            Spare::Plain
        } else if class == TimerHandle::type_object_raw(py) && this.timer.is_some() {
            Spare::Timer
        } else {
            return None;
        };
        let offset = (*class).tp_weaklistoffset;
        if offset <= 0 {
            return None;
        }
        let weakrefs = *(ptr as *const u8)
            .offset(offset)
            .cast::<*mut ffi::PyObject>();
        weakrefs.is_null().then_some(kind)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(context) = &self.slots.get_mut().context {
            show_context(context);
        }
    }
}

fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: attached to the interpreter; PyContext_CopyCurrent returns a new reference
    // or NULL with an exception set.
    unsafe {
        let context = ffi::PyContext_CopyCurrent();
        Bound::from_owned_ptr_or_err(py, context).map(Bound::unbind)
    }
}

/// `ferroloop._format.handle_repr`, the stdlib-shaped repr of a handle.
fn handle_repr(slf: &Bound<'_, PyAny>) -> PyResult<String> {
    static HANDLE_REPR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = slf.py();
    HANDLE_REPR
        .import(py, "ferroloop._format", "handle_repr")?
        .call1((slf,))?
        .extract()
}

impl Handle {
    /// Cancel the callback. Cancelling an already cancelled or finished handle does nothing.
    /// (Python's `cancel()`, entered through `fastcall.rs`.)
    pub fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.mark_cancelled() {
            return Ok(());
        }
        // Debug mode (the only time a handle keeps its source traceback) freezes the repr.
        if this.source_traceback.is_some() {
            let repr = handle_repr(slf.as_any())?;
            this.slots.lock().cancelled_repr = Some(repr);
        }
        // Taken out under the lock, dropped after it: dropping may run `__del__` code.
        // Dropped as `Bound`s, whose drop is a plain decref (the loop also calls this from
        // paths where a dropped `Py` would have its decref deferred to PyO3's pool).
        let call = this.slots.lock().call.take();
        if let Some(call) = call {
            call.release(slf.py());
        }
        Ok(())
    }
}

#[pymethods]
impl Handle {
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback(py)
    }

    #[getter]
    fn _args<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.args_tuple(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    /// Run the callback now, reporting nothing: errors propagate to the caller.
    fn _run(&self, py: Python<'_>) -> PyResult<()> {
        self.run(py)
    }

    /// `isinstance` falls back to `__class__` when the type check fails (as proxies rely
    /// on): reporting an `asyncio.Handle` subclass makes `isinstance(h, asyncio.Handle)`
    /// hold while the handle stays a Rust object.
    #[getter]
    fn __class__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        static HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static TIMER_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        let class = if slf.get().timer.is_some() {
            TIMER_HANDLE.import(py, "ferroloop._format", "TimerHandle")?
        } else {
            HANDLE.import(py, "ferroloop._format", "Handle")?
        };
        Ok(class.clone().unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        if let Some(repr) = slf.get().slots.lock().cancelled_repr.as_ref() {
            return Ok(repr.clone());
        }
        handle_repr(slf.as_any())
    }

    /// A handle that holds a bound method of an object that holds the handle is a cycle
    /// (`self._timer = loop.call_later(t, self._expire)`): the collector must see it.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never held while Python code runs, so a held lock means another thread's brief use.
        if let Some(slots) = self.slots.try_lock() {
            if let Some(call) = &slots.call {
                visit.call(&call.callback)?;
                call.args.traverse(&visit)?;
            }
            visit.call(&slots.context)?;
        }
        visit.call(&self.source_traceback)
    }

    fn __clear__(&self) {
        let taken = {
            let mut slots = self.slots.lock();
            if let Some(context) = &slots.context {
                show_context(context);
            }
            (slots.call.take(), slots.context.take())
        };
        drop(taken);
    }
}

/// A callback scheduled for a deadline on the loop clock (`call_later`, `call_at`).
/// Its state lives in the base `Handle`; this class adds the timer's methods.
/// It has its own free list: a subclass would otherwise inherit `Handle`'s `tp_free` and
/// put timers in the free list of plain handles.
#[pyclass(extends = Handle, frozen, freelist = 256, module = "ferroloop._ferroloop")]
pub struct TimerHandle;

/// The deadline of a `TimerHandle` (only the loop creates them, always with a deadline).
fn deadline(slf: &Bound<'_, TimerHandle>) -> f64 {
    slf.as_super().get().when()
}

#[pymethods]
impl TimerHandle {
    /// The absolute time (loop clock) the callback is scheduled for.
    fn when(slf: &Bound<'_, Self>) -> f64 {
        deadline(slf)
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> f64 {
        deadline(slf)
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().is_scheduled()
    }

    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<isize> {
        // The stdlib hashes a timer as hash(when).
        deadline(slf).into_pyobject(slf.py())?.hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (deadline(slf), deadline(other));
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || slf.is(other) || same_timer(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || slf.is(other) || same_timer(slf, other)?,
            CompareOp::Eq => slf.is(other) || same_timer(slf, other)?,
            CompareOp::Ne => !(slf.is(other) || same_timer(slf, other)?),
        };
        result.into_py_any(py)
    }
}

/// Stdlib equality of timers: same deadline, callback, arguments and cancelled state.
fn same_timer(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
    let py = a.py();
    if deadline(a) != deadline(b) {
        return Ok(false);
    }
    let (ha, hb) = (a.as_super().get(), b.as_super().get());
    if ha.is_cancelled() != hb.is_cancelled() {
        return Ok(false);
    }
    match (ha.callback(py), hb.callback(py)) {
        (None, None) => Ok(true),
        (Some(ca), Some(cb)) => {
            if !ca.bind(py).eq(cb.bind(py))? {
                return Ok(false);
            }
            match (ha.args_tuple(py)?, hb.args_tuple(py)?) {
                (Some(aa), Some(ab)) => aa.eq(ab),
                (None, None) => Ok(true),
                _ => Ok(false),
            }
        }
        _ => Ok(false),
    }
}

/// Raised by handle operations that need a live loop.
pub fn closed_loop_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// Starts loading the first two cache lines of `object` (its collector header included)
/// into the cache: only a hint to the CPU, which never faults.
#[inline(always)]
pub(crate) fn prefetch_object(object: &Py<PyAny>) {
    // The collector's header sits just before the object (two pointers).
    let start = object
        .as_ptr()
        .cast::<u8>()
        .wrapping_sub(2 * std::mem::size_of::<usize>());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no effect but on the cache, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(start.cast());
        _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(64).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = start;
}
