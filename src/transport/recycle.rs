//! The `bytes` objects reads hand to `data_received`, recycled.
//!
//! A read of more than 512 bytes gets its `bytes` from the C allocator (pymalloc takes only
//! smaller objects), and for the common sizes from 0.5 to 16 KiB that allocation and its
//! free cost more instructions than the rest of the read. Most protocols consume the data
//! and drop it (a parser, `StreamReader` copying into its buffer, an echo's `write` that
//! the socket took), so when `data_received` returns, the read's own reference is often
//! the only one left. Such an object is kept as the thread's spare and refilled by the
//! next read that fits it. A spare of 64 KiB or more is received into directly (see
//! `receive`), so large reads cost one copy (the kernel's) instead of two.
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

use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::transport::io::{read_into_two, recv_into, Received, Syscalls, READ_BUFFER, READ_CHUNK};

/// Smaller objects come from pymalloc, which is already cheap.
#[cfg(not(Py_GIL_DISABLED))]
const MIN_RECYCLED: usize = 513;
/// A spare this large is received into (for smaller ones `readv`'s second buffer costs more
/// than the copy it saves).
#[cfg(not(Py_GIL_DISABLED))]
const MIN_DIRECT: usize = 64 * 1024;

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

/// The `bytes` of one read, and the capacity to remember for `recycle`.
pub struct ReadBytes<'py> {
    pub bytes: Bound<'py, PyBytes>,
    capacity: usize,
}

/// Receives once from the socket `fd` (up to `READ_CHUNK` bytes, as from the thread's read
/// buffer) and returns what it gave, with the data as `bytes`.
///
/// With a spare of 64 KiB or more, the read goes into the spare's storage first and on
/// into the read buffer (one `readv`): data that fills the spare by more than half is
/// handed over in it without a copy; less, or more than it holds, is copied into a new
/// `bytes`. Otherwise the read goes into the read buffer and is copied out (into the
/// spare, if it fits it by more than half).
pub fn receive(py: Python<'_>, fd: RawFd) -> PyResult<(Received, Option<ReadBytes<'_>>)> {
    #[cfg(not(Py_GIL_DISABLED))]
    if let Some(spare) = take_spare(|capacity| capacity >= MIN_DIRECT) {
        let capacity = spare.capacity;
        // SAFETY: a spare has a reference count of one, ours (see `recycle`), so no one
        // else sees its storage change; that storage holds `capacity` bytes and the NUL.
        let first = unsafe { std::slice::from_raw_parts_mut(storage(&spare), capacity) };
        return READ_BUFFER.with_borrow_mut(|buf| {
            let second = &mut buf[..READ_CHUNK - capacity];
            let received = if second.is_empty() {
                recv_into(Syscalls::Socket, fd, first)
            } else {
                read_into_two(fd, first, second)
            };
            let data = match received {
                Received::Data(n) if n <= capacity && n > capacity / 2 => {
                    // SAFETY: as above; `n <= capacity`.
                    let bytes = unsafe { seal(spare.bytes.into_bound(py), n) };
                    return Ok((Received::Data(n), Some(ReadBytes { bytes, capacity })));
                }
                Received::Data(n) if n <= capacity => Some(fresh(py, &first[..n])),
                Received::Data(n) => {
                    let bytes = PyBytes::new_with(py, n, |out| {
                        out[..capacity].copy_from_slice(first);
                        out[capacity..].copy_from_slice(&second[..n - capacity]);
                        Ok(())
                    });
                    Some(ReadBytes {
                        bytes: bytes?,
                        capacity: n,
                    })
                }
                _ => None,
            };
            put_back(spare);
            Ok((received, data))
        });
    }
    Ok(
        READ_BUFFER.with_borrow_mut(|buf| match recv_into(Syscalls::Socket, fd, buf) {
            Received::Data(n) => (Received::Data(n), Some(copied(py, &buf[..n]))),
            other => (other, None),
        }),
    )
}

/// `data` as `bytes`: the spare refilled if `data` fits it by more than half, else new.
fn copied<'py>(py: Python<'py>, data: &[u8]) -> ReadBytes<'py> {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        let n = data.len();
        if let Some(spare) = take_spare(|capacity| n <= capacity && n > capacity / 2) {
            // SAFETY: the spare is ours alone (see `recycle`) and holds `capacity >= n`
            // bytes; `data` is not its storage (that is only lent out by `receive`, which
            // has taken the spare out of its slot).
            let bytes = unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), storage(&spare), n);
                seal(spare.bytes.into_bound(py), n)
            };
            return ReadBytes {
                bytes,
                capacity: spare.capacity,
            };
        }
    }
    fresh(py, data)
}

fn fresh<'py>(py: Python<'py>, data: &[u8]) -> ReadBytes<'py> {
    ReadBytes {
        bytes: PyBytes::new(py, data),
        capacity: data.len(),
    }
}

/// Keeps a read's `bytes` as the spare if nothing else holds it any more.
pub fn recycle(read: ReadBytes<'_>) {
    #[cfg(not(Py_GIL_DISABLED))]
    {
        // SAFETY: attached (we hold a Bound); reading a reference count has no precondition.
        let unshared = unsafe { pyo3::ffi::Py_REFCNT(read.bytes.as_ptr()) } == 1;
        if unshared && read.capacity >= MIN_RECYCLED {
            put_back(Spare {
                bytes: read.bytes.unbind(),
                capacity: read.capacity,
            });
        }
    }
    #[cfg(Py_GIL_DISABLED)]
    drop(read);
}

#[cfg(not(Py_GIL_DISABLED))]
fn take_spare(fits: impl FnOnce(usize) -> bool) -> Option<Spare> {
    SPARE.with_borrow_mut(|slot| match slot {
        Some(spare) if fits(spare.capacity) => slot.take(),
        _ => None,
    })
}

#[cfg(not(Py_GIL_DISABLED))]
fn put_back(spare: Spare) {
    // The spare it replaces (if any) is dropped here: a plain decref, we are attached.
    drop(SPARE.with_borrow_mut(|slot| slot.replace(spare)));
}

/// Where a spare's bytes are stored.
///
/// # Safety
/// `spare.bytes` is an exact `bytes` object (as every spare is).
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn storage(spare: &Spare) -> *mut u8 {
    let object = spare.bytes.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
    std::ptr::addr_of_mut!((*object).ob_sval).cast::<u8>()
}

/// Makes a refilled spare a valid `bytes` of its first `n` bytes: length, trailing NUL,
/// no cached hash.
///
/// # Safety
/// `bytes` is a spare (exact, ours alone) of capacity `>= n`.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn seal(bytes: Bound<'_, PyBytes>, n: usize) -> Bound<'_, PyBytes> {
    let object = bytes.as_ptr().cast::<pyo3::ffi::PyBytesObject>();
    *std::ptr::addr_of_mut!((*object).ob_sval)
        .cast::<u8>()
        .add(n) = 0;
    (*object).ob_base.ob_size = n as pyo3::ffi::Py_ssize_t;
    #[allow(deprecated)] // still present, and still read by bytes_hash
    {
        (*object).ob_shash = -1;
    }
    bytes
}
