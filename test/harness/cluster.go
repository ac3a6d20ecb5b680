package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// NATSCluster is a JetStream cluster of nats-server processes on loopback, each with its own
// client, cluster (route) and monitoring ports and its own store. Each node can be stopped,
// killed and started again on the same ports and store.
type NATSCluster struct {
	// Nodes are the servers, named n1, n2, ...
	Nodes []*NATSServer
}

// StartNATSCluster starts size nats-server processes (built once per process, at the version
// go.mod pins) that route to each other as one JetStream cluster, and waits until every node's
// /healthz answers 200 (a JetStream meta leader is elected and known to all). They stop when
// tb ends.
func StartNATSCluster(tb TB, size int) *NATSCluster {
	tb.Helper()
	bin := natsServerBin(tb)
	ports := FreePorts(tb, 3*size)
	routes := make([]string, size)
	for i := range size {
		routes[i] = "nats://" + Addr(ports[3*i+2])
	}
	c := &NATSCluster{}
	for i := range size {
		n := &NATSServer{
			Name: "n" + strconv.Itoa(i+1), bin: bin,
			port: ports[3*i], monitor: ports[3*i+1], storeDir: tb.TempDir(), tb: tb,
			args: []string{
				"--cluster_name", "ssetrack-test",
				"--cluster", routes[i],
				// Every node lists every route, its own included (nats-server ignores a
				// route to itself), so any node can restart alone and find the others.
				"--routes", strings.Join(routes, ","),
			},
		}
		c.Nodes = append(c.Nodes, n)
	}
	// Start all first: with fewer than a quorum of nodes up no node is healthy.
	for _, n := range c.Nodes {
		n.launch()
	}
	for _, n := range c.Nodes {
		n.waitHealthy(tb)
	}
	return c
}

// URLs returns every node's client URL, comma-separated, as ssetrack's --nats-url and
// nats.Connect take them.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Node returns the node with the given server name, or nil.
func (c *NATSCluster) Node(name string) *NATSServer {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// StreamCluster is what stream info says about a stream's replicas.
type StreamCluster struct {
	// Configured is the number of replicas in the stream's config.
	Configured int
	// Leader is the server name of the stream's leader, "" while there is none.
	Leader string
	// Replicas are the other peers by server name, and whether each is current.
	Replicas map[string]bool
}

// StreamInfo asks JetStream (through js, bounded by timeout) for stream's cluster info.
func StreamInfo(js jetstream.JetStream, stream string, timeout time.Duration) (StreamCluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	s, err := js.Stream(ctx, stream) // one STREAM.INFO request
	if err != nil {
		return StreamCluster{}, fmt.Errorf("stream %s info: %w", stream, err)
	}
	info := s.CachedInfo()
	sc := StreamCluster{Configured: info.Config.Replicas, Replicas: map[string]bool{}}
	if info.Cluster != nil {
		sc.Leader = info.Cluster.Leader
		for _, r := range info.Cluster.Replicas {
			sc.Replicas[r.Name] = r.Current && !r.Offline
		}
	}
	return sc, nil
}

// WaitStreamHealthy waits (bounded) until stream has a leader and every other replica is
// current, and returns the leader's name.
func WaitStreamHealthy(tb TB, js jetstream.JetStream, stream string, replicas int, timeout time.Duration) string {
	tb.Helper()
	var leader string
	WaitUntil(tb, timeout, func() error {
		sc, err := StreamInfo(js, stream, 2*time.Second)
		if err != nil {
			return err
		}
		if sc.Leader == "" {
			return fmt.Errorf("stream %s has no leader", stream)
		}
		current := 0
		for _, ok := range sc.Replicas {
			if ok {
				current++
			}
		}
		if current != replicas-1 {
			return fmt.Errorf("stream %s: leader %s, replicas %v: want %d current", stream, sc.Leader, sc.Replicas, replicas-1)
		}
		leader = sc.Leader
		return nil
	})
	return leader
}

// ClientsNamed returns how many client connections named name the node has (its /connz).
func (n *NATSServer) ClientsNamed(name string) (int, error) {
	b, err := Get(n.MonitorURL() + "/connz?limit=1024")
	if err != nil {
		return 0, err
	}
	var connz struct {
		Connections []struct {
			Name string `json:"name"`
		} `json:"connections"`
	}
	if err := json.Unmarshal(b, &connz); err != nil {
		return 0, fmt.Errorf("connz: %w", err)
	}
	count := 0
	for _, c := range connz.Connections {
		if c.Name == name {
			count++
		}
	}
	return count, nil
}

// ConnectedTo returns the running node that has a client connection named name ("ssetrack"
// for ssetrack's), or an error if none or several do.
func (c *NATSCluster) ConnectedTo(name string) (*NATSServer, error) {
	var found []*NATSServer
	for _, n := range c.Nodes {
		if n.proc == nil || n.proc.Exited() {
			continue
		}
		k, err := n.ClientsNamed(name)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if k > 0 {
			found = append(found, n)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%w: %d nodes have a client named %q", errNotOneConnection, len(found), name)
	}
	return found[0], nil
}

var errNotOneConnection = errors.New("harness: not exactly one connection")
