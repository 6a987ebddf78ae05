//! A thread that works through a queue, for storage work that must not run on openraft's core
//! (syncing the log, compacting purged entries, trimming compacted history).

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

/// A thread that takes work from a queue. Dropping the last handle closes the queue and waits
/// for the thread, so the database is closed only once every store handle and thread is done.
pub(super) struct Worker<T> {
    queue: Option<mpsc::Sender<T>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts a thread named `name` running `work` over the queue until the queue closes.
    pub(super) fn start(
        name: &str,
        work: impl FnOnce(mpsc::Receiver<T>) + Send + 'static,
    ) -> io::Result<Arc<Self>> {
        let (queue, pending) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || work(pending))?;
        Ok(Arc::new(Worker {
            queue: Some(queue),
            thread: Some(thread),
        }))
    }

    pub(super) fn enqueue(&self, item: T) -> io::Result<()> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(item).ok())
            .ok_or_else(|| io::Error::other("a log store thread stopped"))
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
