//! The rate limiter's and moderation's suites under their old paths (they live beside their
//! ports: [`crate::ports::limits::suite`], [`crate::ports::moderation::suite`]).

pub use crate::ports::limits::suite::rate_limiter_suite;
pub use crate::ports::moderation::suite::moderation_suite;
