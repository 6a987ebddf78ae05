//! Taking a lock whose last holder panicked.
//!
//! std poisons a `Mutex` or `RwLock` when a thread panics while holding it, and refuses it to
//! everyone after. What ondisk keeps behind its locks (caches, tables of waiters and
//! connections, the current TLS configuration, the state machine's current generation, the
//! REPL's printer) is replaced or changed a whole value at a time, so such a panic leaves nothing
//! half-changed, and refusing every later lock would only stop the node or the client for good.
//! Every lock is taken through these functions, which take over a poisoned one; a value that
//! could be left half-changed must not be kept behind one of them.

use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

/// Locks `mutex`, taking it over if it is poisoned.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, taking it over if it is poisoned.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, taking it over if it is poisoned.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
