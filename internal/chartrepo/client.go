package chartrepo

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/netpolicy"
)

// Defaults of Options.
const (
	DefaultTimeout       = 60 * time.Second
	DefaultMaxIndexBytes = 50 << 20
	maxRedirects         = 5
	maxErrorBodyBytes    = 4 << 10
)

// Options are the manager-wide settings of every repository connection.
type Options struct {
	// Policy is the outbound address policy (--allow-loopback-repositories,
	// --repository-denied-cidrs).
	Policy netpolicy.Policy
	// Timeout bounds each request, body included; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxIndexBytes bounds a repository index (--max-repository-index-bytes); 0 means
	// DefaultMaxIndexBytes.
	MaxIndexBytes int64
	// UserAgent is sent with every request.
	UserAgent string
}

func (o Options) timeout() time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return DefaultTimeout
}

func (o Options) maxIndexBytes() int64 {
	if o.MaxIndexBytes > 0 {
		return o.MaxIndexBytes
	}
	return DefaultMaxIndexBytes
}

// newHTTPClient builds the client of one repository: no proxy, the address policy at dial time,
// the Secret's CA, and credentials only for the origin they were given for. The client
// certificate is only ever offered to the origin (other hosts, such as a registry's token realm
// or a CDN, go through a transport without it). A redirect to another host is refused while
// credentials are configured, unless foreignRedirects: then it is followed without the
// Authorization header and cookies (OCI registries hand blobs out through CDNs by redirect).
func newHTTPClient(o Options, creds Credentials, origin *url.URL, foreignRedirects bool) *http.Client {
	transport := func(cert *tls.Certificate) *http.Transport {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: creds.CAs}
		if cert != nil {
			tlsCfg.Certificates = []tls.Certificate{*cert}
		}
		return &http.Transport{
			// No proxy, whatever HTTPS_PROXY says: the connection goes to the address the policy checked.
			Proxy:                  nil,
			DialContext:            o.Policy.Dialer(10 * time.Second).DialContext,
			TLSClientConfig:        tlsCfg,
			TLSHandshakeTimeout:    10 * time.Second,
			ResponseHeaderTimeout:  30 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			MaxIdleConnsPerHost:    4,
			// Clients of one fetch are dropped after it: their idle connections must not linger.
			IdleConnTimeout:   15 * time.Second,
			ForceAttemptHTTP2: true,
		}
	}
	own := transport(creds.ClientCert)
	foreign := own
	if creds.ClientCert != nil {
		foreign = transport(nil)
	}
	return &http.Client{
		Timeout:   o.timeout(),
		Transport: &guard{own: own, foreign: foreign, origin: origin, userAgent: o.UserAgent},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxRedirects {
				return fail(pluginsv1.ReasonRepositoryNotReachable, "the repository redirected more than %d times", maxRedirects)
			}
			if err := o.Policy.CheckHost(req.URL.Hostname()); err != nil {
				return fail(pluginsv1.ReasonURLNotAllowed, "the repository redirected to an address that is not allowed: %s", err)
			}
			if sameOrigin(req.URL, origin) {
				return nil
			}
			if creds.Authenticates() && !foreignRedirects {
				return fail(pluginsv1.ReasonInsecureCredentials,
					"the repository redirected to another host (%s); credentials are only sent to %s, so the redirect was not followed",
					req.URL.Host, origin.Host)
			}
			// Go keeps Authorization on a redirect to the same host name on another port, or to a
			// subdomain: never to anything but the origin here.
			req.Header.Del("Authorization")
			req.Header.Del("Cookie")
			return nil
		},
	}
}

func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host)
}

// guard is the last check before a request leaves: credentials never go over plain http, and
// nothing but http(s) is ever requested. Requests to the origin go through own (with the client
// certificate), the rest through foreign.
type guard struct {
	own, foreign http.RoundTripper
	origin       *url.URL
	userAgent    string
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	switch req.URL.Scheme {
	case "https":
	case "http":
		if req.Header.Get("Authorization") != "" {
			return nil, fail(pluginsv1.ReasonInsecureCredentials, "refusing to send credentials over plain http to %s", req.URL.Host)
		}
	default:
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "scheme %q is not allowed", req.URL.Scheme)
	}
	if g.userAgent != "" && req.Header.Get("User-Agent") == "" {
		req = req.Clone(req.Context())
		req.Header.Set("User-Agent", g.userAgent)
	}
	if sameOrigin(req.URL, g.origin) {
		return g.own.RoundTrip(req)
	}
	return g.foreign.RoundTrip(req)
}

// authorize sets the request's credentials (only ever called for the repository's own origin).
func authorize(req *http.Request, creds Credentials) {
	switch {
	case creds.Token != "":
		req.Header.Set("Authorization", "Bearer "+creds.Token)
	case creds.Username != "":
		req.SetBasicAuth(creds.Username, creds.Password)
	}
}

// checkURL refuses a repository URL before anything is sent: no credentials in it, and no
// authenticating credentials with plain http.
func checkURL(o Options, raw string, creds Credentials, plainHTTPAllowed bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "the url is not a valid URL")
	}
	if u.User != nil {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "the url must not carry credentials; put them in the Secret of spec.secretRef")
	}
	if u.Fragment != "" {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "the url must not have a fragment")
	}
	if u.Scheme == "http" {
		if !plainHTTPAllowed {
			return nil, fail(pluginsv1.ReasonURLNotAllowed, "plain http is not allowed here")
		}
		if creds.Authenticates() {
			return nil, fail(pluginsv1.ReasonInsecureCredentials,
				"spec.secretRef holds credentials but the url is plain http; credentials are never sent over plain http (use https)")
		}
	}
	if err := o.Policy.CheckHost(u.Hostname()); err != nil {
		return nil, fail(pluginsv1.ReasonURLNotAllowed, "the url's address is not allowed: %s", err)
	}
	return u, nil
}

// statusError turns a non-2xx answer into a reason. The body is not quoted: it may echo the
// request.
func statusError(resp *http.Response, what string) *Error {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBodyBytes))
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fail(pluginsv1.ReasonUnauthorized, "the repository refused access to %s (HTTP %d); check the credentials in spec.secretRef", what, code)
	case code == http.StatusNotFound || code == http.StatusGone:
		return fail(pluginsv1.ReasonNotFound, "the repository has no %s (HTTP %d); check spec.url", what, code)
	default:
		return fail(pluginsv1.ReasonRepositoryNotReachable, "the repository answered HTTP %d for %s", code, what)
	}
}

// readCapped reads at most max bytes of body, failing with tooLarge beyond that.
func readCapped(ctx context.Context, body io.Reader, max int64, tooLarge func() error) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, max+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		return nil, fail(pluginsv1.ReasonRepositoryNotReachable, "reading from the repository failed: %s", tlsCause(err))
	}
	if int64(len(b)) > max {
		return nil, tooLarge()
	}
	return b, nil
}

// describe is a URL fit for messages and logs: no query (it may hold a signature or token).
func describe(u *url.URL) string {
	c := *u
	c.RawQuery, c.ForceQuery, c.User = "", false, nil
	return c.String()
}
