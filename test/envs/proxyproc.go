package envs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// gate is what a Member needs of its proxy: in this process (gateProxy) or in a child process
// (remoteGate), so that a benchmark measuring this process's memory and goroutines does not count
// the proxy's.
type gate interface {
	addr() string
	setFrozen(bool)
	setDown(bool)
	dropConnections()
	close()
}

var _ gate = (*gateProxy)(nil)

// gateProxyEnv names the environment variable that makes a binary run as a gate proxy child.
const gateProxyEnv = "PADDOCK_ENVS_GATE_PROXY_TARGET"

// RunGateProxyIfChild runs the gate proxy and exits when this process was started as one by a
// Member with Options.ProxyInChildProcess. Call it first thing in main.
func RunGateProxyIfChild() {
	target := os.Getenv(gateProxyEnv)
	if target == "" {
		return
	}
	p, err := newGateProxy(target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gate proxy:", err)
		os.Exit(1)
	}
	fmt.Println(p.addr())
	// One command per line on stdin; each is acknowledged with "ok" once done. EOF (the parent
	// died or closed the gate) stops the proxy.
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "freeze":
			p.setFrozen(true)
		case "thaw":
			p.setFrozen(false)
		case "down":
			p.setDown(true)
		case "up":
			p.setDown(false)
		case "drop":
			p.dropConnections()
		}
		fmt.Println("ok")
	}
	p.close()
	os.Exit(0)
}

// remoteGate drives a gate proxy in a child process (this binary re-executed).
type remoteGate struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	in      io.WriteCloser
	out     *bufio.Reader
	address string
	closed  bool
}

func newRemoteGate(target string) (*remoteGate, error) {
	if os.Getenv(gateProxyEnv) != "" {
		// A child whose main did not call RunGateProxyIfChild would start members (and more
		// children) of its own.
		return nil, errors.New("a gate proxy child must not start gate proxies (call envs.RunGateProxyIfChild first in main)")
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), gateProxyEnv+"="+target)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		_ = in.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g := &remoteGate{cmd: cmd, in: in, out: bufio.NewReader(outPipe)}
	type result struct {
		line string
		err  error
	}
	first := make(chan result, 1)
	go func() {
		line, err := g.out.ReadString('\n')
		first <- result{line, err}
	}()
	var res result
	select {
	case res = <-first:
	case <-time.After(30 * time.Second):
		res.err = errors.New("no address within 30s")
	}
	if res.err == nil {
		g.address = strings.TrimSpace(res.line)
		if _, _, err := net.SplitHostPort(g.address); err != nil {
			res.err = fmt.Errorf("printed %q, not an address", g.address)
		}
	}
	if res.err != nil {
		_ = in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("gate proxy child did not start (does main call envs.RunGateProxyIfChild first?): %w", res.err)
	}
	return g, nil
}

func (g *remoteGate) addr() string { return g.address }

func (g *remoteGate) send(cmd string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	if _, err := io.WriteString(g.in, cmd+"\n"); err != nil {
		panic(fmt.Sprintf("gate proxy child: %v", err))
	}
	if line, err := g.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ok" {
		panic(fmt.Sprintf("gate proxy child did not acknowledge %q: %v", cmd, errors.Join(err, errors.New(line))))
	}
}

func (g *remoteGate) setFrozen(f bool) {
	if f {
		g.send("freeze")
	} else {
		g.send("thaw")
	}
}

func (g *remoteGate) setDown(d bool) {
	if d {
		g.send("down")
	} else {
		g.send("up")
	}
}

func (g *remoteGate) dropConnections() { g.send("drop") }

func (g *remoteGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	_ = g.in.Close()
	_ = g.cmd.Wait()
}
