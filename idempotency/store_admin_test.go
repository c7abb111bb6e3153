package idempotency

import "testing"

// Stats counts live records by state, in doubt too, and Total is their sum.
func TestStatsAdd(t *testing.T) {
	var st Stats
	for _, r := range []struct {
		state State
		live  bool
	}{
		{StateInFlight, true}, {StateInFlight, false},
		{StateCompleted, true}, {StateCompleted, true}, {StateCompleted, false},
		{StateInDoubt, true}, {StateInDoubt, true}, {StateInDoubt, true}, {StateInDoubt, false},
		{State(9), true},
	} {
		st.Add(r.state, r.live)
	}
	if want := (Stats{InFlight: 1, Completed: 2, InDoubt: 3}); st != want || st.Total() != 6 {
		t.Fatalf("Stats = %+v (total %d), want %+v (total 6)", st, st.Total(), want)
	}
}
