package htmlreport

import (
	"encoding"
	"reflect"

	"github.com/portsleuth/portsleuth/internal/term"
)

// escaped returns a deep copy of v with every string (map keys too) passed
// through term.Escape: html/template makes a string inert as markup, and
// term.Escape makes it visible as what it is (control characters, bidi
// overrides that would reorder the page's text, bytes that are not UTF-8).
// Walking the whole value covers every field a process or a recording
// controls, including fields added later. A struct is copied whole, then its
// exported fields are replaced by their escaped copies: its unexported state
// (netip.AddrPort, time.Time) stays intact. A value that is text to the
// template (encoding.TextMarshaler, such as an address with a zone) is
// escaped through its text.
func escaped[T any](v T) T {
	return escapeValue(reflect.ValueOf(v)).Interface().(T)
}

var (
	textMarshaler   = reflect.TypeFor[encoding.TextMarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func escapeValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.String:
		return reflect.ValueOf(term.Escape(v.String())).Convert(v.Type())
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(escapeValue(v.Elem()))
		return p
	case reflect.Struct:
		if isText(v.Type()) {
			return escapeText(v)
		}
		out := reflect.New(v.Type()).Elem()
		out.Set(v)
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				out.Field(i).Set(escapeValue(v.Field(i)))
			}
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			out.Index(i).Set(escapeValue(v.Index(i)))
		}
		return out
	case reflect.Array:
		out := reflect.New(v.Type()).Elem()
		for i := range v.Len() {
			out.Index(i).Set(escapeValue(v.Index(i)))
		}
		return out
	case reflect.Interface:
		if v.IsNil() {
			return v
		}
		out := reflect.New(v.Type()).Elem()
		out.Set(escapeValue(v.Elem()))
		return out
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(escapeValue(it.Key()), escapeValue(it.Value()))
		}
		return out
	}
	return v
}

// isText says whether a struct type marshals to text and back: the
// template shows it by its text, which its exported fields need not hold.
func isText(t reflect.Type) bool {
	return t.Implements(textMarshaler) && reflect.PointerTo(t).Implements(textUnmarshaler)
}

// escapeText returns v unchanged when its text needs no escaping, else the
// value parsed back from the escaped text; the zero value when that does
// not parse (a hostile text is then shown as the zero value's).
func escapeText(v reflect.Value) reflect.Value {
	text, err := v.Interface().(encoding.TextMarshaler).MarshalText()
	if err != nil {
		return reflect.New(v.Type()).Elem()
	}
	esc := term.Escape(string(text))
	if esc == string(text) {
		return v
	}
	p := reflect.New(v.Type())
	if err := p.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(esc)); err != nil {
		return reflect.New(v.Type()).Elem()
	}
	return p.Elem()
}
