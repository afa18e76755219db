// Package term makes strings a process chose (its name, its command line, its
// cgroup path) safe to print on an operator's terminal: a name like
// "\x1b]0;OWNED\x07\x1b[2J" must show as those characters, not retitle and
// clear the screen. Only text output goes through it; JSON stays exact
// (encoding/json escapes control characters itself).
package term

import (
	"strings"
	"unicode/utf8"
)

// Escape returns s with every character a terminal could act on written as
// a visible escape, and everything else unchanged ("nginx", "café"):
//
//   - C0 controls and DEL: \n, \r, \t, else \xHH (ESC is \x1b)
//   - C1 controls U+0080..U+009F (CSI is U+009B): \u009b
//   - bytes that are not UTF-8: \xHH, one per byte
//   - bidi controls, which reorder what follows them on screen (Trojan
//     Source, CVE-2021-42574): the embeddings and overrides U+202A..U+202E,
//     the isolates U+2066..U+2069, the marks U+200E, U+200F, U+061C; and the
//     line and paragraph separators U+2028, U+2029: \u202e
//
// A backslash is never escaped. The text forms are for reading and JSON is the
// exact one, so a command line full of regexes and shell quoting stays as
// typed ('s/\t/,/' is not doubled into 's/\\t/,/'). The cost: a literal
// backslash sequence such as the four characters `\x1b` reads like an escaped
// ESC; it can mislead no more than any printable name can. The gain: Escape is
// idempotent, so a layer that escapes its own part (attrib.DescribeHolder)
// and a caller that escapes the whole line never double-escape.
func Escape(s string) string {
	i := firstToEscape(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if needsEscape(r, size) {
			writeEscape(&b, r, s[i], size)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// firstToEscape is the index of the first byte Escape must rewrite, or -1: most
// names need nothing, and then Escape allocates nothing.
func firstToEscape(s string) int {
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return i
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if needsEscape(r, size) {
			return i
		}
		i += size
	}
	return -1
}

// needsEscape says whether a decoded rune (or a lone invalid byte, size 1) needs escaping.
func needsEscape(r rune, size int) bool {
	switch {
	case r == utf8.RuneError && size == 1:
		return true
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	}
	switch r {
	case 0x200e, 0x200f, 0x061c, 0x2028, 0x2029:
		return true
	}
	return false
}

const hexDigits = "0123456789abcdef"

func writeEscape(b *strings.Builder, r rune, first byte, size int) {
	switch {
	case r == '\n':
		b.WriteString(`\n`)
	case r == '\r':
		b.WriteString(`\r`)
	case r == '\t':
		b.WriteString(`\t`)
	case size == 1:
		// An ASCII control, DEL, or a byte that is not UTF-8: the byte itself.
		b.WriteString(`\x`)
		b.WriteByte(hexDigits[first>>4])
		b.WriteByte(hexDigits[first&0xf])
	default:
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(hexDigits[(r>>shift)&0xf])
		}
	}
}
