package realtime

import "context"

// Frame is one published state of a watched object.
//
// Frames of one object are ordered by Version, which the database assigns and
// which grows with every change of that object. Data is shared between every
// watcher that receives the frame and must not be modified after the frame
// is published or returned by a Loader.
type Frame struct {
	// Object is the key of the watched object, e.g. "c:<id>" for a
	// challenge, "e:<id>" for an enrollment or "u:<user>" for a user's
	// pending list.
	Object string
	// Version orders the frames of one object; a larger Version is newer.
	Version int64
	// Final marks the last state of the object: after it a watch socket
	// is closed with code 1000 and nothing more is delivered.
	Final bool
	// Data is the JSON text sent to the browser as it is.
	Data []byte
}

// Broker carries frames between instances. Every frame published by any
// instance (this one included) reaches the deliver function of Run.
type Broker interface {
	// Publish sends f to every running instance.
	Publish(ctx context.Context, f Frame) error
	// Run blocks until ctx ends, then returns nil; it returns an error
	// only if it cannot go on. It calls deliver for each frame, from one
	// goroutine at a time, and resync after every (re)connection after
	// the first, when frames may have been missed.
	Run(ctx context.Context, deliver func(Frame), resync func()) error
}

// Loader reads the current frame of an object from the database, the truth.
// It must handle every kind of key that is watched, including the "u:<user>"
// keys used with WaitChange, because a resync reloads them all.
type Loader func(ctx context.Context, object string) (Frame, error)
