//! Following a stream of log spans that is published live but also durable elsewhere: take
//! what continues from where we are from the live channel, and say when to read instead (we
//! are behind what was published, or the channel dropped items we had not taken).
//!
//! The publisher moves its `published` mark to a span's end *before* sending the span, and
//! publishes only what can be read back: so whatever the channel lost lies below `published`,
//! where a read finds it.

use protocol::Version;
use tokio::sync::{broadcast, watch};

/// A run of log versions `first..end`.
pub trait Span: Clone {
    fn first(&self) -> Version;
    fn end(&self) -> Version;
}

/// What to do next.
pub enum Next<T> {
    /// The span that continues from the position (the position has moved to its end).
    Live(T),
    /// Read `from..to` elsewhere, then [`Tail::advance`].
    Read { from: Version, to: Version },
}

/// The publisher has gone: nothing more will come.
#[derive(Debug)]
pub struct Closed;

/// One follower of a live stream of spans.
pub struct Tail<T> {
    live: broadcast::Receiver<T>,
    published: watch::Receiver<Version>,
    position: Version,
}

impl<T: Span> Tail<T> {
    /// Following from `position`. Subscribe `live` before reading `published`, so that no span
    /// falls between the two.
    pub fn new(
        live: broadcast::Receiver<T>,
        published: watch::Receiver<Version>,
        position: Version,
    ) -> Self {
        Tail {
            live,
            published,
            position,
        }
    }

    /// The next version to take.
    pub fn position(&self) -> Version {
        self.position
    }

    /// A read up to `to` was taken.
    pub fn advance(&mut self, to: Version) {
        self.position = self.position.max(to);
    }

    /// How far the publisher has got.
    pub fn published(&self) -> Version {
        *self.published.borrow()
    }

    /// The next span, or a range to read.
    pub async fn next(&mut self) -> Result<Next<T>, Closed> {
        loop {
            // Whatever is waiting in the channel first: it is cheaper than a read.
            match self.live.try_recv() {
                Ok(span) => match self.take(span) {
                    Some(next) => return Ok(next),
                    None => continue,
                },
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(broadcast::error::TryRecvError::Closed) => return Err(Closed),
                Err(broadcast::error::TryRecvError::Empty) => {}
            }
            let published = self.published();
            if self.position < published {
                return Ok(Next::Read {
                    from: self.position,
                    to: published,
                });
            }
            match self.live.recv().await {
                Ok(span) => {
                    if let Some(next) = self.take(span) {
                        return Ok(next);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(Closed),
            }
        }
    }

    /// A span that continues from the position; `None` for one already taken, or one after a
    /// gap (the gap lies below `published`: the caller reads it on the next turn).
    fn take(&mut self, span: T) -> Option<Next<T>> {
        if span.first() != self.position || span.end() <= self.position {
            return None;
        }
        self.position = span.end();
        Some(Next::Live(span))
    }
}
