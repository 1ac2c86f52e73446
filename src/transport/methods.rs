//! The methods of `ferroloop._transport.SocketTransport` that its Rust core serves,
//! installed on the Python class as method descriptors.
//!
//! A call such as `transport.is_closing()` then finds the method on the class, as for any
//! built-in method: nothing is bound or stored per transport. (Binding the core's methods
//! into each instance, as the transport once did, cost 72 bytes per method used, and the
//! second one made CPython give the instance a dictionary of its own: ~460 bytes for every
//! connection that called, say, `write` and `is_closing`, as every stream does.)
//!
//! Each method finds the transport's `_core` (read straight from its slot while the class is
//! unchanged); `write` and the methods without arguments call the core's Rust
//! implementation, the others call the core's method of the same name.

use std::sync::OnceLock;

use pyo3::exceptions::{PyAttributeError, PyResourceWarning};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};
use pyo3::{intern, IntoPyObjectExt};

use crate::fastcall::{add_methods, guarded, write_to, Method, FASTCALL};
use crate::transport::stream::StreamCore;

/// Where an instance of the installed class keeps its `_core` slot, so that the methods
/// read it at its offset rather than through `getattr`: ~200 instructions less per call,
/// 6% of the server's instructions per 1 KiB Protocol echo.
struct CoreSlot {
    /// The class whose `__slots__` made the slot (kept alive by this static).
    class: Py<PyType>,
    /// Its version tag when the slot was found: any change to the class or its bases
    /// (say, a `_core` property assigned on it) gives it a new one.
    version: std::os::raw::c_uint,
    /// The slot's byte offset inside an instance.
    offset: ffi::Py_ssize_t,
}

static CORE_SLOT: OnceLock<CoreSlot> = OnceLock::new();

/// The `_core` slot of `class`, if `_core` is a plain object slot of its own.
fn find_core_slot(class: &Bound<'_, PyType>) -> PyResult<Option<CoreSlot>> {
    let py = class.py();
    // Looking the attribute up on the class also gives the class a version tag.
    let descriptor = class.getattr(intern!(py, "_core"))?;
    let member_type = py.import("types")?.getattr("MemberDescriptorType")?;
    if !descriptor.get_type().is(&member_type) {
        return Ok(None);
    }
    // SAFETY: an object of type `member_descriptor` is a `PyMemberDescrObject`, whose
    // `d_member` points into its class's member table (alive as long as the class); the
    // class is a live type object.
    let (member, owner, version) = unsafe {
        let descriptor = descriptor.as_ptr().cast::<ffi::PyMemberDescrObject>();
        let version = (*class.as_type_ptr()).tp_version_tag;
        (
            &*(*descriptor).d_member,
            (*descriptor).d_common.d_type,
            version,
        )
    };
    let own = owner == class.as_type_ptr();
    if !own || member.type_code != ffi::Py_T_OBJECT_EX || version == 0 {
        return Ok(None);
    }
    Ok(Some(CoreSlot {
        class: class.clone().unbind(),
        version,
        offset: member.offset,
    }))
}

/// The transport's core (`transport._core`).
///
/// # Safety
/// Attached; `slf` is a live object.
unsafe fn core_of<'py>(py: Python<'py>, slf: *mut ffi::PyObject) -> PyResult<Bound<'py, PyAny>> {
    // Free-threaded builds take `getattr`: there another thread may replace the slot's
    // object between the read and the incref, which CPython's own read guards against.
    #[cfg(not(Py_GIL_DISABLED))]
    if let Some(slot) = CORE_SLOT.get() {
        let class = slot.class.as_ptr().cast::<ffi::PyTypeObject>();
        if ffi::Py_TYPE(slf) == class && (*class).tp_version_tag == slot.version {
            // SAFETY: `slf` is an instance of exactly the unchanged class whose `_core`
            // member descriptor gave `offset`, so an object pointer (NULL when unset)
            // sits there.
            let core = *slf
                .cast::<u8>()
                .offset(slot.offset)
                .cast::<*mut ffi::PyObject>();
            if !core.is_null() {
                return Ok(Bound::from_borrowed_ptr(py, core));
            }
        }
    }
    Bound::from_borrowed_ptr(py, slf).getattr(intern!(py, "_core"))
}

/// Arguments passed on in place for calls of up to this many (the core first).
const INLINE_ARGS: usize = 8;

/// Calls `transport._core.<name>(*args, **kwargs)` with the vectorcall arguments as given.
///
/// # Safety
/// Called from CPython's method call (attached); `args` holds `nargs + len(kwnames)` live
/// object pointers and `kwnames` is NULL or a tuple of str, as for any
/// `METH_FASTCALL | METH_KEYWORDS` function.
unsafe fn forward(
    method: &'static str,
    name: for<'py> fn(Python<'py>) -> &'py Bound<'py, PyString>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("SocketTransport", method, |py| {
        let core = core_of(py, slf)?;
        let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames) as usize
        };
        let given = std::slice::from_raw_parts(args, nargs + nkw);
        let mut inline = [std::ptr::null_mut(); INLINE_ARGS];
        let mut spilled = Vec::new();
        let vector: &mut [*mut ffi::PyObject] = if given.len() < INLINE_ARGS {
            &mut inline[..given.len() + 1]
        } else {
            spilled.resize(given.len() + 1, std::ptr::null_mut());
            &mut spilled
        };
        vector[0] = core.as_ptr();
        vector[1..].copy_from_slice(given);
        // The pointers are borrowed: `core` and the caller's arguments outlive the call.
        let result =
            ffi::PyObject_VectorcallMethod(name(py).as_ptr(), vector.as_ptr(), nargs + 1, kwnames);
        Bound::from_owned_ptr_or_err(py, result)
    })
}

/// `SocketTransport.write(data)`: straight to the core's Rust `write`.
unsafe extern "C" fn write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("SocketTransport", "write", |py| {
        let core = core_of(py, slf)?.cast_into::<StreamCore>()?;
        write_to(&core, args, nargsf, kwnames)
    })
}

/// What a method with nothing to return gives Python: None (a Rust `()` would become an
/// empty tuple).
const NOTHING: Option<()> = None;

/// A table entry's C string from a literal.
macro_rules! c_str {
    ($text:expr) => {
        match std::ffi::CStr::from_bytes_with_nul(concat!($text, "\0").as_bytes()) {
            Ok(text) => text,
            Err(_) => panic!("a NUL inside a method name or docstring"),
        }
    };
}

/// Defines the no-argument methods that call the core's Rust implementation directly (the
/// ones protocols and `StreamWriter.drain` call per request), and their table.
macro_rules! direct_methods {
    ($($function:ident => $name:literal, $doc:literal, |$core:ident| $body:expr;)+) => {
        $(
            unsafe extern "C" fn $function(
                slf: *mut ffi::PyObject,
                _unused: *mut ffi::PyObject,
            ) -> *mut ffi::PyObject {
                guarded("SocketTransport", $name, |py| {
                    let $core = core_of(py, slf)?.cast_into::<StreamCore>()?;
                    $body.into_bound_py_any(py)
                })
            }
        )+

        const DIRECT: &[Method] = &[$(
            Method {
                name: c_str!($name),
                function: ffi::PyMethodDefPointer { PyCFunction: $function },
                flags: ffi::METH_NOARGS,
                doc: c_str!($doc),
            },
        )+];
    };
}

direct_methods! {
    write_eof => "write_eof",
        "write_eof($self, /)\n--\n\nClose the write side once queued data is sent (half-close).",
        |core| { StreamCore::write_eof(&core)?; NOTHING };
    can_write_eof => "can_write_eof",
        "can_write_eof($self, /)\n--\n\nTrue: stream sockets can half-close.",
        |core| core.get().can_write_eof();
    close => "close",
        "close($self, /)\n--\n\nClose: stop reading, send what is queued, then `connection_lost(None)`.",
        |core| { StreamCore::close(&core)?; NOTHING };
    abort => "abort",
        "abort($self, /)\n--\n\nClose at once, dropping queued data.",
        |core| { StreamCore::abort(&core)?; NOTHING };
    is_closing => "is_closing",
        "is_closing($self, /)\n--\n\nTrue once the transport is closing or closed.",
        |core| core.get().is_closing();
    is_reading => "is_reading",
        "is_reading($self, /)\n--\n\nTrue while the protocol is given the data that arrives.",
        |core| core.get().is_reading();
    pause_reading => "pause_reading",
        "pause_reading($self, /)\n--\n\nStop calling the protocol with data until `resume_reading()`.",
        |core| { StreamCore::pause_reading(&core); NOTHING };
    resume_reading => "resume_reading",
        "resume_reading($self, /)\n--\n\nResume delivering data after `pause_reading()`.",
        |core| { StreamCore::resume_reading(&core)?; NOTHING };
    get_write_buffer_limits => "get_write_buffer_limits",
        "get_write_buffer_limits($self, /)\n--\n\nThe (low, high) water marks of the write buffer.",
        |core| core.get().get_write_buffer_limits();
    get_write_buffer_size => "get_write_buffer_size",
        "get_write_buffer_size($self, /)\n--\n\nBytes queued and not yet sent.",
        |core| StreamCore::get_write_buffer_size(&core)?;
    get_protocol => "get_protocol",
        "get_protocol($self, /)\n--\n\nThe current protocol.",
        |core| core.get().get_protocol(core.py());
}

/// Defines the methods with arguments, which forward their call to the core's method of
/// the same name (that method parses them), and their table.
macro_rules! forwarding_methods {
    ($($function:ident => $name:literal, $doc:literal;)+) => {
        $(
            unsafe extern "C" fn $function(
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargsf: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> *mut ffi::PyObject {
                forward($name, |py| intern!(py, $name), slf, args, nargsf, kwnames)
            }
        )+

        const FORWARDED: &[Method] = &[$(
            Method {
                name: c_str!($name),
                function: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: $function },
                flags: FASTCALL,
                doc: c_str!($doc),
            },
        )+];
    };
}

forwarding_methods! {
    writelines => "writelines",
        "writelines($self, list_of_data)\n--\n\nWrite each item of an iterable of bytes-like objects.";
    set_write_buffer_limits => "set_write_buffer_limits",
        "set_write_buffer_limits($self, high=None, low=None)\n--\n\nSet the high and low water marks of the write buffer.";
    set_protocol => "set_protocol",
        "set_protocol($self, protocol)\n--\n\nGive the data that arrives from now on to `protocol`.";
    force_close => "_force_close",
        "_force_close($self, exc=None)\n--\n\nClose at once because of `exc`.";
}

const WRITE: &[Method] = &[Method {
    name: c"write",
    function: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: write,
    },
    flags: FASTCALL,
    doc: c"write($self, data)\n--\n\n\
          Write `data` (bytes-like) without blocking; what the socket does not take is queued.",
}];

/// `SocketTransport.__del__`: as the stdlib's transports do, a transport collected before
/// it was closed warns (`ResourceWarning`) and closes its socket. A built-in method, so a
/// closed transport (the usual case) costs its finalizer no Python frame.
unsafe extern "C" fn finalize(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    guarded("SocketTransport", "__del__", |py| {
        let nothing = py.None().into_bound(py);
        let core = match core_of(py, slf) {
            Ok(core) => core,
            // `__init__` failed before making the core: nothing was opened here.
            Err(err) if err.is_instance_of::<PyAttributeError>(py) => return Ok(nothing),
            Err(err) => return Err(err),
        };
        let Ok(core) = core.cast_into::<StreamCore>() else {
            return Ok(nothing);
        };
        if core.get().is_closed() {
            return Ok(nothing);
        }
        static WARN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let transport = Bound::from_borrowed_ptr(py, slf);
        let message = format!("unclosed transport {}", transport.repr()?);
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "source"), &transport)?;
        WARN.import(py, "warnings", "warn")?
            .call((message, py.get_type::<PyResourceWarning>()), Some(&kwargs))?;
        transport
            .getattr(intern!(py, "_file"))?
            .call_method0(intern!(py, "close"))?;
        Ok(nothing)
    })
}

const FINALIZER: &[Method] = &[Method {
    name: c"__del__",
    function: ffi::PyMethodDefPointer {
        PyCFunction: finalize,
    },
    flags: ffi::METH_NOARGS,
    doc: c"__del__($self, /)\n--\n\nWarn of, and close, a transport collected unclosed.",
}];

/// Installs the methods on `class` (`SocketTransport`, once, when `_transport` is imported).
#[pyfunction]
pub fn _install_stream_transport_methods(class: &Bound<'_, PyType>) -> PyResult<()> {
    for methods in [WRITE, DIRECT, FORWARDED, FINALIZER] {
        add_methods(class.py(), class, methods)?;
    }
    if let Some(slot) = find_core_slot(class)? {
        // A second install (another class) keeps the first class's fast path.
        let _ = CORE_SLOT.set(slot);
    }
    Ok(())
}
