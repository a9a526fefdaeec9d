//! Engine streams to SSE: the request streams of one response merged into `(choice, event)`, a
//! [`StreamMachine`] turning them into frames, keep-alive comments, and `data: [DONE]`.
//!
//! Invariant: the SSE body owns the `RequestStream`s, so when a client disconnects and axum drops
//! the body, the streams drop and the engine aborts those requests (freeing their KV blocks).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, SelectAll, Stream, StreamExt};
use tokenfab_engine::{HttpTimer, RequestStream, StreamEvent};

use crate::stream::{Frame, StreamMachine};

/// What the engine sends when a stream ends without `End` or `Error` (the engine thread died).
pub const ENGINE_GONE: &str = "The engine stopped before the request finished.";

/// One request stream as `(choice, event)`, ending after its terminal event; a stream that closes
/// early yields an `Error` instead.
fn events(choice: usize, rs: RequestStream) -> BoxStream<'static, (usize, StreamEvent)> {
    stream::unfold(Some(rs), move |state| async move {
        let mut rs = state?;
        match rs.recv().await {
            None => Some(((choice, StreamEvent::Error(ENGINE_GONE.into())), None)),
            Some(ev) if ev.is_terminal() => Some(((choice, ev), None)),
            Some(ev) => Some(((choice, ev), Some(rs))),
        }
    })
    .boxed()
}

/// All choices' events, interleaved as they arrive.
pub fn merge(streams: Vec<RequestStream>) -> SelectAll<BoxStream<'static, (usize, StreamEvent)>> {
    stream::select_all(streams.into_iter().enumerate().map(|(i, rs)| events(i, rs)))
}

fn to_event(f: Frame) -> Event {
    match f {
        Frame::Chunk(v) | Frame::Error(v) => Event::default().data(v.to_string()),
        Frame::Done => Event::default().data("[DONE]"),
    }
}

/// The frames of a machine driven over the merged streams, ending after `[DONE]`.
pub fn frames<M: StreamMachine>(
    mut machine: M,
    streams: Vec<RequestStream>,
) -> impl Stream<Item = Frame> + Send + 'static {
    let pending: VecDeque<Frame> = machine.start().into();
    let merged = merge(streams);
    stream::unfold(
        (machine, merged, pending, false),
        |(mut m, mut merged, mut pending, mut finished)| async move {
            loop {
                if let Some(f) = pending.pop_front() {
                    return Some((f, (m, merged, pending, finished)));
                }
                if finished || m.is_done() {
                    return None;
                }
                match merged.next().await {
                    Some((i, ev)) => pending.extend(m.on_event(i, ev)),
                    None => {
                        // Every stream ended but the machine did not finish: close properly.
                        finished = true;
                        if !m.is_done() {
                            pending.extend(m.on_event(0, StreamEvent::Error(ENGINE_GONE.into())));
                        }
                    }
                }
            }
        },
    )
}

/// A machine whose work, and the serializing of its frames, count as the engine's `http` phase.
struct Timed<M> {
    inner: M,
    timer: Option<HttpTimer>,
}

impl<M: StreamMachine> StreamMachine for Timed<M> {
    fn start(&mut self) -> Vec<Frame> {
        self.inner.start()
    }
    fn on_event(&mut self, choice: usize, ev: StreamEvent) -> Vec<Frame> {
        match &self.timer {
            Some(t) => t.time(|| self.inner.on_event(choice, ev)),
            None => self.inner.on_event(choice, ev),
        }
    }
    fn is_done(&self) -> bool {
        self.inner.is_done()
    }
}

/// An SSE response over a machine and its engine streams.
pub fn sse_response<M: StreamMachine>(
    machine: M,
    streams: Vec<RequestStream>,
    keep_alive: Duration,
) -> Response {
    let timer = streams.first().map(RequestStream::http_timer);
    let machine = Timed {
        inner: machine,
        timer: timer.clone(),
    };
    let body = frames(machine, streams).map(move |f| {
        Ok::<_, Infallible>(match &timer {
            Some(t) => t.time(|| to_event(f)),
            None => to_event(f),
        })
    });
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}
