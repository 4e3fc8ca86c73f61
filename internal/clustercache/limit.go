package clustercache

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// ErrResponseTooLarge is returned while reading a member's response past its cap. A member (or
// something posing as one) must not be able to exhaust the memory of the manager that serves the
// whole fleet.
var ErrResponseTooLarge = errors.New("the member's response is larger than Paddock accepts")

// ResponseTooLargeError says which cap a response exceeded.
type ResponseTooLargeError struct{ Limit int64 }

func (e *ResponseTooLargeError) Error() string {
	return fmt.Sprintf("%s (more than %d bytes)", ErrResponseTooLarge, e.Limit)
}

func (e *ResponseTooLargeError) Unwrap() error { return ErrResponseTooLarge }

// capTransport caps every response body at limit bytes, counted as they are read (after any
// transport-level decompression), so neither a declared nor an undeclared length gets past it.
type capTransport struct {
	next  http.RoundTripper
	limit int64
}

func (t *capTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.Body == nil {
		return resp, err
	}
	if resp.ContentLength > t.limit {
		_ = resp.Body.Close()
		return nil, &ResponseTooLargeError{Limit: t.limit}
	}
	resp.Body = &cappedBody{rc: resp.Body, left: t.limit, limit: t.limit}
	return resp, nil
}

type cappedBody struct {
	rc    io.ReadCloser
	left  int64
	limit int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, &ResponseTooLargeError{Limit: b.limit}
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// WrappedRoundTripper lets utilnet.CloseIdleConnectionsFor reach the transport below.
func (t *capTransport) WrappedRoundTripper() http.RoundTripper { return t.next }

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the shared transport, through
// client-go's wrappers (which only expose WrappedRoundTripper).
func (t *capTransport) CloseIdleConnections() { utilnet.CloseIdleConnectionsFor(t.next) }
