package envs

import (
	"bufio"
	"io"
	"net"
	"os"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestMain(m *testing.M) {
	RunGateProxyIfChild()
	os.Exit(m.Run())
}

// The child-process gate forwards, freezes, thaws and drops like the in-process one.
func TestRemoteGate(t *testing.T) {
	g := NewWithT(t)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = echo.Close() }()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	rg, err := newRemoteGate(echo.Addr().String())
	g.Expect(err).NotTo(HaveOccurred())
	defer rg.close()
	g.Expect(rg.cmd.Process.Pid).NotTo(Equal(os.Getpid()))

	c, err := net.Dial("tcp", rg.addr())
	g.Expect(err).NotTo(HaveOccurred())
	r := bufio.NewReader(c)
	roundTrip := func(msg string, within time.Duration) (string, error) {
		_ = c.SetDeadline(time.Now().Add(within))
		if _, err := io.WriteString(c, msg+"\n"); err != nil {
			return "", err
		}
		return r.ReadString('\n')
	}
	got, err := roundTrip("one", 5*time.Second)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal("one\n"))

	rg.setFrozen(true)
	_, err = roundTrip("two", 300*time.Millisecond)
	g.Expect(err).To(MatchError(os.ErrDeadlineExceeded), "a frozen gate forwards nothing")
	rg.setFrozen(false)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err = r.ReadString('\n')
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal("two\n"), "held data goes through on thaw")

	rg.setDown(true)
	rg.dropConnections()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = r.ReadString('\n')
	g.Expect(err).To(MatchError(io.EOF), "drop closes open connections")
	c2, err := net.Dial("tcp", rg.addr())
	g.Expect(err).NotTo(HaveOccurred())
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c2.Read(make([]byte, 1))
	g.Expect(err).To(HaveOccurred(), "a down gate closes new connections")
	_ = c2.Close()
}
