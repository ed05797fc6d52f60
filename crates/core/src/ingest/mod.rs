//! Ingest: the only way into a room's stream.
//!
//! Every message — a client's chat line or a gift from the server API — passes the same
//! pipeline, in this order: text checks (length, UTF-8, control and direction-override
//! characters), bans and mutes, token-bucket limits per user and per room (both or neither), the
//! sensitive-word filter (reject or mask), then a time-ordered id and the bus. Trusted sources
//! (the server API, the outbox) skip the limits, the filter, bans and mutes — not the text
//! checks.
//!
//! The gateway reaches ingest through the [`Ingest`] port: a direct call in standalone, gRPC in
//! the distributed mode. Ingest never talks to connections.

pub mod filter;
pub mod ids;

use std::sync::Arc;

use parking_lot::RwLock;

use crate::BoxFut;
use crate::clock::now_ms;
use crate::config::{FilterMode, IngestConfig};
use crate::ids::MsgId;
use crate::metrics::{DropReason, Metrics};
use crate::model::InboundMessage;
use crate::ports::{Bus, BusError, LimitError, Moderation, RateLimiter};
use filter::WordFilter;
use ids::IdGenerator;

/// The port in front of this pipeline (defined with the other ports).
pub use crate::ports::{Accepted, ChatRequest, Ingest, IngestError};

/// The text checks every message passes.
pub fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("text must not be empty".into());
    }
    let mut n = 0;
    for c in text.chars() {
        n += 1;
        if c.is_control() {
            return Err(format!(
                "text contains the control character U+{:04X}",
                c as u32
            ));
        }
        if crate::text::is_bidi_control(c) {
            return Err(format!(
                "text contains the direction-override character U+{:04X}",
                c as u32
            ));
        }
    }
    if n > max_chars {
        return Err(format!(
            "text is {n} characters long; at most {max_chars} are allowed"
        ));
    }
    Ok(())
}

pub struct IngestService {
    cfg: IngestConfig,
    bus: Arc<dyn Bus>,
    limiter: Arc<dyn RateLimiter>,
    moderation: Arc<dyn Moderation>,
    filter: RwLock<Arc<WordFilter>>,
    ids: Arc<IdGenerator>,
    metrics: Arc<Metrics>,
}

impl IngestService {
    pub fn new(
        cfg: IngestConfig,
        bus: Arc<dyn Bus>,
        limiter: Arc<dyn RateLimiter>,
        moderation: Arc<dyn Moderation>,
        filter: WordFilter,
        metrics: Arc<Metrics>,
    ) -> Self {
        IngestService {
            ids: Arc::new(IdGenerator::new(cfg.node_number.unwrap_or(0))),
            cfg,
            bus,
            limiter,
            moderation,
            filter: RwLock::new(Arc::new(filter)),
            metrics,
        }
    }

    /// Swaps in a new word list (for reloading without a restart).
    pub fn set_filter(&self, filter: WordFilter) {
        *self.filter.write() = Arc::new(filter);
    }

    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    /// Makes a message id (for messages that do not go through the bus, like critical ones).
    pub fn next_id(&self) -> MsgId {
        self.ids.next()
    }

    /// The id generator itself (the server API makes critical messages' ids with it, so that
    /// they never collide with this node's chat ids).
    pub fn ids(&self) -> Arc<IdGenerator> {
        self.ids.clone()
    }

    async fn run(&self, req: ChatRequest) -> Result<Accepted, IngestError> {
        check_text(&req.text, self.cfg.max_text_chars).map_err(|e| {
            self.metrics.count_drop(DropReason::Rejected, 1);
            IngestError::BadRequest(e)
        })?;

        let unavailable = |e: &dyn std::fmt::Display| IngestError::Unavailable(e.to_string());
        // The platform's own messages (API, outbox) are not subject to its users' sanctions: a
        // paid gift committed by the backend is delivered even if its sender was muted since.
        if !req.trusted
            && let Some(ban) = self
                .moderation
                .banned(&req.user)
                .await
                .map_err(|e| unavailable(&e))?
        {
            self.metrics.count_drop(DropReason::Moderated, 1);
            return Err(IngestError::Banned {
                until_ms: ban.until_ms,
                reason: ban.reason,
            });
        }
        if !req.trusted
            && let Some(mute) = self
                .moderation
                .muted(&req.room, &req.user)
                .await
                .map_err(|e| unavailable(&e))?
        {
            self.metrics.count_drop(DropReason::Moderated, 1);
            return Err(IngestError::Muted {
                until_ms: mute.until_ms,
                reason: mute.reason,
            });
        }

        let mut text = req.text;
        if !req.trusted {
            let keys = [
                (format!("u:{}", req.user), self.cfg.user_limit.into()),
                (format!("r:{}", req.room), self.cfg.room_limit.into()),
            ];
            match self.limiter.acquire(&keys).await {
                Ok(()) => {}
                Err(LimitError::Limited(l)) => {
                    self.metrics.count_drop(DropReason::RateLimited, 1);
                    return Err(IngestError::RateLimited {
                        retry_after_ms: l.retry_after.as_millis().max(1) as u64,
                        scope: if l.index == 0 { "user" } else { "room" },
                    });
                }
                Err(e @ LimitError::Unavailable(_)) => return Err(unavailable(&e)),
            }
            let filter = self.filter.read().clone();
            if !filter.is_empty() {
                match self.cfg.filter_mode {
                    FilterMode::Reject if filter.contains_match(&text) => {
                        self.metrics.count_drop(DropReason::Rejected, 1);
                        return Err(IngestError::ContentRejected);
                    }
                    FilterMode::Mask => {
                        if let Some(masked) = filter.mask(&text) {
                            text = masked;
                        }
                    }
                    FilterMode::Reject => {}
                }
            }
        }

        let (msg_id, from_outbox) = match req.msg_id {
            Some(id) if req.trusted => (id, true),
            _ => (self.ids.next(), false),
        };
        let msg = InboundMessage {
            room: req.room,
            msg_id,
            user: req.user,
            name: req.name,
            text: text.clone(),
            kind: req.kind,
            ts: now_ms(),
            payload: req.payload,
            from_outbox,
        };
        self.bus.publish(msg).await.map_err(|e| match e {
            BusError::Closed => IngestError::Unavailable("server is shutting down".into()),
            e => unavailable(&e),
        })?;
        self.metrics.messages_in.inc();
        Ok(Accepted { msg_id, text })
    }
}

impl Ingest for IngestService {
    fn submit(&self, req: ChatRequest) -> BoxFut<'_, Result<Accepted, IngestError>> {
        Box::pin(self.run(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RoomId, UserId};
    use crate::memory::{MemoryBus, MemoryModeration, MemoryRateLimiter};
    use crate::model::MsgKind;
    use crate::ports::{BusConsumer, BusEvent, Sanction};

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            room: RoomId::parse("r").unwrap(),
            user: UserId::parse("u").unwrap(),
            name: None,
            text: text.into(),
            kind: MsgKind::Chat,
            payload: None,
            trusted: false,
            msg_id: None,
        }
    }

    fn service(
        cfg: IngestConfig,
        words: &[&str],
    ) -> (
        IngestService,
        Vec<crate::memory::MemoryConsumer>,
        Arc<MemoryModeration>,
    ) {
        let (bus, consumers) = MemoryBus::new(1, 100);
        let moderation = Arc::new(MemoryModeration::default());
        let s = IngestService::new(
            cfg,
            Arc::new(bus),
            Arc::new(MemoryRateLimiter::default()),
            moderation.clone(),
            WordFilter::from_words(words.iter().copied()).unwrap(),
            Arc::new(Metrics::default()),
        );
        (s, consumers, moderation)
    }

    #[test]
    fn text_checks() {
        assert!(check_text("hello 世界 👋", 10).is_ok());
        assert!(check_text("   ", 10).unwrap_err().contains("empty"));
        assert!(check_text("a\u{0}b", 10).unwrap_err().contains("U+0000"));
        assert!(check_text("a\nb", 10).unwrap_err().contains("U+000A"));
        assert!(check_text("a\u{202E}b", 10).unwrap_err().contains("U+202E"));
        assert!(
            check_text("abcdefghijk", 10)
                .unwrap_err()
                .contains("11 characters")
        );
    }

    #[tokio::test]
    async fn accepts_and_publishes_with_increasing_ids() {
        let (s, mut consumers, _) = service(IngestConfig::default(), &[]);
        let a = s.submit(req("one")).await.unwrap();
        let b = s.submit(req("two")).await.unwrap();
        assert!(a.msg_id < b.msg_id);
        let mut got = Vec::new();
        while got
            .iter()
            .filter(|e| matches!(e, BusEvent::Record(_)))
            .count()
            < 2
        {
            consumers[0].next(&mut got).await.unwrap();
        }
        let got: Vec<_> = got.into_iter().filter_map(BusEvent::into_message).collect();
        assert_eq!(
            got.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
    }

    #[tokio::test]
    async fn limits_filter_and_moderation() {
        let cfg = IngestConfig {
            user_limit: crate::config::LimitConfig {
                rate: 1.0,
                burst: 2.0,
            },
            ..IngestConfig::default()
        };
        let (s, _c, moderation) = service(cfg.clone(), &["spam"]);
        assert_eq!(
            s.submit(req("buy SPAM now")).await,
            Err(IngestError::ContentRejected)
        );
        s.submit(req("ok")).await.unwrap();
        let Err(IngestError::RateLimited {
            scope: "user",
            retry_after_ms,
        }) = s.submit(req("ok")).await
        else {
            panic!("expected the user limit")
        };
        assert!(retry_after_ms > 0 && retry_after_ms <= 1000);
        // Trusted requests skip limits and the filter.
        let trusted = ChatRequest {
            trusted: true,
            msg_id: None,
            ..req("spam")
        };
        assert_eq!(s.submit(trusted).await.unwrap().text, "spam");

        moderation
            .mute(
                &RoomId::parse("r").unwrap(),
                &UserId::parse("u").unwrap(),
                Sanction {
                    until_ms: None,
                    reason: "x".into(),
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            s.submit(req("hi")).await,
            Err(IngestError::Muted { .. })
        ));
        moderation
            .ban(
                &UserId::parse("u").unwrap(),
                Sanction {
                    until_ms: None,
                    reason: "y".into(),
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            s.submit(req("hi")).await,
            Err(IngestError::Banned { .. })
        ));

        let (masking, _c2, _) = service(
            IngestConfig {
                filter_mode: FilterMode::Mask,
                ..cfg
            },
            &["spam"],
        );
        assert_eq!(
            masking.submit(req("no spam here")).await.unwrap().text,
            "no **** here"
        );
    }
}
