// Package realtime delivers state changes of watched objects (challenges,
// enrollments, per-user pending lists) to the browsers and long-polls waiting
// for them.
//
// The database is the truth and the Broker is only the fast path. Every
// change is published as a Frame carrying the object's full public state and
// a Version assigned by the database. A Hub keeps the watchers of this
// instance indexed by object key; it subscribes before reading the current
// state (so nothing can fall between the two), forwards only frames newer
// than the last one a watcher has, never forwards anything after a Final
// frame, and re-reads every watched object from the database whenever the
// broker reports that frames may have been missed.
//
// The package imports nothing from the application's internal packages: the
// caller supplies a Broker, a Loader and an already authenticated, upgraded
// *websocket.Conn.
package realtime
