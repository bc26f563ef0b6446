//! Work moved off the leader's runtime thread (file writes, renders, counting under a lock) with
//! one copy of the runtime's blocking-task code.
//!
//! `tokio::task::spawn_blocking` is a separate copy of the task's code (its cell, its vtable, its
//! join handle) for each closure type it is called with: a dozen call sites were a dozen copies in
//! `libappsignal.so`. Here every call spawns one type, a boxed closure that returns its result
//! boxed as `Any`; each caller only adds its closure and the unboxing.

use std::any::Any;
use std::marker::PhantomData;

use tokio::task::{JoinError, JoinHandle};

type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// Runs `work` on the blocking pool and waits for it; `Err` when it panicked (or the runtime is
/// shutting down), as `spawn_blocking`'s join handle says.
pub async fn run<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, JoinError> {
    start(work).join().await
}

/// Starts `work` on the blocking pool (at once, not when awaited).
pub fn start<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Started<R> {
    let job: Job = Box::new(move || Box::new(work()));
    Started {
        handle: spawn(job),
        result: PhantomData,
    }
}

/// A job of [`start`]: its join handle.
pub struct Started<R> {
    handle: JoinHandle<Box<dyn Any + Send>>,
    result: PhantomData<fn() -> R>,
}

impl<R: 'static> Started<R> {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the job's result (`Err`: it panicked, or the runtime is shutting down).
    pub async fn join(self) -> Result<R, JoinError> {
        match self.handle.await?.downcast::<R>() {
            Ok(out) => Ok(*out),
            // The job of `start` returns an `R`.
            Err(_) => unreachable!("a blocking job returned another type"),
        }
    }
}

/// The one instantiation of `spawn_blocking`.
#[inline(never)]
fn spawn(job: Job) -> JoinHandle<Box<dyn Any + Send>> {
    tokio::task::spawn_blocking(job)
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_back_and_panics_are_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(super::run(|| 6 * 7).await.unwrap(), 42);
            assert_eq!(super::run(|| String::from("text")).await.unwrap(), "text");
            assert!(super::run(|| -> u8 { panic!("in a blocking job") })
                .await
                .is_err());
        });
    }
}
