//! Request bodies as the server hands them to the router: each records whether it has been read to its
//! end (so an answer given before that says `Connection: close`), and takes room in the process's body
//! budget (`http.max_body_buffer_bytes`) when it is first read, so the bodies being read and answered
//! never hold more than that between them.
//!
//! A body with a `Content-Length` reserves that many bytes (the server refused it before reading if it
//! was over `api.max_body_bytes`); a chunked body, whose size is unknown, reserves `api.max_body_bytes`.
//! A body reserves all it may need at once or waits, so bodies never hold part of what they need while
//! waiting for the rest of it. The reservation lasts until the request has been answered (the handler
//! holds what it read until then), and a request answered from its head alone never reserves anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::metrics as m;

/// The budget counts in units of this many bytes (a semaphore takes at most `u32::MAX` permits at once).
const UNIT: u64 = 1024;

/// Room for request bodies, shared by every connection of a listener (the process has one).
#[derive(Clone, Debug)]
pub(super) struct Budget {
    room: Arc<Semaphore>,
    units: u64,
    /// What a body of unknown length reserves (`api.max_body_bytes`).
    max_body_bytes: u64,
}

impl Budget {
    pub(super) fn new(bytes: usize, max_body_bytes: usize) -> Self {
        let units = units(bytes as u64).clamp(1, Semaphore::MAX_PERMITS as u64);
        Self {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
            max_body_bytes: max_body_bytes as u64,
        }
    }

    /// Units a body reserves: its length, or the body limit for a body of unknown length, never more
    /// than the whole budget (a misconfigured budget still lets a body through, one at a time).
    fn units_for(&self, size: &SizeHint) -> u64 {
        let bytes = size.exact().unwrap_or(self.max_body_bytes);
        units(bytes).min(self.units)
    }
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

/// What the server knows of one request's body while it is answered.
#[derive(Debug, Default)]
pub(super) struct Progress {
    finished: AtomicBool,
    waiting: AtomicBool,
    reservation: Mutex<Option<Reservation>>,
}

impl Progress {
    /// The body has been read to its end (or there was none).
    pub(super) fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The body is waiting for room in the budget.
    pub(super) fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Room taken in the budget; given back when dropped.
#[derive(Debug)]
struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        metrics::gauge!(m::HTTP_BODY_BUFFER_BYTES).decrement(self.bytes as f64);
    }
}

type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body that takes its room in the budget before its first byte is read, and records when it
/// has been read to its end.
pub(super) struct Tracked {
    inner: Incoming,
    progress: Arc<Progress>,
    budget: Budget,
    /// Units still to reserve (0 once reserved, or for a body that needs none).
    need: u64,
    acquiring: Option<Acquiring>,
}

impl Tracked {
    /// Wraps `inner`; `progress` is shared with whoever answers the request.
    pub(super) fn new(inner: Incoming, budget: Budget) -> (Self, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        if inner.is_end_stream() {
            progress.finished.store(true, Ordering::Release);
        }
        let need = if inner.is_end_stream() {
            0
        } else {
            budget.units_for(&inner.size_hint())
        };
        let tracked = Self {
            inner,
            progress: progress.clone(),
            budget,
            need,
            acquiring: None,
        };
        (tracked, progress)
    }

    /// Takes the body's room in the budget: `Ready` once it has it.
    fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.need == 0 {
            return Poll::Ready(());
        }
        let need = self.need;
        let room = &self.budget.room;
        let acquiring = self.acquiring.get_or_insert_with(|| {
            // `need` is at most the budget's units, which fit a semaphore; a semaphore takes u32 at once.
            let permits = u32::try_from(need).unwrap_or(u32::MAX);
            Box::pin(room.clone().acquire_many_owned(permits))
        });
        match acquiring.as_mut().poll(cx) {
            Poll::Ready(acquired) => {
                self.acquiring = None;
                self.need = 0;
                self.progress.waiting.store(false, Ordering::Release);
                // The semaphore is never closed; were it, the body would go on without room.
                if let Ok(permit) = acquired {
                    let bytes = need * UNIT;
                    metrics::gauge!(m::HTTP_BODY_BUFFER_BYTES).increment(bytes as f64);
                    let reservation = Reservation {
                        _permit: permit,
                        bytes,
                    };
                    *self
                        .progress
                        .reservation
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(reservation);
                }
                Poll::Ready(())
            }
            Poll::Pending => {
                if !self.progress.waiting.swap(true, Ordering::AcqRel) {
                    metrics::counter!(m::HTTP_BODY_BUFFER_WAITS).increment(1);
                }
                Poll::Pending
            }
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.poll_reserve(cx).is_pending() {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.progress.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reserves_its_length_or_the_limit_and_never_more_than_the_budget() {
        let budget = Budget::new(8 * 1024, 4 * 1024);
        assert_eq!(budget.units, 8);
        assert_eq!(budget.units_for(&SizeHint::with_exact(1)), 1);
        assert_eq!(budget.units_for(&SizeHint::with_exact(1024)), 1);
        assert_eq!(budget.units_for(&SizeHint::with_exact(1025)), 2);
        // Unknown length (chunked): the body limit.
        assert_eq!(budget.units_for(&SizeHint::new()), 4);
        assert_eq!(budget.units_for(&SizeHint::with_exact(1 << 40)), 8);
        // A budget under one unit still holds one body.
        assert_eq!(Budget::new(10, 10).units, 1);
    }
}
