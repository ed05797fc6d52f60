//! In-memory bans and mutes with expiry.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::BoxFut;
use crate::clock::now_ms;
use crate::ids::{RoomId, UserId};
use crate::ports::{Moderation, ModerationError, Sanction};

#[derive(Default)]
pub struct MemoryModeration {
    bans: Mutex<HashMap<UserId, Sanction>>,
    mutes: Mutex<HashMap<(RoomId, UserId), Sanction>>,
}

fn active(s: &Sanction, now: u64) -> bool {
    s.until_ms.is_none_or(|until| until > now)
}

fn ready<T: Send + 'static>(v: T) -> BoxFut<'static, Result<T, ModerationError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl Moderation for MemoryModeration {
    fn ban(&self, user: &UserId, sanction: Sanction) -> BoxFut<'_, Result<(), ModerationError>> {
        self.bans.lock().insert(user.clone(), sanction);
        ready(())
    }

    fn unban(&self, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>> {
        let now = now_ms();
        ready(
            self.bans
                .lock()
                .remove(user)
                .is_some_and(|s| active(&s, now)),
        )
    }

    fn banned(&self, user: &UserId) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>> {
        let now = now_ms();
        let mut bans = self.bans.lock();
        let found = match bans.get(user) {
            Some(s) if active(s, now) => Some(s.clone()),
            Some(_) => {
                bans.remove(user);
                None
            }
            None => None,
        };
        ready(found)
    }

    fn mute(
        &self,
        room: &RoomId,
        user: &UserId,
        sanction: Sanction,
    ) -> BoxFut<'_, Result<(), ModerationError>> {
        self.mutes
            .lock()
            .insert((room.clone(), user.clone()), sanction);
        ready(())
    }

    fn unmute(&self, room: &RoomId, user: &UserId) -> BoxFut<'_, Result<bool, ModerationError>> {
        let now = now_ms();
        let removed = self.mutes.lock().remove(&(room.clone(), user.clone()));
        ready(removed.is_some_and(|s| active(&s, now)))
    }

    fn muted(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> BoxFut<'_, Result<Option<Sanction>, ModerationError>> {
        let now = now_ms();
        let mut mutes = self.mutes.lock();
        let key = (room.clone(), user.clone());
        let found = match mutes.get(&key) {
            Some(s) if active(s, now) => Some(s.clone()),
            Some(_) => {
                mutes.remove(&key);
                None
            }
            None => None,
        };
        ready(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bans_and_mutes_expire() {
        let m = MemoryModeration::default();
        let u = UserId::parse("u").unwrap();
        let r = RoomId::parse("r").unwrap();
        m.ban(
            &u,
            Sanction {
                until_ms: Some(now_ms() - 1),
                reason: "old".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(m.banned(&u).await.unwrap(), None);
        m.ban(
            &u,
            Sanction {
                until_ms: None,
                reason: "spam".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(m.banned(&u).await.unwrap().unwrap().reason, "spam");
        assert!(m.unban(&u).await.unwrap());
        assert_eq!(m.banned(&u).await.unwrap(), None);

        m.mute(
            &r,
            &u,
            Sanction {
                until_ms: Some(now_ms() + 60_000),
                reason: "cool down".into(),
            },
        )
        .await
        .unwrap();
        assert!(m.muted(&r, &u).await.unwrap().is_some());
        assert!(
            m.muted(&RoomId::parse("other").unwrap(), &u)
                .await
                .unwrap()
                .is_none()
        );
        assert!(m.unmute(&r, &u).await.unwrap());
        assert!(m.muted(&r, &u).await.unwrap().is_none());
    }
}
