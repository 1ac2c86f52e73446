//! The `bytes` objects reads hand to `data_received`, recycled.
//!
//! A read of more than 512 bytes gets its `bytes` from the C allocator (pymalloc takes only
//! smaller objects), and for the common sizes from 0.5 to 16 KiB that allocation and its
//! free cost more instructions than the rest of the read. Most protocols consume the data
//! and drop it (a parser, `StreamReader` copying into its buffer, an echo's `write` that
//! the socket took), so when `data_received` returns, the read's own reference is often
//! the only one left. Such an object is kept as the thread's spare and refilled by the
//! next read that fits it.
//!
//! # Why refilling is sound
//! A `bytes` object is immutable to everyone who can see it. With a reference count of one
//! held by us, nobody else can: no variable, container, memoryview or buffer export
//! (exports hold a reference) refers to it. Rewriting it then is what CPython's own
//! `_PyBytes_Resize` does under the same condition. Its cached hash is reset. Only exact
//! `bytes` we created are kept, never the shared empty or one-byte singletons.
//!
//! A refill may shorten the object (`ob_size` below its allocation): the read of `n`
//! bytes reuses a spare of capacity `c` only if `c / 2 < n <= c`, so a reader that keeps
//! the data holds at most twice its size. Free-threaded builds do not recycle: there a
//! reference count of one does not prove exclusive ownership without more care.

#[cfg(not(Py_GIL_DISABLED))]
use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Smaller objects come from pymalloc, which is already cheap.
#[cfg(not(Py_GIL_DISABLED))]
const MIN_RECYCLED: usize = 513;

#[cfg(not(Py_GIL_DISABLED))]
struct Spare {
    bytes: Py<PyBytes>,
    /// The length it was allocated with: how much it can hold.
    capacity: usize,
}

#[cfg(not(Py_GIL_DISABLED))]
thread_local! {
    static SPARE: RefCell<Option<Spare>> = const { RefCell::new(None) };
}

/// A new `bytes` (or the refilled spare) holding `data`, and the capacity to remember for
/// `recycle`.
pub fn bytes_for<'py>(py: Python<'py>, data: &[u8]) -> (Bound<'py, PyBytes>, usize) {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let n = data.len();
        let spare = SPARE.with_borrow_mut(|slot| match slot {
            Some(spare) if n <= spare.capacity && n > spare.capacity / 2 => slot.take(),
            _ => None,
        });
        if let Some(spare) = spare {
            let bytes = spare.bytes.into_bound(py);
            // SAFETY: `recycle` stored it with a reference count of one, ours (moved into
            // `bytes`); so no one else can see the object while it is rewritten. It is an
            // exact `bytes` allocated for `capacity >= n` bytes plus the trailing NUL.
            unsafe {
                let object = bytes.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
                let start = std::ptr::addr_of_mut!((*object).ob_sval).cast::<u8>();
                std::ptr::copy_nonoverlapping(data.as_ptr(), start, n);
                *start.add(n) = 0;
                (*object).ob_base.ob_size = n as pyo3::ffi::Py_ssize_t;
                #[allow(deprecated)] // still present and still read by bytes_hash
                {
                    (*object).ob_shash = -1;
                }
            }
            return (bytes, spare.capacity);
        }
    }
    (PyBytes::new(py, data), data.len())
}

/// Keeps `bytes` (from `bytes_for`, of that `capacity`) as the spare if nothing else holds it.
pub fn recycle(bytes: Bound<'_, PyBytes>, capacity: usize) {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        // SAFETY: attached (we hold a Bound); reading a reference count has no precondition.
        let unshared = unsafe { pyo3::ffi::Py_REFCNT(bytes.as_ptr()) } == 1;
        if unshared && capacity >= MIN_RECYCLED {
            let spare = Spare {
                bytes: bytes.unbind(),
                capacity,
            };
            // The one it replaces (if any) is dropped here: a plain decref, we are attached.
            drop(SPARE.with_borrow_mut(|slot| slot.replace(spare)));
        }
    }
    #[cfg(Py_GIL_DISABLED)]
    drop((bytes, capacity));
}
