package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// encoding/json matches member names without regard to case and lets a
// repeated member win silently. The protocol rejects unknown members to
// catch typos, so before decoding, every object member of the body is
// checked against the target's json names exactly, once each.

var rawMessage = reflect.TypeFor[json.RawMessage]()

var namesCache sync.Map // reflect.Type -> map[string]reflect.Type

// memberTypes maps a struct's exact json member names to their types.
func memberTypes(t reflect.Type) map[string]reflect.Type {
	if m, ok := namesCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	namesCache.Store(t, m)
	return m
}

// memberError is a member the target does not declare, or a repeated one.
type memberError string

func (e memberError) Error() string { return string(e) }

// checkMembers reports the first member of data that t does not declare
// exactly, or that appears twice in one object.
func checkMembers(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return checkValue(dec, t, "")
}

func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	d, isDelim := tok.(json.Delim)
	if !isDelim {
		return nil
	}
	switch {
	case d == '{' && t != nil && t.Kind() == reflect.Struct && t != rawMessage:
		names := memberTypes(t)
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return err
			}
			k := kt.(string)
			ft, ok := names[k]
			if !ok {
				return memberError(fmt.Sprintf("unknown member %q", path+k))
			}
			if seen[k] {
				return memberError(fmt.Sprintf("member %q appears twice", path+k))
			}
			seen[k] = true
			if err := checkValue(dec, ft, path+k+"."); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	case d == '[' && t != nil && t.Kind() == reflect.Slice && t != rawMessage:
		for dec.More() {
			if err := checkValue(dec, t.Elem(), path); err != nil {
				return err
			}
		}
		_, err = dec.Token()
		return err
	default:
		// Anything else (a raw context, a map, a type mismatch the decoder
		// will report): skip the value whole.
		for depth := 1; depth > 0; {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			if d, ok := tok.(json.Delim); ok {
				if d == '{' || d == '[' {
					depth++
				} else {
					depth--
				}
			}
		}
		return nil
	}
}
