//! One request's way back to its consumer: a bounded channel and, while the consumer is behind, a
//! backlog the engine keeps instead of blocking.
//!
//! The engine thread never blocks on a slow consumer: a full channel moves events into the backlog
//! and starts a stall clock; the engine flushes the backlog every loop and aborts the request when
//! the consumer has taken nothing for `stream_timeout` (a client that stopped reading its stream).
//! Buffering per request is therefore bounded by the channel capacity plus what the request
//! generates within `stream_timeout` (and never more than its `max_tokens`).
//!
//! The channel has one slot more than the events use: the outbox reserves it when it is made, so
//! that a request aborted for the timeout can still tell its consumer why
//! ([`StreamEvent::ClientTimeout`], after the events already queued) instead of closing the
//! stream without a word (which reads as the engine having died). The clock itself only sees the
//! channel: the server keeps socket send buffers small so that a client that stops reading fills
//! it soon.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::OwnedPermit;

use crate::request::StreamEvent;

pub(crate) struct Outbox {
    tx: tmpsc::Sender<StreamEvent>,
    /// Events the channel had no room for, oldest first.
    backlog: VecDeque<StreamEvent>,
    /// When the consumer last fell behind (the channel was full); `None` while it keeps up.
    stalled_since: Option<Instant>,
    /// The reserved last slot of the channel (`None` if the consumer was gone at the start).
    last: Option<OwnedPermit<StreamEvent>>,
}

impl Outbox {
    /// An outbox over `tx`, whose channel must have room for one event more than the events
    /// are to use (reserved here for the last word).
    pub fn new(tx: tmpsc::Sender<StreamEvent>) -> Self {
        let last = tx.clone().try_reserve_owned().ok();
        Self {
            tx,
            backlog: VecDeque::new(),
            stalled_since: None,
            last,
        }
    }

    /// Gives up on a consumer that took nothing for `after`: drops what it had not been sent
    /// and queues [`StreamEvent::ClientTimeout`] in the reserved slot, behind the events already
    /// in the channel.
    pub fn time_out(&mut self, after: Duration) {
        self.backlog.clear();
        if let Some(p) = self.last.take() {
            p.send(StreamEvent::ClientTimeout { after });
        }
    }

    /// Queues `ev` after everything not yet taken; never blocks. Events to a consumer that is
    /// gone are dropped.
    pub fn send(&mut self, ev: StreamEvent, now: Instant) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
            return;
        }
        match self.tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                self.backlog.push_back(ev);
                self.stalled_since.get_or_insert(now);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Moves what fits from the backlog into the channel; true when nothing is left pending.
    pub fn flush(&mut self, now: Instant) -> bool {
        while let Some(ev) = self.backlog.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => self.stalled_since = Some(now),
                Err(TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return false;
                }
                Err(TrySendError::Closed(_)) => self.backlog.clear(),
            }
        }
        self.stalled_since = None;
        true
    }

    /// True when the consumer has taken nothing for longer than `timeout` while events waited.
    pub fn timed_out(&self, now: Instant, timeout: Duration) -> bool {
        self.stalled_since
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }

    /// The consumer dropped its end (the client went away).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Events held back in the engine (not counting the channel's).
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> StreamEvent {
        StreamEvent::Text(s.into())
    }

    #[test]
    fn a_full_channel_backs_up_in_order_and_flushes() {
        let (tx, mut rx) = tmpsc::channel(3);
        let mut o = Outbox::new(tx);
        let t0 = Instant::now();
        for s in ["a", "b", "c", "d"] {
            o.send(text(s), t0);
        }
        assert_eq!(o.backlog_len(), 2);
        assert!(!o.flush(t0));
        assert_eq!(rx.try_recv().unwrap(), text("a"));
        assert!(!o.flush(t0), "one slot freed, one event still waits");
        assert_eq!(rx.try_recv().unwrap(), text("b"));
        assert_eq!(rx.try_recv().unwrap(), text("c"));
        assert!(o.flush(t0));
        assert_eq!(rx.try_recv().unwrap(), text("d"));
        assert!(!o.timed_out(t0 + Duration::from_secs(100), Duration::from_secs(1)));
    }

    #[test]
    fn a_consumer_that_takes_nothing_times_out() {
        let (tx, _rx) = tmpsc::channel(2);
        let mut o = Outbox::new(tx);
        let t0 = Instant::now();
        o.send(text("a"), t0);
        o.send(text("b"), t0);
        let limit = Duration::from_secs(5);
        assert!(!o.timed_out(t0 + Duration::from_secs(4), limit));
        assert!(!o.flush(t0 + Duration::from_secs(4)));
        assert!(o.timed_out(t0 + Duration::from_secs(6), limit));
    }

    #[test]
    fn progress_restarts_the_stall_clock() {
        let (tx, mut rx) = tmpsc::channel(2);
        let mut o = Outbox::new(tx);
        let t0 = Instant::now();
        for s in ["a", "b", "c"] {
            o.send(text(s), t0);
        }
        rx.try_recv().unwrap();
        let t4 = t0 + Duration::from_secs(4);
        assert!(!o.flush(t4));
        assert!(!o.timed_out(t0 + Duration::from_secs(8), Duration::from_secs(5)));
        assert!(o.timed_out(t0 + Duration::from_secs(10), Duration::from_secs(5)));
    }

    #[test]
    fn a_timed_out_consumer_finds_why_after_the_queued_events() {
        // Capacity 3: two for events, one reserved.
        let (tx, mut rx) = tmpsc::channel(3);
        let mut o = Outbox::new(tx);
        let t0 = Instant::now();
        for s in ["a", "b", "c", "d"] {
            o.send(text(s), t0);
        }
        assert_eq!(
            o.backlog_len(),
            2,
            "the reserved slot is not used by events"
        );
        o.time_out(Duration::from_secs(5));
        assert_eq!(o.backlog_len(), 0);
        drop(o);
        assert_eq!(rx.try_recv().unwrap(), text("a"));
        assert_eq!(rx.try_recv().unwrap(), text("b"));
        let last = rx.try_recv().unwrap();
        assert_eq!(
            last,
            StreamEvent::ClientTimeout {
                after: Duration::from_secs(5)
            }
        );
        assert!(last.is_terminal());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_closed_consumer_drops_events() {
        let (tx, rx) = tmpsc::channel(1);
        let mut o = Outbox::new(tx);
        drop(rx);
        o.send(text("a"), Instant::now());
        assert!(o.is_closed());
        assert_eq!(o.backlog_len(), 0);
        assert!(o.flush(Instant::now()));
    }
}
