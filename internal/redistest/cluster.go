package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of masters without replicas, each a
// redis-server this test started on 127.0.0.1.
type Cluster struct {
	nodes []*Server
}

// StartCluster runs n redis-server in cluster mode, joins them with
// redis-cli --cluster create (slots split evenly, no replicas), and returns
// once every node reports cluster_state:ok. t's cleanup kills them. It fails
// t (never skips) when redis-server or redis-cli is not installed.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 3 {
		t.Fatalf("redistest: a Redis Cluster needs at least 3 masters, not %d", n)
	}
	bin := serverBinary(t)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redis-cli not found on PATH: install the Debian package redis-tools; .ci/run does (%v)", err)
	}
	c := &Cluster{}
	for range n {
		s := &Server{tb: t, bin: bin, dir: t.TempDir()}
		t.Cleanup(s.kill)
		// The cluster bus gets its own free port: port+10000, Redis's
		// default, may be taken or above 65535.
		err := s.launch(func() error {
			bus, err := freePort()
			s.extraArgs = []string{"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(s.dir, "nodes.conf"),
				"--cluster-node-timeout", "2000", "--cluster-port", strconv.Itoa(bus)}
			return err
		})
		if err != nil {
			t.Fatalf("redistest: cluster node: %v", err)
		}
		c.nodes = append(c.nodes, s)
	}

	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// redis-cli returns once the slots are assigned; each node says ok only
	// once gossip has shown it the whole table.
	for _, s := range c.nodes {
		client := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		err := poll(ctx, func() (bool, string, error) {
			info, err := client.ClusterInfo(ctx).Result()
			return strings.Contains(info, "cluster_state:ok\r\n"), info, err
		})
		_ = client.Close()
		if err != nil {
			t.Fatalf("redistest: cluster node %s: %v", s.Addr(), err)
		}
	}
	return c
}

// Addrs are the nodes' host:port, the seeds of a cluster client.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Sentinel is one master redis-server watched by one redis-sentinel, both
// started by this test on 127.0.0.1.
type Sentinel struct {
	master   *Server
	sentinel *Server
}

const sentinelMasterName = "mymaster"

// StartSentinel runs a master and a sentinel (redis-server --sentinel)
// monitoring it as "mymaster" with quorum 1, and returns once the sentinel
// reports that master up. t's cleanup kills both. It fails t (never skips)
// when redis-server is not installed.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	master := Start(t)
	s := &Server{tb: t, bin: serverBinary(t), dir: t.TempDir(), extraArgs: []string{"--sentinel"}}
	s.conf = filepath.Join(s.dir, "sentinel.conf")
	conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\n", sentinelMasterName, master.port)
	if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
		t.Fatalf("redistest: sentinel config: %v", err)
	}
	t.Cleanup(s.kill)
	if err := s.launch(nil); err != nil {
		t.Fatalf("redistest: sentinel: %v", err)
	}

	client := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// Flags are "master" alone once the sentinel has connected to it.
	err := poll(ctx, func() (bool, string, error) {
		m, err := client.Master(ctx, sentinelMasterName).Result()
		return m["flags"] == "master" && m["role-reported"] == "master", fmt.Sprint(m), err
	})
	if err != nil {
		t.Fatalf("redistest: sentinel %s never saw master %s up: %v", s.Addr(), master.Addr(), err)
	}
	return &Sentinel{master: master, sentinel: s}
}

// SentinelAddrs are the sentinels' host:port.
func (s *Sentinel) SentinelAddrs() []string { return []string{s.sentinel.Addr()} }

// MasterName is the name the sentinels know the master by.
func (s *Sentinel) MasterName() string { return sentinelMasterName }

// Master is the master redis-server.
func (s *Sentinel) Master() *Server { return s.master }

// poll calls check every 20ms until it reports done or ctx ends; the error
// then tells the last state and error check saw.
func poll(ctx context.Context, check func() (done bool, state string, err error)) error {
	for {
		done, state, err := check()
		if done && err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready within %v (last error %v, state %s)", startTimeout, err, state)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
