//! `Args`: the positional arguments a handle passes to its callback.
//!
//! Most callbacks get none (a task step) or one (a future's done callbacks, `set_result`
//! of a value): those are held inline, so scheduling one allocates no tuple and running
//! it frees none. A tuple is a collector-tracked object: a thousand queued callbacks with
//! arguments were a thousand tuples for every young collection to traverse, and the
//! allocations that set those collections off. More than two arguments, or a tuple a
//! Python caller already built (`add_reader(fd, callback, *args)`), stay a tuple.

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{ffi, PyTraverseError, PyVisit};

/// A callback's positional arguments.
pub enum Args {
    Zero,
    One(Py<PyAny>),
    Two(Py<PyAny>, Py<PyAny>),
    /// Three or more, or a tuple the caller built.
    Tuple(Py<PyTuple>),
}

/// `Args` borrowed out of a handle for one call (a `Bound`'s drop is a plain decref).
pub enum BoundArgs<'py> {
    Zero,
    One(Bound<'py, PyAny>),
    Two(Bound<'py, PyAny>, Bound<'py, PyAny>),
    Tuple(Bound<'py, PyTuple>),
}

impl Args {
    /// The arguments `items` (borrowed references), inline if there are few enough.
    ///
    /// # Safety
    /// Attached to the interpreter; every pointer in `items` is a live object.
    pub unsafe fn from_borrowed(py: Python<'_>, items: &[*mut ffi::PyObject]) -> PyResult<Self> {
        let held = |item: *mut ffi::PyObject| Bound::from_borrowed_ptr(py, item).unbind();
        match *items {
            [] => return Ok(Self::Zero),
            [a] => return Ok(Self::One(held(a))),
            [a, b] => return Ok(Self::Two(held(a), held(b))),
            _ => {}
        }
        let tuple = ffi::PyTuple_New(items.len() as ffi::Py_ssize_t);
        let tuple = Bound::from_owned_ptr_or_err(py, tuple)?;
        for (i, &item) in items.iter().enumerate() {
            ffi::Py_INCREF(item);
            // Fills a fresh tuple's slot, which steals the reference just taken.
            ffi::PyTuple_SET_ITEM(tuple.as_ptr(), i as ffi::Py_ssize_t, item);
        }
        Ok(Self::Tuple(tuple.cast_into_unchecked::<PyTuple>().unbind()))
    }

    /// New references to the arguments, for one call.
    #[inline]
    pub fn bind<'py>(&self, py: Python<'py>) -> BoundArgs<'py> {
        match self {
            Self::Zero => BoundArgs::Zero,
            Self::One(a) => BoundArgs::One(a.bind(py).clone()),
            Self::Two(a, b) => BoundArgs::Two(a.bind(py).clone(), b.bind(py).clone()),
            Self::Tuple(tuple) => BoundArgs::Tuple(tuple.bind(py).clone()),
        }
    }

    /// Lets go of the arguments with a plain decref (see `BoundArgs`).
    #[inline]
    pub fn release(self, py: Python<'_>) {
        match self {
            Self::Zero => {}
            Self::One(a) => drop(a.into_bound(py)),
            Self::Two(a, b) => drop((a.into_bound(py), b.into_bound(py))),
            Self::Tuple(tuple) => drop(tuple.into_bound(py)),
        }
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::Zero => Ok(()),
            Self::One(a) => visit.call(a),
            Self::Two(a, b) => {
                visit.call(a)?;
                visit.call(b)
            }
            Self::Tuple(tuple) => visit.call(tuple),
        }
    }
}

impl<'py> BoundArgs<'py> {
    /// The arguments as a tuple (the stdlib handle's `_args`).
    pub fn into_tuple(self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        match self {
            Self::Zero => Ok(PyTuple::empty(py)),
            Self::One(a) => PyTuple::new(py, [a]),
            Self::Two(a, b) => PyTuple::new(py, [a, b]),
            Self::Tuple(tuple) => Ok(tuple),
        }
    }

    /// Calls `callable` with these arguments, returning the new reference CPython's
    /// vectorcall returns (NULL with an exception set on failure).
    ///
    /// # Safety
    /// Attached to the interpreter; `callable` is a live object.
    #[inline]
    pub unsafe fn vectorcall(&self, callable: *mut ffi::PyObject) -> *mut ffi::PyObject {
        let call = |items: *const *mut ffi::PyObject, n: usize| {
            ffi::PyObject_Vectorcall(callable, items, n, std::ptr::null_mut())
        };
        match self {
            Self::Zero => call(std::ptr::null(), 0),
            Self::One(a) => call(&a.as_ptr(), 1),
            Self::Two(a, b) => call([a.as_ptr(), b.as_ptr()].as_ptr(), 2),
            Self::Tuple(tuple) => {
                // The tuple (held by `self`) keeps its item array alive for the call.
                let items = (*(tuple.as_ptr() as *mut ffi::PyTupleObject))
                    .ob_item
                    .as_ptr();
                call(items, ffi::PyTuple_GET_SIZE(tuple.as_ptr()) as usize)
            }
        }
    }
}
