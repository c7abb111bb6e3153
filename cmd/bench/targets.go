package main

import (
	"fmt"
	"io"
	"time"
)

// The Caddy CPU targets, per request, measured side by side with the peer.
const (
	targetWriteMemory  = 12 * time.Microsecond // added per write over plain, memory store
	targetWriteBadger  = 20 * time.Microsecond // added per write over plain, Badger
	targetReplayStatic = 1.15                  // a replay's CPU over respond's with a body of the same size
	targetRedisWrite   = 35 * time.Microsecond // Redis server CPU per write
	targetRedisReplay  = 10 * time.Microsecond // Redis server CPU per replay
)

// cpuTarget is one row of the CPU targets table.
type cpuTarget struct {
	what, target, measured string
	met                    bool
}

// cpuTargets checks each CPU target the run has the scenarios for.
func (rep report) cpuTargets() []cpuTarget {
	var rows []cpuTarget
	plain, static := rep.get(serverCaddy, "plain", ""), rep.get(serverCaddy, "static", "")
	peerPlain := rep.get(serverPeer, "plain", "")
	known := func(rs ...*result) bool {
		for _, r := range rs {
			if r == nil || r.cpuPerRequest() == 0 {
				return false
			}
		}
		return true
	}
	for _, t := range []struct {
		store string
		limit time.Duration
	}{{"memory", targetWriteMemory}, {"badger", targetWriteBadger}} {
		if w := rep.get(serverCaddy, "write", t.store); known(w, plain) {
			added := w.cpuPerRequest() - plain.cpuPerRequest()
			rows = append(rows, cpuTarget{"write, " + storeTitle(t.store) + ": Caddy CPU added over plain",
				"<= " + us(t.limit), signedUS(added), added <= t.limit})
		}
	}
	for _, st := range rep.o.stores {
		if r := rep.get(serverCaddy, "replay", st); known(r, static) {
			ratio := float64(r.cpuPerRequest()) / float64(static.cpuPerRequest())
			rows = append(rows, cpuTarget{"replay, " + storeTitle(st) + ": Caddy CPU over `respond`'s",
				fmt.Sprintf("<= %.2fx", targetReplayStatic), fmt.Sprintf("%.2fx (%s vs %s)", ratio, us(r.cpuPerRequest()), us(static.cpuPerRequest())), ratio <= targetReplayStatic})
		}
	}
	ours, theirs := rep.get(serverCaddy, "write", "redis"), rep.get(serverPeer, "write", "redis")
	if known(ours, plain, theirs, peerPlain) {
		a, b := ours.cpuPerRequest()-plain.cpuPerRequest(), theirs.cpuPerRequest()-peerPlain.cpuPerRequest()
		rows = append(rows, cpuTarget{"write, Redis: proxy CPU added over plain", "<= the peer's (" + signedUS(b) + ")", signedUS(a), a <= b})
	}
	for _, t := range []struct {
		scenario string
		limit    time.Duration
	}{{"write", targetRedisWrite}, {"replay", targetRedisReplay}} {
		if r := rep.get(serverCaddy, t.scenario, "redis"); r != nil && r.redis && !r.redisUnknown {
			per := r.redisCPU / time.Duration(r.requests)
			rows = append(rows, cpuTarget{t.scenario + ", Redis: Redis server CPU", "<= " + us(t.limit), redisCPU(r), per <= t.limit})
		}
	}
	return rows
}

// writeCPUTargets prints the CPU targets table, when the run measured any.
func (rep report) writeCPUTargets(w io.Writer) {
	rows := rep.cpuTargets()
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| CPU per request | target | measured | met |")
	fmt.Fprintln(w, "|---|---:|---:|:---:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.what, r.target, r.measured, yesNo(r.met))
	}
}
