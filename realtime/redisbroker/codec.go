package redisbroker

import (
	"encoding/binary"
	"errors"

	"github.com/clicktopurchase/approvald/realtime"
)

// The wire format of a frame, version 1:
//
//	byte     format (1)
//	byte     flags (bit 0: Final; the others must be zero)
//	varint   Version (zig-zag, encoding/binary)
//	uvarint  length of Object
//	bytes    Object
//	bytes    Data (the rest of the message)
//
// A future format gets a new first byte, so that an instance of another
// release drops what it cannot read instead of misreading it.
const (
	formatV1  = 1
	flagFinal = 1 << 0
)

var errMalformed = errors.New("redisbroker: malformed frame")

// encode returns the wire form of f.
func encode(f realtime.Frame) []byte {
	buf := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(f.Object)+len(f.Data))
	var flags byte
	if f.Final {
		flags |= flagFinal
	}
	buf = append(buf, formatV1, flags)
	buf = binary.AppendVarint(buf, f.Version)
	buf = binary.AppendUvarint(buf, uint64(len(f.Object)))
	buf = append(buf, f.Object...)
	return append(buf, f.Data...)
}

// decode parses the wire form of a frame. The frame does not share memory
// with p.
func decode(p string) (realtime.Frame, error) {
	if len(p) < 2 || p[0] != formatV1 || p[1]&^flagFinal != 0 {
		return realtime.Frame{}, errMalformed
	}
	b := []byte(p[2:])
	version, n := binary.Varint(b)
	if n <= 0 {
		return realtime.Frame{}, errMalformed
	}
	b = b[n:]
	size, n := binary.Uvarint(b)
	if n <= 0 || size == 0 || size > uint64(len(b)-n) {
		return realtime.Frame{}, errMalformed
	}
	b = b[n:]
	f := realtime.Frame{
		Object:  string(b[:size]),
		Version: version,
		Final:   p[1]&flagFinal != 0,
	}
	if rest := b[size:]; len(rest) > 0 {
		f.Data = rest
	}
	return f, nil
}
