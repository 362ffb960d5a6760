package approval

import (
	"context"
	"errors"
	"strings"
)

// Watched is the current public state of a watched object.
type Watched struct {
	Object  string // the Events key
	Version int64
	Final   bool
	Data    []byte // the watch frame JSON
}

// ResolveWatchToken checks a browser's watch token and returns the key of
// the object it watches. A token dies WatchGrace after its object is final.
func (s *Service) ResolveWatchToken(ctx context.Context, token string) (string, error) {
	unauthorized := Errorf(CodeUnauthorized, "a valid watch token is required")
	if token == "" {
		return "", unauthorized
	}
	kind, id, err := s.watch.Parse(token)
	if err != nil {
		return "", unauthorized
	}
	var key string
	switch kind {
	case KindChallenge:
		key = challengeKey(id)
	case KindEnrollment:
		key = enrollmentKey(id)
	default:
		return "", unauthorized
	}
	if _, err := s.Load(ctx, key); errors.Is(err, ErrNotFound) {
		return "", unauthorized
	} else if err != nil {
		return "", internal("load", err)
	}
	return key, nil
}

// WatchTokenFor reports whether token is a live watch token of challenge id.
func (s *Service) WatchTokenFor(ctx context.Context, token, challengeID string) bool {
	key, err := s.ResolveWatchToken(ctx, token)
	return err == nil && key == challengeKey(challengeID)
}

// Load reads the current state of a watched object from the store. It
// returns ErrNotFound for an unknown object and for one whose watch
// tokens have died.
func (s *Service) Load(ctx context.Context, key string) (*Watched, error) {
	now := s.clock()
	switch {
	case strings.HasPrefix(key, "c:"):
		c, err := s.store.GetChallenge(ctx, key[2:])
		if err != nil {
			return nil, err
		}
		end := c.ExpiresAt
		if c.DecidedAt != nil {
			end = *c.DecidedAt
		}
		if c.Final() && now.Sub(end) > s.rules.WatchGrace {
			return nil, ErrNotFound
		}
		return &Watched{Object: key, Version: c.Version, Final: c.Final(), Data: c.WatchJSON()}, nil
	case strings.HasPrefix(key, "e:"):
		e, err := s.store.GetEnrollment(ctx, key[2:])
		if err != nil {
			return nil, err
		}
		// Final at linking, or at expiry (a late sweeper does not extend
		// the token's life), or earlier when a newer enrollment ended it.
		end := e.ExpiresAt
		if e.EndedAt != nil && (e.Status == EnrollLinked || e.EndedAt.Before(end)) {
			end = *e.EndedAt
		}
		if e.Final() && now.Sub(end) > s.rules.WatchGrace {
			return nil, ErrNotFound
		}
		return &Watched{Object: key, Version: e.Version, Final: e.Final(), Data: e.WatchJSON()}, nil
	case strings.HasPrefix(key, "u:"):
		// A user's pending list, which device long-polls wait on: there is
		// nothing to load, but a resync (after Redis was away) must wake
		// them so that they read the list again. The version is the
		// clock, as publishChallenge's, so it is newer than any before.
		return &Watched{Object: key, Version: s.now().UnixNano()}, nil
	}
	return nil, ErrNotFound
}
