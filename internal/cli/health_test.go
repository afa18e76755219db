package cli

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHealthSaysWhenTheReaderStalls(t *testing.T) {
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	hb := newHeartbeat(start)
	now := start
	h := healthHandler(hb.last, readerStallAfter, func() time.Time { return now })
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	for _, tc := range []struct {
		at   time.Duration
		code int
		body string
	}{
		{0, 200, "ok\n"},
		{readerStallAfter, 200, "ok\n"},
		{readerStallAfter + 90*time.Second, 503, "stalled: the event reader's last pass was 2m30s ago (limit 1m0s)\n"},
	} {
		now = start.Add(tc.at)
		if code, body := get(); code != tc.code || body != tc.body {
			t.Errorf("%s after the last pass: %d %q, want %d %q", tc.at, code, body, tc.code, tc.body)
		}
	}
	// A new pass makes it healthy again.
	hb.beat(now)
	if code, body := get(); code != 200 || !strings.HasPrefix(body, "ok") {
		t.Errorf("after a new pass: %d %q, want 200 ok", code, body)
	}
}
