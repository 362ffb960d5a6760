// Package redisbroker is a realtime.Broker over Redis pub/sub, for several
// approvald instances sharing one Redis.
//
// # Publishing
//
// Every frame goes to one channel, "<prefix>frames" (prefix "approvald:" by
// default, see WithPrefix), in a compact binary encoding (codec.go) whose
// first byte names its format.
// Publish is bounded by its context and by a short timeout (one second by
// default, see WithPublishTimeout), so a caller never hangs on a dead Redis;
// on failure it returns the error and the hub falls back to local delivery.
//
// # Receiving and reconnecting
//
// Run reads the subscription itself with (*redis.PubSub).ReceiveTimeout
// rather than through (*redis.PubSub).Channel, whose reader silently drops a
// message when its Go channel stays full for a minute and so could lose a
// frame without anyone noticing. Each connection is a "session": a fresh
// PubSub, subscribed, read until it fails. Run considers itself connected
// only once Redis has confirmed the subscription (the "subscribe" reply).
// A session ends on any read error, on an unexpected "unsubscribe", or when
// a health-check PING sent after an idle interval gets no answer within the
// next interval (a half-open connection). Run then retries with jittered
// exponential backoff (100 ms up to 2 s) until its context ends, and then
// returns nil; it returns an error only when the Broker was closed.
//
// go-redis can also reconnect a PubSub by itself (a failed command on it
// makes it dial again and re-send SUBSCRIBE); Run treats a second
// subscription confirmation within one session as such a reconnection.
//
// # Nothing lost when Redis blips
//
// Frames published while an instance is not subscribed are lost to it, so:
//
//   - after every confirmed subscription, Run calls resync: the hub then
//     re-reads every watched object from the database, and anything
//     published after the confirmation arrives through pub/sub
//     (subscribe-then-read). This includes Run's first subscription, for
//     watchers that subscribed before Run did; with none, it costs nothing;
//   - while not subscribed, Run calls resync every resync interval (2 s by
//     default, see WithResyncInterval), from a goroutine of its own so that a
//     slow dial does not delay it. The hub's resync is the slow database
//     re-check: a watcher still gets its final state within a few seconds
//     while Redis is down, at the cost of reloading every watched object
//     from the database at that interval.
//
// resync is never called concurrently with itself, but it may run
// concurrently with deliver (realtime.Hub's resync only starts a background
// reload). deliver is called from Run's goroutine only.
//
// Connected and Reconnects report the state for readiness and metrics.
package redisbroker
