//! `GilCell`: the mutable state of the loop, its handles and stream transports.
//!
//! That state is only ever touched by code attached to the interpreter, and attached
//! threads take turns (the GIL); it is never borrowed across a call into Python (a
//! `__del__` or callback might come back for it). So on a GIL build a borrow needs no
//! atomic instruction: a plain flag catches a broken rule (a second borrow panics, which
//! PyO3 turns into an exception), where a mutex would deadlock. A free-threaded build has
//! no GIL to take turns on, so there the cell is a `std::sync::Mutex`.

#[cfg(not(Py_GIL_DISABLED))]
mod imp {
    use std::cell::{Cell, UnsafeCell};
    use std::ops::{Deref, DerefMut};

    pub struct GilCell<T> {
        borrowed: Cell<bool>,
        value: UnsafeCell<T>,
    }

    // SAFETY: every borrow happens on a thread attached to the interpreter (see the
    // module comment), and attached threads run one at a time, with the GIL hand-off
    // ordering their accesses; the flag is only read and written inside those turns.
    // `T: Send` because the value may be borrowed from different threads in turn.
    unsafe impl<T: Send> Sync for GilCell<T> {}

    impl<T> GilCell<T> {
        pub const fn new(value: T) -> Self {
            Self {
                borrowed: Cell::new(false),
                value: UnsafeCell::new(value),
            }
        }

        /// Borrows the value; panics if it is already borrowed.
        pub fn lock(&self) -> GilGuard<'_, T> {
            self.try_lock()
                .expect("ferroloop: state borrowed twice (re-entered while borrowed)")
        }

        /// Borrows the value, or `None` if it is already borrowed.
        pub fn try_lock(&self) -> Option<GilGuard<'_, T>> {
            debug_assert!(
                // SAFETY: PyGILState_Check only reads the calling thread's state.
                unsafe { pyo3::ffi::PyGILState_Check() } == 1,
                "GilCell borrowed by a thread not attached to the interpreter"
            );
            if self.borrowed.replace(true) {
                return None;
            }
            Some(GilGuard { cell: self })
        }

        /// The value, through exclusive access (no borrow can be outstanding).
        pub fn get_mut(&mut self) -> &mut T {
            self.value.get_mut()
        }
    }

    pub struct GilGuard<'a, T> {
        cell: &'a GilCell<T>,
    }

    impl<T> Deref for GilGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: this guard is the only borrow (the flag), for its lifetime.
            unsafe { &*self.cell.value.get() }
        }
    }

    impl<T> DerefMut for GilGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`; `&mut self` makes this the only use of the guard.
            unsafe { &mut *self.cell.value.get() }
        }
    }

    impl<T> Drop for GilGuard<'_, T> {
        fn drop(&mut self) {
            self.cell.borrowed.set(false);
        }
    }
}

#[cfg(Py_GIL_DISABLED)]
mod imp {
    use std::sync::{Mutex, MutexGuard};

    pub struct GilCell<T>(Mutex<T>);
    pub type GilGuard<'a, T> = MutexGuard<'a, T>;

    impl<T> GilCell<T> {
        pub const fn new(value: T) -> Self {
            Self(Mutex::new(value))
        }

        pub fn lock(&self) -> GilGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        pub fn try_lock(&self) -> Option<GilGuard<'_, T>> {
            self.0.try_lock().ok()
        }

        pub fn get_mut(&mut self) -> &mut T {
            self.0
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}

pub use imp::{GilCell, GilGuard};
