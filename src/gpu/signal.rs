//! A one-shot signal from a wgpu callback to an `async` caller.
//!
//! wgpu reports buffer mapping and finished submissions through callbacks. Natively they
//! run inside `Device::poll`, so the future below is already complete when first polled;
//! in the browser they run from the JavaScript event loop, and the future waits for them
//! without blocking the page. One code path serves both.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Shared<T> {
    value: Option<T>,
    /// Set when the sender was dropped without sending (e.g. the device was lost).
    closed: bool,
    waker: Option<Waker>,
}

/// The sending half: moved into a wgpu callback.
pub(crate) struct Sender<T>(Arc<Mutex<Shared<T>>>);

/// The receiving half: resolves to the value, or `None` if the sender was dropped.
pub(crate) struct Receiver<T>(Arc<Mutex<Shared<T>>>);

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        value: None,
        closed: false,
        waker: None,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

fn lock<T>(m: &Mutex<Shared<T>>) -> std::sync::MutexGuard<'_, Shared<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Sender<T> {
    pub(crate) fn send(self, value: T) {
        lock(&self.0).value = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.closed = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.0);
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_a_value_sent_before_or_after_the_first_poll() {
        let (tx, rx) = channel();
        tx.send(7u32);
        assert_eq!(pollster::block_on(rx), Some(7));

        let (tx, rx) = channel::<u32>();
        let waiter = std::thread::spawn(move || pollster::block_on(rx));
        std::thread::sleep(std::time::Duration::from_millis(20));
        tx.send(9);
        assert_eq!(waiter.join().unwrap(), Some(9));
    }

    #[test]
    fn a_dropped_sender_ends_the_wait() {
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(pollster::block_on(rx), None);
    }
}
