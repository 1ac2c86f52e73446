//! Hand-written `METH_FASTCALL | METH_KEYWORDS` / `METH_NOARGS` entry points for the
//! hottest methods: the four scheduling methods (`call_soon`, `call_soon_threadsafe`,
//! `call_later`, `call_at`), `create_future` and `create_task` of the loop, a handle's
//! `cancel`, and the stream transport's `write`.
//!
//! These are the hottest calls: every task step and future callback goes through
//! `call_soon`, every timeout that does not fire through `cancel`, every reply a server
//! sends through `write`. PyO3's generic argument extraction plus its trampoline cost about
//! as much as the rest of `call_soon` together; parsing `(fixed..., *args, context=None)` here
//! directly from the vector of arguments is a few comparisons.
//!
//! The methods are installed on `LoopCore`, `Handle` and `StreamCore` as ordinary method
//! descriptors when the module is created, replacing nothing: none of these classes
//! declares methods of these names.
//!
//! # Implementation notes
//! Everything here runs attached to the interpreter (CPython calls a method descriptor's
//! function with the GIL held). Objects are held as `Bound`, whose drop is a plain
//! decref: these entry points skip PyO3's trampoline and its attach count, so a `Py`
//! dropped here (outside a running loop) would only have its decref deferred to PyO3's
//! pool. The success paths drop none; error paths may. A panic is caught and raised as
//! `SystemError`, never unwound into CPython.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::call_args::Args;
use crate::event_loop::LoopCore;
use crate::handle::Handle;
use crate::transport::stream::StreamCore;

/// The arguments of a scheduling method: its fixed positional parameters (the callback
/// last), the callback's own arguments, and the `context` keyword.
pub struct SchedulingArgs<'py, const FIXED: usize> {
    pub fixed: [Bound<'py, PyAny>; FIXED],
    pub args: Args,
    pub context: Option<Bound<'py, PyAny>>,
}

/// `Loop.call_soon() missing 1 required positional argument: 'callback'`, the shape of
/// CPython's own message for a Python function.
fn missing_error(method: &str, missing: &[&str]) -> PyErr {
    let quoted: Vec<String> = missing.iter().map(|name| format!("'{name}'")).collect();
    let (count, plural, list) = match quoted.as_slice() {
        [one] => (1, "", one.clone()),
        [rest @ .., last] => (
            rest.len() + 1,
            "s",
            format!("{} and {last}", rest.join(", ")),
        ),
        [] => (0, "s", String::new()),
    };
    PyTypeError::new_err(format!(
        "Loop.{method}() missing {count} required positional argument{plural}: {list}"
    ))
}

/// The keyword names `("context",)` of asyncio's C `Future` and `Task`, which schedule
/// every task step and done callback with them: one tuple for the whole process, whose
/// string is not interned, so it is recognised by identity once seen.
static CONTEXT_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// Whether the keyword names `kwnames` (a tuple of str) are exactly `("context",)`, as
/// found cheaply: by identity with the names seen before or with the interned string.
///
/// # Safety
/// `kwnames` is a live tuple of str, borrowed.
#[inline]
unsafe fn is_context_only(py: Python<'_>, kwnames: *mut ffi::PyObject) -> bool {
    if CONTEXT_KWNAMES
        .get(py)
        .is_some_and(|known| known.as_ptr() == kwnames)
    {
        return true;
    }
    if ffi::PyTuple_GET_SIZE(kwnames) != 1 {
        return false;
    }
    let name = ffi::PyTuple_GET_ITEM(kwnames, 0);
    if name == intern!(py, "context").as_ptr() {
        return true;
    }
    let is_context = Bound::from_borrowed_ptr(py, name)
        .cast::<PyString>()
        .is_ok_and(|name| name.to_str().is_ok_and(|name| name == "context"));
    if is_context {
        // The first such tuple not made of interned strings is kept (alive, so that its
        // address cannot be reused): in practice, `_asyncio`'s.
        let tuple = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
        let _ = CONTEXT_KWNAMES.get_or_init(py, || tuple.unbind());
    }
    is_context
}

/// Parses `(fixed[0], ..., *args, context=None)` from a vectorcall.
///
/// # Safety
/// `args` points to `nargs + len(kwnames)` live object pointers, as CPython passes them to
/// a `METH_FASTCALL | METH_KEYWORDS` function; `kwnames` is NULL or a tuple of str.
unsafe fn parse<'py, const FIXED: usize>(
    py: Python<'py>,
    method: &str,
    names: [&str; FIXED],
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<SchedulingArgs<'py, FIXED>> {
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
    let mut fixed: [Option<Bound<'py, PyAny>>; FIXED] = std::array::from_fn(|_| None);
    for (slot, i) in fixed.iter_mut().zip(0..nargs) {
        *slot = Some(Bound::from_borrowed_ptr(py, *args.add(i)));
    }
    let mut context = None;
    match (!kwnames.is_null()).then_some(kwnames) {
        None => {}
        Some(kwnames) if is_context_only(py, kwnames) => {
            context = Some(Bound::from_borrowed_ptr(py, *args.add(nargs)));
        }
        Some(kwnames) => {
            let kwnames = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
            for (k, name) in kwnames.iter().enumerate() {
                let value = Bound::from_borrowed_ptr(py, *args.add(nargs + k));
                let name = name.cast_into::<PyString>()?;
                let name = name.to_str()?;
                if name == "context" {
                    context = Some(value);
                    continue;
                }
                match names.iter().position(|fixed_name| *fixed_name == name) {
                    Some(i) if fixed[i].is_some() => {
                        return Err(PyTypeError::new_err(format!(
                            "Loop.{method}() got multiple values for argument '{name}'"
                        )))
                    }
                    Some(i) => fixed[i] = Some(value),
                    None => {
                        return Err(PyTypeError::new_err(format!(
                            "Loop.{method}() got an unexpected keyword argument '{name}'"
                        )))
                    }
                }
            }
        }
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&fixed)
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(missing_error(method, &missing));
    }
    let rest = if nargs > FIXED {
        Args::from_borrowed(
            py,
            std::slice::from_raw_parts(args.add(FIXED), nargs - FIXED),
        )?
    } else {
        Args::Zero
    };
    Ok(SchedulingArgs {
        fixed: fixed.map(|value| value.expect("checked above")),
        args: rest,
        // `context=None` is the default spelled out: a copy of the current context.
        context: context.filter(|context| !context.is_none()),
    })
}

/// Runs `body` as the implementation of a fastcall method: a panic becomes SystemError,
/// an error is raised, a result is returned as a new reference.
///
/// # Safety
/// Called from CPython's method call with the interpreter attached; `slf` is a live
/// object (an instance of `LoopCore`: method descriptors check their `self`).
unsafe fn entry<const FIXED: usize>(
    method: &str,
    names: [&str; FIXED],
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    body: impl for<'py> FnOnce(
        &Bound<'py, LoopCore>,
        SchedulingArgs<'py, FIXED>,
    ) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    guarded("Loop", method, |py| {
        let slf = loop_self(py, slf);
        let parsed = parse(py, method, names, args, nargsf, kwnames)?;
        body(&slf, parsed)
    })
}

/// `self` of a loop method, as the `LoopCore` it is.
///
/// # Safety
/// `slf` is the `self` CPython passes to a method descriptor of `LoopCore`: the descriptor
/// has already checked that it is an instance (usually of `Loop`, a subclass), so the
/// check is not repeated (on `Loop`'s long MRO it costs as much as parsing the arguments).
unsafe fn loop_self<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> Bound<'py, LoopCore> {
    Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>()
}

/// Runs `body` as a method's implementation with the interpreter attached, and hands
/// its outcome to CPython (see `finish`).
///
/// # Safety
/// Called from CPython's method call, which holds the interpreter attached.
pub(crate) unsafe fn guarded(
    class: &str,
    method: &str,
    body: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    let py = Python::assume_attached();
    let outcome = catch_unwind(AssertUnwindSafe(|| body(py)));
    finish(py, class, method, outcome)
}

/// Hands a method's outcome to CPython: a new reference, or NULL with the error (a panic
/// as SystemError) raised.
fn finish(
    py: Python<'_>,
    class: &str,
    method: &str,
    outcome: std::thread::Result<PyResult<Bound<'_, PyAny>>>,
) -> *mut ffi::PyObject {
    match outcome {
        Ok(Ok(result)) => result.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PySystemError::new_err(format!("ferroloop: internal panic in {class}.{method}()"))
                .restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Defines the entry point of a scheduling method `name(fixed..., *args, context=None)`,
/// which hands its arguments, in that order, to the `LoopCore` method `body`.
macro_rules! scheduling_method {
    ($name:ident, [$($fixed:ident),+], $body:path) => {
        unsafe extern "C" fn $name(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            let names = [$(stringify!($fixed)),+];
            entry(stringify!($name), names, slf, args, nargsf, kwnames, |slf, a| {
                let [$($fixed),+] = a.fixed;
                $body(slf.get(), $($fixed,)+ a.args, a.context).map(Bound::into_any)
            })
        }
    };
}

scheduling_method!(call_soon, [callback], LoopCore::schedule_soon);
scheduling_method!(
    call_soon_threadsafe,
    [callback],
    LoopCore::schedule_threadsafe
);
scheduling_method!(call_later, [delay, callback], LoopCore::schedule_later);
scheduling_method!(call_at, [when, callback], LoopCore::schedule_at);

unsafe extern "C" fn create_future(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("Loop", "create_future", |py| {
        LoopCore::new_future(&loop_self(py, slf))
    })
}

/// `create_task(coro, *, name=None, context=None)`.
unsafe extern "C" fn create_task(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("Loop", "create_task", |py| {
        let slf = loop_self(py, slf);
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
        if nargs > 1 {
            return Err(PyTypeError::new_err(format!(
                "Loop.create_task() takes 2 positional arguments but {} were given",
                nargs + 1
            )));
        }
        let mut coro = (nargs == 1).then(|| Bound::from_borrowed_ptr(py, *args));
        let (mut name, mut context) = (None, None);
        if !kwnames.is_null() {
            let kwnames = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
            for (k, keyword) in kwnames.iter().enumerate() {
                let value = Bound::from_borrowed_ptr(py, *args.add(nargs + k));
                let keyword = keyword.cast_into::<PyString>()?;
                let slot = match keyword.to_str()? {
                    "coro" if coro.is_none() => &mut coro,
                    "coro" => {
                        return Err(PyTypeError::new_err(
                            "Loop.create_task() got multiple values for argument 'coro'",
                        ))
                    }
                    "name" => &mut name,
                    "context" => &mut context,
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "Loop.create_task() got an unexpected keyword argument '{other}'"
                        )))
                    }
                };
                *slot = Some(value);
            }
        }
        let coro = coro.ok_or_else(|| missing_error("create_task", &["coro"]))?;
        // `None` spelled out is each keyword's default.
        let name = name.filter(|name| !name.is_none());
        let context = context.filter(|context| !context.is_none());
        LoopCore::new_task(&slf, &coro, name.as_ref(), context.as_ref())
    })
}

/// `cancel()` of a handle (timers, mostly: `call_later(...).cancel()` is how timeouts end).
unsafe extern "C" fn handle_cancel(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("Handle", "cancel", |py| {
        // SAFETY: the method descriptor checked `slf` is a Handle (see `loop_self`).
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Handle>();
        Handle::cancel(&slf).map(|()| py.None().into_bound(py))
    })
}

/// `write(data)` of a stream transport (`SocketTransport.write`, bound from its core).
unsafe extern "C" fn stream_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("SocketTransport", "write", |py| {
        // SAFETY: the method descriptor checked `slf` is a StreamCore (see `loop_self`).
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<StreamCore>();
        write_to(&slf, args, nargsf, kwnames)
    })
}

/// `core.write(data)` with the vectorcall arguments of `write`.
///
/// # Safety
/// As for `parse`: `args` holds `nargs + len(kwnames)` live object pointers.
pub(crate) unsafe fn write_to<'py>(
    core: &Bound<'py, StreamCore>,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    let py = core.py();
    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
    let data = if nargs == 1 && kwnames.is_null() {
        Bound::from_borrowed_ptr(py, *args)
    } else {
        only_argument(py, "SocketTransport.write", "data", args, nargs, kwnames)?
    };
    StreamCore::write_data(core, &data).map(|()| py.None().into_bound(py))
}

/// The one argument of `method(name)`, passed by position or keyword; otherwise the
/// TypeError CPython gives a Python function of that signature.
///
/// # Safety
/// As for `parse`: `args` holds `nargs + len(kwnames)` live object pointers.
pub(crate) unsafe fn only_argument<'py>(
    py: Python<'py>,
    method: &str,
    name: &str,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    if nargs > 1 {
        return Err(PyTypeError::new_err(format!(
            "{method}() takes 2 positional arguments but {} were given",
            nargs + 1
        )));
    }
    let mut value = (nargs == 1).then(|| Bound::from_borrowed_ptr(py, *args));
    if !kwnames.is_null() {
        let kwnames = Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>();
        for (k, keyword) in kwnames.iter().enumerate() {
            let keyword = keyword.cast_into::<PyString>()?;
            let keyword = keyword.to_str()?;
            if keyword != name {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{keyword}'"
                )));
            }
            if value.is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got multiple values for argument '{name}'"
                )));
            }
            value = Some(Bound::from_borrowed_ptr(py, *args.add(nargs + k)));
        }
    }
    value.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{method}() missing 1 required positional argument: '{name}'"
        ))
    })
}

/// A method table entry: name, function, docstring with the `__text_signature__`
/// CPython reads from it.
pub(crate) struct Method {
    pub name: &'static CStr,
    pub function: ffi::PyMethodDefPointer,
    pub flags: std::ffi::c_int,
    pub doc: &'static CStr,
}

pub(crate) const FASTCALL: std::ffi::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

const METHODS: [Method; 6] = [
    Method {
        name: c"call_soon",
        function: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon,
        },
        flags: FASTCALL,
        doc: c"call_soon($self, callback, *args, context=None)\n--\n\n\
              Arrange for `callback(*args)` to be called soon, in FIFO order.",
    },
    Method {
        name: c"call_soon_threadsafe",
        function: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon_threadsafe,
        },
        flags: FASTCALL,
        doc: c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n\
              Like `call_soon`, but callable from any thread: wakes the loop if it is asleep.",
    },
    Method {
        name: c"call_later",
        function: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_later,
        },
        flags: FASTCALL,
        doc: c"call_later($self, delay, callback, *args, context=None)\n--\n\n\
              Arrange for `callback(*args)` to be called after `delay` seconds.",
    },
    Method {
        name: c"call_at",
        function: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_at,
        },
        flags: FASTCALL,
        doc: c"call_at($self, when, callback, *args, context=None)\n--\n\n\
              Like `call_later`, with an absolute time on the loop clock (`loop.time()`).",
    },
    Method {
        name: c"create_future",
        function: ffi::PyMethodDefPointer {
            PyCFunction: create_future,
        },
        flags: ffi::METH_NOARGS,
        doc: c"create_future($self, /)\n--\n\nCreate a Future attached to the loop.",
    },
    Method {
        name: c"create_task",
        function: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: create_task,
        },
        flags: FASTCALL,
        doc: c"create_task($self, coro, *, name=None, context=None)\n--\n\n\
              Schedule a coroutine as a Task (a real `asyncio.Task`) and return it.",
    },
];

const STREAM_METHODS: [Method; 1] = [Method {
    name: c"write",
    function: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: stream_write,
    },
    flags: FASTCALL,
    doc: c"write($self, data)\n--\n\n\
          Write `data` (bytes-like) without blocking; what the socket does not take is queued.",
}];

const HANDLE_METHODS: [Method; 1] = [Method {
    name: c"cancel",
    function: ffi::PyMethodDefPointer {
        PyCFunction: handle_cancel,
    },
    flags: ffi::METH_NOARGS,
    doc: c"cancel($self, /)\n--\n\n\
          Cancel the callback. Cancelling an already cancelled or finished handle does nothing.",
}];

/// Adds the methods above to `LoopCore`, `Handle` and `StreamCore` (once, at module
/// creation).
pub fn install(py: Python<'_>) -> PyResult<()> {
    add_methods(py, &py.get_type::<LoopCore>(), &METHODS)?;
    add_methods(py, &py.get_type::<Handle>(), &HANDLE_METHODS)?;
    add_methods(py, &py.get_type::<StreamCore>(), &STREAM_METHODS)
}

pub(crate) fn add_methods(
    py: Python<'_>,
    class: &Bound<'_, PyType>,
    methods: &[Method],
) -> PyResult<()> {
    for method in methods {
        // The definition must outlive the type: leaked once per process, a few of them.
        let definition: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: method.name.as_ptr(),
            ml_meth: method.function,
            ml_flags: method.flags,
            ml_doc: method.doc.as_ptr() as *const c_char,
        }));
        // SAFETY: attached; `class` is a live type object and `definition` lives forever.
        let descriptor = unsafe {
            let descriptor =
                ffi::PyDescr_NewMethod(class.as_ptr() as *mut ffi::PyTypeObject, definition);
            Bound::from_owned_ptr_or_err(py, descriptor)?
        };
        class.setattr(
            PyString::new(py, &method.name.to_string_lossy()),
            descriptor,
        )?;
    }
    Ok(())
}
