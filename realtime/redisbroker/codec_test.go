package redisbroker

import (
	"bytes"
	"math"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/clicktopurchase/approvald/realtime"
)

var errClosedForTest = redis.ErrClosed

func itoa(n int) string { return strconv.Itoa(n) }

func TestCodecRoundTrip(t *testing.T) {
	for _, f := range []realtime.Frame{
		{Object: "c:1", Version: 1},
		{Object: "c:1", Version: 0, Final: true, Data: []byte(`{}`)},
		{Object: "u:user with spaces", Version: -5, Data: []byte{0, 1, 2, 255}},
		{Object: "e:x", Version: math.MaxInt64, Final: true, Data: bytes.Repeat([]byte("x"), 70000)},
		{Object: "c:min", Version: math.MinInt64},
	} {
		got, err := decode(string(encode(f)))
		if err != nil {
			t.Fatalf("decode(encode(%q)): %v", f.Object, err)
		}
		if got.Object != f.Object || got.Version != f.Version || got.Final != f.Final || !bytes.Equal(got.Data, f.Data) {
			t.Fatalf("round trip of %q v%d: got %q v%d final %v (%d bytes)", f.Object, f.Version, got.Object, got.Version, got.Final, len(got.Data))
		}
	}
	if n := len(encode(realtime.Frame{Object: "c:0123456789abcdef", Version: 3, Data: []byte(`{"a":1}`)})); n != 2+1+1+18+7 {
		t.Fatalf("encoded size %d", n)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	good := string(encode(realtime.Frame{Object: "c:1", Version: 300, Data: []byte("data")}))
	for _, p := range []string{
		"",
		"\x01",
		"\x02" + good[1:],            // unknown format
		good[:1] + "\x02" + good[2:], // unknown flag
		good[:2],                     // no version
		good[:2] + "\x80",            // truncated varint
		good[:4],                     // no object length
		good[:4] + "\x00",            // empty object
		good[:4] + "\x09c:1",         // object longer than the rest
		`{"object":"c:1"}`,
	} {
		if f, err := decode(p); err == nil {
			t.Errorf("decode(%q) = %+v, want error", p, f)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(string(encode(realtime.Frame{Object: "c:1", Version: 7, Final: true, Data: []byte("{}")})))
	f.Fuzz(func(t *testing.T, p string) {
		fr, err := decode(p)
		if err != nil {
			return
		}
		again, err := decode(string(encode(fr)))
		if err != nil || again.Object != fr.Object || again.Version != fr.Version || again.Final != fr.Final || !bytes.Equal(again.Data, fr.Data) {
			t.Fatalf("re-encoding %+v: %+v, %v", fr, again, err)
		}
	})
}
