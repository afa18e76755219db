package netns

import "testing"

func TestCountReserved(t *testing.T) {
	for _, c := range []struct {
		list string
		want int
	}{
		{"", 0},
		{"8080", 0},
		{"40000", 1},
		{"39990-40009,40063,50000-50010", 10 + 1},
		{"40060-40100", 4},
	} {
		got, err := CountReserved(c.list, [2]int{40000, 40063})
		if err != nil || got != c.want {
			t.Errorf("CountReserved(%q) = %d, %v; want %d", c.list, got, err, c.want)
		}
	}
	if _, err := CountReserved("9-1", [2]int{0, 10}); err == nil {
		t.Error("a reversed range must be an error")
	}
}
