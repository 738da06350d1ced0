//! Invalidation: every gateway forgets what an announcement names within a second.
//!
//! Whoever writes a key record publishes its id on `{prefix}invalidate` (`*` for everything).
//! This task holds a subscription to that channel, applies each announcement to the cache, and
//! pings the subscription so a dead connection is noticed and replaced. Each time it
//! (re)subscribes, announcements may have been missed, so the cache is told to trust nothing
//! it holds as unknown and to confirm its known keys again.
//!
//! Where it subscribes is the store's [`AnnouncementHub`]: the one server; under Sentinel the
//! master, and again on the new master as soon as it moves (a demoted or dead master may not
//! carry what is published on the new one); in a cluster any node, the next one when it fails.

use crate::key::KeyId;
use crate::lookup::{Announcement, KeyLookup};
use crate::store::nodes::{AnnouncementHub, Announcements};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// How often the subscription is pinged, and how long a ping may take.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait between attempts to subscribe again.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// Parses one announcement; `None` for a message that names nothing.
pub fn parse(payload: &str) -> Option<Announcement> {
    match payload.trim() {
        "*" => Some(Announcement::Everything),
        id => KeyId::from_hex(id).map(Announcement::Key),
    }
}

/// Runs the subscription for ever, reconnecting as needed; the lookup hears each loss and resumption.
pub async fn listen(announcements: Announcements, lookup: Arc<KeyLookup>) {
    let Announcements { hub, channel } = announcements;
    let mut logged_down = false;
    for attempt in 0usize.. {
        // Taken before the node is chosen, so that a move in between is not missed.
        let moved = hub.moved();
        let Some(client) = hub.node(attempt) else {
            // No master named yet: subscribe as soon as one is.
            hub.wait_for_node(RESUBSCRIBE_DELAY * 4).await;
            continue;
        };
        match subscribe(&client, &channel).await {
            Ok(pubsub) => {
                lookup.announcements_resumed();
                log::info!("listening for invalidations on {channel}{}", at_node(&hub, &client));
                logged_down = false;
                let reason = tokio::select! {
                    reason = follow(pubsub, &lookup) => reason,
                    _ = moved => "the master moved",
                };
                lookup.announcements_lost();
                log::warn!("invalidation subscription lost ({reason}); subscribing again");
                if reason == "the master moved" {
                    continue; // at once: the new master is known
                }
            }
            Err(e) if !logged_down => {
                log::warn!("cannot subscribe to invalidations: {e}; retrying");
                logged_down = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

/// ` at HOST:PORT` where the node changes over time (Sentinel, cluster); nothing otherwise.
fn at_node(hub: &AnnouncementHub, client: &redis::Client) -> String {
    match hub {
        AnnouncementHub::Node(_) => String::new(),
        _ => format!(" at {}", client.get_connection_info().addr()),
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(PING_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out"))))
}

/// Applies announcements until the subscription fails; returns why it ended.
async fn follow(pubsub: redis::aio::PubSub, lookup: &KeyLookup) -> &'static str {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return "connection closed" };
                let payload: String = message.get_payload().unwrap_or_default();
                match parse(&payload) {
                    Some(announcement) => lookup.announce(announcement),
                    None => log::warn!("ignoring an invalidation that names no key id"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<()>()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "ping failed",
                    Err(_) => return "ping timed out",
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_name_an_id_or_everything() {
        let id = crate::key::ApiKey::from_cli("k").id();
        assert_eq!(parse(&id.to_hex()), Some(Announcement::Key(id)));
        assert_eq!(parse("*"), Some(Announcement::Everything));
        assert_eq!(parse("not-an-id"), None);
    }
}
