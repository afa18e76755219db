package term

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain ASCII", "nginx", "nginx"},
		{"UTF-8 name", "café", "café"},
		{"CJK and emoji", "服务-🚀", "服务-🚀"},
		{"empty", "", ""},
		{"backslash kept", `s/\t/,/ C:\new \x1b`, `s/\t/,/ C:\new \x1b`},
		{"OSC with BEL and clear screen", "\x1b]0;OWNED\x07\x1b[2J", `\x1b]0;OWNED\x07\x1b[2J`},
		{"CSI 2J", "\x1b[2J", `\x1b[2J`},
		{"ESC alone", "a\x1bb", `a\x1bb`},
		{"newline, CR, tab", "a\nb\rc\td", `a\nb\rc\td`},
		{"NUL and DEL", "\x00x\x7f", `\x00x\x7f`},
		{"C1 CSI as UTF-8 (U+009B)", "a\u009b2Jb", `a\u009b2Jb`},
		{"C1 range ends", "\u0080\u009f\u00a0", `\u0080\u009f` + "\u00a0"},
		{"C1 CSI as a lone byte", "a\x9b2J", `a\x9b2J`},
		{"invalid UTF-8", "ok\xff\xfe", `ok\xff\xfe`},
		{"truncated UTF-8", "caf\xc3", `caf\xc3`},
		{"bidi override U+202E", "evil\u202eexe.txt", `evil\u202eexe.txt`},
		{"bidi embeddings", "\u202a\u202b\u202c\u202d", `\u202a\u202b\u202c\u202d`},
		{"bidi isolates", "\u2066\u2067\u2068\u2069", `\u2066\u2067\u2068\u2069`},
		{"bidi marks", "\u200e\u200f\u061c", `\u200e\u200f\u061c`},
		{"line separators", "a\u2028b\u2029", `a\u2028b\u2029`},
		{"next to bidi, untouched", "\u2065\u206a\u2029x", "\u2065\u206a" + `\u2029` + "x"},
		{"U+FFFD itself is text", "\uFFFD", "\uFFFD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Escape(tc.in)
			if got != tc.want {
				t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
			}
			checkSafe(t, got)
		})
	}
}

// Plain names come back as the same string, without a copy.
func TestEscapeNoAllocationWhenClean(t *testing.T) {
	s := "postgres: checkpointer café"
	if n := testing.AllocsPerRun(100, func() { _ = Escape(s) }); n != 0 {
		t.Errorf("Escape of a clean string allocated %v times", n)
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"nginx", "\x1b]0;OWNED\x07\x1b[2J", "\u009b\x9b", "a\u202eb", "\xff\xc3", `\x1b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Escape(s)
		checkSafe(t, got)
		if again := Escape(got); again != got {
			t.Errorf("not idempotent: %q -> %q -> %q", s, got, again)
		}
		// Nothing is lost: without a backslash in the input, the escapes decode back.
		if !strings.Contains(s, `\`) {
			if back := unescape(t, got); back != s {
				t.Errorf("Escape(%q) = %q decodes to %q", s, got, back)
			}
		}
	})
}

// checkSafe fails when s holds anything a terminal could act on.
func checkSafe(t *testing.T, s string) {
	t.Helper()
	if !utf8.ValidString(s) {
		t.Errorf("%q is not valid UTF-8", s)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) ||
			r == 0x200e || r == 0x200f || r == 0x061c || r == 0x2028 || r == 0x2029 {
			t.Errorf("%q holds %U", s, r)
		}
	}
}

// unescape decodes Escape's output of a string that had no backslash.
func unescape(t *testing.T, s string) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case 'n', 'r', 't':
			b.WriteByte(map[byte]byte{'n': '\n', 'r': '\r', 't': '\t'}[s[i+1]])
			i++
		case 'x':
			v, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
			if err != nil {
				t.Fatalf("bad \\x escape in %q", s)
			}
			b.WriteByte(byte(v))
			i += 3
		case 'u':
			v, err := strconv.ParseUint(s[i+2:i+6], 16, 32)
			if err != nil {
				t.Fatalf("bad \\u escape in %q", s)
			}
			b.WriteRune(rune(v))
			i += 5
		default:
			t.Fatalf("unknown escape in %q", s)
		}
	}
	return b.String()
}
