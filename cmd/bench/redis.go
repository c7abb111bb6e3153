package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server of the run's own, in a directory of its own,
// that keeps nothing on disk: one for Caddy and one for the peer, so that
// each one's commands and CPU are its own.
type redisServer struct {
	cmd     *exec.Cmd
	addr    string
	version string
	client  *redis.Client
	// usedMemory is INFO memory's used_memory when the server started,
	// before any record: the base of bytes per record.
	usedMemory int64
}

func (r *redisServer) url() string { return "redis://" + r.addr + "/0" }

// startRedis runs redis-server on a free loopback port with persistence off
// and waits until it answers.
func startRedis(dir string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	r := &redisServer{addr: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	logPath := filepath.Join(dir, "redis.log")
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(ports[0]), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", logPath)
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("redis-server (needed by -store redis): %w", err)
	}
	r.client = redis.NewClient(&redis.Options{Addr: r.addr, PoolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		err := r.client.Ping(ctx).Err()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			r.stop()
			log, _ := os.ReadFile(logPath)
			return nil, fmt.Errorf("redis-server did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	info, err := r.client.Info(ctx, "server").Result()
	if err != nil {
		r.stop()
		return nil, err
	}
	r.version = infoFields(info)["redis_version"]
	if r.usedMemory, err = r.memory(ctx); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// memory is INFO memory's used_memory, in bytes.
func (r *redisServer) memory(ctx context.Context) (int64, error) {
	info, err := r.client.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(infoFields(info)["used_memory"], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("INFO memory: used_memory: %w", err)
	}
	return n, nil
}

// recordSize is what the records a run left in Redis take there.
type recordSize struct {
	keys int64
	// perKey is the growth of used_memory since the start over the keys:
	// what a record costs the server, its key, value, expiry and the
	// dictionary's share included.
	perKey int64
	// sampled is the mean MEMORY USAGE of up to recordSamples random keys.
	sampled int64
}

const recordSamples = 200

// recordSize measures the records in the server now; unknown (keys 0) when
// it holds none.
func (r *redisServer) recordSize() (recordSize, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var rs recordSize
	var err error
	if rs.keys, err = r.client.DBSize(ctx).Result(); err != nil || rs.keys == 0 {
		return rs, err
	}
	used, err := r.memory(ctx)
	if err != nil {
		return rs, err
	}
	rs.perKey = (used - r.usedMemory) / rs.keys
	var total, n int64
	for range min(rs.keys, recordSamples) {
		key, err := r.client.RandomKey(ctx).Result()
		if err != nil {
			return rs, err
		}
		size, err := r.client.MemoryUsage(ctx, key, 0).Result() // SAMPLES 0: the whole value
		if err != nil {
			return rs, err
		}
		total, n = total+size, n+1
	}
	rs.sampled = total / n
	return rs, nil
}

func (r *redisServer) stop() {
	if r.client != nil {
		r.client.Close()
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// redisStats is a sample of a Redis server's counters.
type redisStats struct {
	// By command, INFO commandstats' calls plus rejected_calls. A command a
	// script runs counts too: EVALSHA of a script that calls GET and SET
	// counts as three.
	calls map[string]int64
	// INFO stats' total_reads_processed: the reads of client requests, one
	// per round trip for a client that sends a command and waits for its
	// answer (as go-redis does outside pipelines), the command a script runs
	// not included.
	reads int64
	cpu   time.Duration // INFO cpu's used_cpu_sys plus used_cpu_user
}

// stats samples the server's command counts and CPU time. Its own INFO calls
// are left out of the counts, and of the reads: each sample counts its own
// read, so the reads between two samples include the second one's.
func (r *redisServer) stats() (redisStats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := r.client.Info(ctx, "commandstats", "cpu", "stats").Result()
	if err != nil {
		return redisStats{}, err
	}
	return parseRedisInfo(info)
}

// parseRedisInfo reads the commandstats and cpu sections of an INFO reply.
func parseRedisInfo(info string) (redisStats, error) {
	st := redisStats{calls: map[string]int64{}}
	fields := infoFields(info)
	for k, v := range fields {
		cmd, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok || cmd == "info" {
			continue
		}
		var n int64
		for _, kv := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(kv, "=")
			if name != "calls" && name != "rejected_calls" {
				continue
			}
			c, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return st, fmt.Errorf("INFO commandstats: %s: %w", k, err)
			}
			n += c
		}
		st.calls[cmd] = n
	}
	v, ok := fields["total_reads_processed"]
	if !ok {
		return st, fmt.Errorf("INFO stats: no total_reads_processed")
	}
	var err error
	if st.reads, err = strconv.ParseInt(v, 10, 64); err != nil {
		return st, fmt.Errorf("INFO stats: total_reads_processed: %w", err)
	}
	for _, k := range []string{"used_cpu_sys", "used_cpu_user"} {
		v, ok := fields[k]
		if !ok {
			return st, fmt.Errorf("INFO cpu: no %s", k)
		}
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return st, fmt.Errorf("INFO cpu: %s: %w", k, err)
		}
		st.cpu += time.Duration(math.Round(secs * float64(time.Second)))
	}
	return st, nil
}

// infoFields splits an INFO reply into its name:value lines.
func infoFields(info string) map[string]string {
	fields := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// commandsPerRequest is the total commands per request and, by command
// (most first), what they are: "2.00 (evalsha 2.00)".
func commandsPerRequest(calls map[string]int64, requests int) string {
	if requests == 0 {
		return "n/a"
	}
	var total int64
	for _, n := range calls {
		total += n
	}
	names := slices.Sorted(maps.Keys(calls))
	slices.SortStableFunc(names, func(a, b string) int { return cmp.Compare(calls[b], calls[a]) })
	var parts []string
	for _, name := range names {
		if per := float64(calls[name]) / float64(requests); per >= 0.005 {
			parts = append(parts, fmt.Sprintf("%s %.2f", name, per))
		}
	}
	s := fmt.Sprintf("%.2f", float64(total)/float64(requests))
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}
