package envs

import (
	"errors"
	"io"
	"net"
	"sync"
)

// gateProxy is a TCP proxy in front of a member's apiserver. Frozen, it keeps accepting
// connections but forwards nothing in either direction: the member "accepts TCP, never answers",
// the way a hung apiserver or a black-holed network looks to a client.
type gateProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	// down closes every new connection at once (the apiserver is being stopped).
	down   bool
	thaw   chan struct{}
	conns  map[net.Conn]struct{}
	closed chan struct{}
}

func newGateProxy(target string) (*gateProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &gateProxy{ln: ln, target: target, thaw: make(chan struct{}), conns: map[net.Conn]struct{}{}, closed: make(chan struct{})}
	close(p.thaw)
	go p.serve()
	return p, nil
}

func (p *gateProxy) addr() string { return p.ln.Addr().String() }

func (p *gateProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *gateProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		select {
		case <-p.closed:
			return false
		default:
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *gateProxy) setDown(d bool) {
	p.mu.Lock()
	p.down = d
	p.mu.Unlock()
}

func (p *gateProxy) isDown() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.down
}

func (p *gateProxy) handle(c net.Conn) {
	if p.isDown() || !p.track(c, true) {
		_ = c.Close()
		return
	}
	defer func() { p.track(c, false); _ = c.Close() }()
	if !p.wait() {
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the apiserver is down: the client sees the connection close
	}
	if !p.track(up, true) {
		_ = up.Close()
		return
	}
	defer func() { p.track(up, false); _ = up.Close() }()
	done := make(chan struct{}, 2)
	go func() { p.pipe(up, c); done <- struct{}{} }()
	go func() { p.pipe(c, up); done <- struct{}{} }()
	<-done
}

// pipe copies src to dst, holding every chunk while the proxy is frozen.
func (p *gateProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

// wait blocks while frozen; false when the proxy closed.
func (p *gateProxy) wait() bool {
	for {
		p.mu.Lock()
		frozen, thaw := p.frozen, p.thaw
		p.mu.Unlock()
		if !frozen {
			return true
		}
		select {
		case <-thaw:
		case <-p.closed:
			return false
		}
	}
}

func (p *gateProxy) setFrozen(f bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f == p.frozen {
		return
	}
	p.frozen = f
	if f {
		p.thaw = make(chan struct{})
	} else {
		close(p.thaw)
	}
}

// dropConnections closes every open connection (both sides), as a network blip would.
func (p *gateProxy) dropConnections() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

func (p *gateProxy) close() {
	p.mu.Lock()
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.dropConnections()
}
