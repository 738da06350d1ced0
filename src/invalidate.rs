//! Invalidation: every gateway forgets what an announcement names within a second.
//!
//! Whoever writes a key record publishes its id on `{prefix}invalidate` (`*` for everything).
//! This task holds a subscription to that channel and applies each announcement to the cache.
//! Each time it (re)subscribes, announcements may have been missed, so the cache is told to
//! trust nothing it holds as unknown and to confirm its known keys again, and the membership
//! filter steps aside until rebuilt.
//!
//! What counts as a gap (a time in which an announcement may have been missed) decides how
//! long the filter's last view stays exact. A closed or reset connection, an error on the
//! subscription, or a move of the master is a gap. Silence is not: a frozen store (its process
//! stopped, its connections up) publishes nothing, and whatever is published once it runs
//! again arrives on the same connection, so the subscription and the filter's trust are kept
//! through unanswered pings. A peer gone without a FIN or RST (a dropped network path) looks
//! the same from here; the kernel tells them apart, since a frozen server's kernel still
//! acknowledges what is sent to it and a vanished one's does not. So the subscription's
//! socket has a TCP user timeout ([`HALF_OPEN_BOUND`]) with keepalive probes, and a peer that
//! acknowledges nothing for that long resets the connection: a gap.
//!
//! In a cluster silence is not proof: an announcement published on another node reaches the
//! subscribed one over the cluster bus, which drops messages to a node that stops answering.
//! There an unanswered ping is a gap, as it always was (see [`AnnouncementHub::silence_is_safe`]).
//!
//! Where it subscribes is the store's [`AnnouncementHub`]: the one server; under Sentinel the
//! master, and again on the new master as soon as it moves (a demoted or dead master may not
//! carry what is published on the new one); in a cluster any node, the next one when it fails.

use crate::key::KeyId;
use crate::lookup::{Announcement, KeyLookup};
use crate::store::nodes::{AnnouncementHub, Announcements};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the subscription is pinged: the ping keeps bytes in flight for the user timeout
/// to watch, and in a cluster an answer late by more than this is a gap.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long setting up a subscription may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer may acknowledge nothing (neither a ping nor a keepalive probe) before its
/// connection counts as gone. Long enough for a few retransmissions on a lossy path (the
/// kernel's 200 ms first retry, doubling, has tried four times by 3 s); short enough that a
/// path that has really vanished leaves the filter trusting itself (and refusing a key written
/// and announced meanwhile) no longer than the Sentinel master's own periodic re-check (5 s).
pub const HALF_OPEN_BOUND: Duration = Duration::from_secs(5);
/// Keepalive probes while nothing else is in flight (a ping sent, acknowledged, unanswered).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
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
                    reason = follow(pubsub, &lookup, hub.silence_is_safe()) => reason,
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
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_EVERY).with_interval(KEEPALIVE_EVERY);
    let tcp =
        TcpSettings::default().set_nodelay(true).set_keepalive(keepalive).set_user_timeout(HALF_OPEN_BOUND);
    let info = client.get_connection_info().clone().set_tcp_settings(tcp);
    let connect = async {
        let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out"))))
}

/// Applies announcements until the subscription fails; returns why it ended. One ping is in
/// flight at a time; while the server is frozen it stays unanswered, which ends nothing unless
/// `silence_is_safe` is false (a cluster node), and then only after `PING_EVERY`.
async fn follow(pubsub: redis::aio::PubSub, lookup: &KeyLookup, silence_is_safe: bool) -> &'static str {
    let (sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Option<(BoxFuture<'static, redis::RedisResult<()>>, Instant)> = None;
    loop {
        let answered = async {
            match pending.as_mut() {
                Some((pong, _)) => pong.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return "connection closed" };
                let payload: String = message.get_payload().unwrap_or_default();
                match parse(&payload) {
                    Some(announcement) => lookup.announce(announcement),
                    None => log::warn!("ignoring an invalidation that names no key id"),
                }
            }
            pong = answered => {
                pending = None;
                if pong.is_err() {
                    return "ping failed";
                }
            }
            _ = ping.tick() => match &pending {
                None => {
                    let mut sink = sink.clone();
                    pending = Some((async move { sink.ping::<()>().await }.boxed(), Instant::now()));
                }
                Some((_, sent)) if !silence_is_safe && sent.elapsed() >= PING_EVERY => {
                    return "the cluster node stopped answering";
                }
                Some(_) => {}
            },
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
