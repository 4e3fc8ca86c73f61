package chartrepo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/internal/netpolicy"
	"github.com/paddock-dev/paddock/test/chartrepos"
)

var ctx = context.Background()

func loopback() Options {
	return Options{Policy: netpolicy.Policy{AllowLoopback: true, LoopbackFlag: "--allow-loopback-repositories"}, Timeout: 5 * time.Second}
}

func hello(t *testing.T, versions ...string) []chartrepos.Chart {
	t.Helper()
	var out []chartrepos.Chart
	for _, v := range versions {
		c, err := chartrepos.Package("../../test/testdata/charts/hello", v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func reasonOf(err error) string {
	if err == nil {
		return ""
	}
	return AsError(err).Reason
}

func TestFetchIndexParsesOnceAndSummarises(t *testing.T) {
	g := NewWithT(t)
	for _, etags := range []bool{false, true} {
		r := chartrepos.NewHelmRepo(chartrepos.Options{ETags: etags})
		defer r.Close()
		g.Expect(r.Add(hello(t, "0.1.0", "0.2.0", "0.3.0-rc.1")...)).To(Succeed())
		f := &Fetcher{Options: loopback()}
		idx, changed, err := f.FetchIndex(ctx, r.URL(), Credentials{}, nil)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(changed).To(BeTrue())
		g.Expect(idx.Digest).To(HavePrefix("sha256:"))
		g.Expect(idx.Charts).To(Equal([]pluginsv1.ChartSummary{{Name: "hello", LatestVersion: "0.2.0", AppVersion: "1.0.0"}}),
			"the latest release, not the pre-release")
		cv, err := idx.File.Get("hello", "0.1.x")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cv.Version).To(Equal("0.1.0"))

		// Unchanged: the same *Index comes back, nothing parsed (with ETags nothing downloaded).
		again, changed, err := f.FetchIndex(ctx, r.URL(), Credentials{}, idx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(changed).To(BeFalse())
		g.Expect(again).To(BeIdenticalTo(idx))

		g.Expect(r.Add(hello(t, "0.4.0")...)).To(Succeed())
		next, changed, err := f.FetchIndex(ctx, r.URL(), Credentials{}, idx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(changed).To(BeTrue())
		g.Expect(next.Digest).NotTo(Equal(idx.Digest))
		g.Expect(next.Charts[0].LatestVersion).To(Equal("0.4.0"))
		g.Expect(r.Hits("/index.yaml")).To(Equal(3))
	}
}

func TestIndexFailuresHaveReasons(t *testing.T) {
	g := NewWithT(t)
	r := chartrepos.NewHelmRepo(chartrepos.Options{Username: "u", Password: "p", TLS: true})
	defer r.Close()
	g.Expect(r.Add(hello(t, "0.1.0")...)).To(Succeed())
	f := &Fetcher{Options: loopback()}
	ca, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: r.CAPEM()})
	g.Expect(err).NotTo(HaveOccurred())
	good, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: r.CAPEM(), KeyUsername: []byte("u"), KeyPassword: []byte("p")})
	g.Expect(err).NotTo(HaveOccurred())
	bad := good
	bad.Password = "wrong"

	_, _, err = f.FetchIndex(ctx, r.URL(), good, nil)
	g.Expect(err).NotTo(HaveOccurred())
	_, _, err = f.FetchIndex(ctx, r.URL(), bad, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonUnauthorized))
	g.Expect(err.Error()).NotTo(ContainSubstring("wrong"))
	_, _, err = f.FetchIndex(ctx, r.URL(), ca, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonUnauthorized))
	_, _, err = f.FetchIndex(ctx, r.URL(), Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonTLSError), "%v", err)
	_, _, err = f.FetchIndex(ctx, r.URL()+"/nothing-here", good, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonNotFound))
	_, _, err = f.FetchIndex(ctx, strings.Replace(r.URL(), "https://", "http://", 1), Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonRepositoryNotReachable), "http to a TLS port: %v", err)

	// Credentials and plain http: refused before anything is sent.
	plain := chartrepos.NewHelmRepo(chartrepos.Options{Username: "u", Password: "p"})
	defer plain.Close()
	_, _, err = f.FetchIndex(ctx, plain.URL(), Credentials{Username: "u", Password: "p"}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonInsecureCredentials))
	g.Expect(plain.Hits("/index.yaml")+plain.Denied()).To(BeZero(), "nothing was sent")
	_, _, err = f.FetchIndex(ctx, plain.URL(), Credentials{Token: "t"}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonInsecureCredentials))

	// The address policy.
	_, _, err = (&Fetcher{Options: Options{Policy: netpolicy.Policy{LoopbackFlag: "--allow-loopback-repositories"}}}).FetchIndex(ctx, plain.URL(), Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonURLNotAllowed))
	g.Expect(err.Error()).To(ContainSubstring("--allow-loopback-repositories"))
	_, _, err = f.FetchIndex(ctx, "http://169.254.169.254/latest", Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonURLNotAllowed))
	_, _, err = f.FetchIndex(ctx, "https://user:pw@example.com/charts", Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonURLNotAllowed))
	g.Expect(err.Error()).NotTo(ContainSubstring("pw"))
}

func TestIndexContentIsCheckedAndBounded(t *testing.T) {
	g := NewWithT(t)
	r := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer r.Close()
	opts := loopback()
	opts.MaxIndexBytes = 4096
	f := &Fetcher{Options: opts}
	for body, reason := range map[string]string{
		"":                           pluginsv1.ReasonIndexInvalid,
		"<html>not found</html>":     pluginsv1.ReasonIndexInvalid,
		"apiVersion: v2\n":           pluginsv1.ReasonIndexInvalid,
		"entries: {}\n":              pluginsv1.ReasonIndexInvalid,
		"apiVersion: v1\nentries: [": pluginsv1.ReasonIndexInvalid,
		"apiVersion: v1\n# " + strings.Repeat("x", 5000): pluginsv1.ReasonIndexTooLarge,
	} {
		r.SetRawIndex([]byte(body))
		_, _, err := f.FetchIndex(ctx, r.URL(), Credentials{}, nil)
		g.Expect(reasonOf(err)).To(Equal(reason), "%q: %v", body, err)
	}
	// Invalid entries are dropped and counted; a name that differs from its key is one.
	r.SetRawIndex([]byte(`apiVersion: v1
entries:
  good:
  - {name: good, version: 1.0.0, urls: [good-1.0.0.tgz]}
  - {name: good, version: not-semver, urls: [good-x.tgz]}
  - {name: good, version: 1.1.0}
  other:
  - {name: impostor, version: 1.0.0, urls: [x.tgz]}
`))
	idx, _, err := f.FetchIndex(ctx, r.URL(), Credentials{}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(idx.Charts).To(HaveLen(1))
	g.Expect(idx.Skipped).To(Equal(3))
	g.Expect(idx.Versions("good")).To(HaveLen(1))
	g.Expect(idx.Versions("other")).To(BeEmpty())
}

// A body without Content-Length is cut at the cap, not read to its end.
func TestIndexWithoutLengthIsCutAtTheCap(t *testing.T) {
	g := NewWithT(t)
	var written atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		chunk := bytes.Repeat([]byte("# padding\n"), 1000)
		for i := 0; i < 10000; i++ {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	opts := loopback()
	opts.MaxIndexBytes = 1 << 20
	_, _, err := (&Fetcher{Options: opts}).FetchIndex(ctx, srv.URL, Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonIndexTooLarge))
	g.Expect(written.Load()).To(BeNumerically("<", 20<<20), "the server was stopped long before it sent 100 MB")
}

func TestRedirectsKeepCredentialsAtHome(t *testing.T) {
	g := NewWithT(t)
	// Both TLS (httptest servers share one certificate), so only the redirect policy stands
	// between the token and the other host; the plain-http guard does not come into it.
	other := chartrepos.NewHelmRepo(chartrepos.Options{TLS: true})
	defer other.Close()
	g.Expect(other.Add(hello(t, "0.1.0")...)).To(Succeed())
	var sawAuth atomic.Bool
	redirector := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			sawAuth.Store(true)
		}
		http.Redirect(w, r, other.URL()+"/index.yaml", http.StatusFound)
	}))
	defer redirector.Close()
	ca := pemOf(redirector)
	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: ca, KeyToken: []byte("secret-token")})
	g.Expect(err).NotTo(HaveOccurred())
	f := &Fetcher{Options: loopback()}
	_, _, err = f.FetchIndex(ctx, redirector.URL, creds, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonInsecureCredentials), "%v", err)
	g.Expect(err.Error()).NotTo(ContainSubstring("secret-token"))
	g.Expect(sawAuth.Load()).To(BeTrue())
	g.Expect(other.Hits("/index.yaml")).To(BeZero(), "the redirect was not followed")

	// Anonymous: redirects to another host are followed (GitHub Pages, CDNs).
	anon, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: ca})
	g.Expect(err).NotTo(HaveOccurred())
	idx, _, err := f.FetchIndex(ctx, redirector.URL, anon, nil)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(idx.Charts).To(HaveLen(1))

	// A redirect to a metadata address is refused.
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
	}))
	defer meta.Close()
	_, _, err = f.FetchIndex(ctx, meta.URL, Credentials{}, nil)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonURLNotAllowed), "%v", err)
}

func TestCredentialsFromSecret(t *testing.T) {
	g := NewWithT(t)
	for name, data := range map[string]map[string][]byte{
		"username only":   {KeyUsername: []byte("u")},
		"both methods":    {KeyUsername: []byte("u"), KeyPassword: []byte("p"), KeyToken: []byte("t")},
		"cert, no key":    {KeyTLSCert: []byte("x")},
		"bad pair":        {KeyTLSCert: []byte("x"), KeyTLSKey: []byte("y")},
		"bad ca":          {KeyCA: []byte("not pem")},
		"header split":    {KeyToken: []byte("a\nb")},
		"colon in user":   {KeyUsername: []byte("a:b"), KeyPassword: []byte("p")},
		"oversized value": {KeyToken: bytes.Repeat([]byte("t"), 70000)},
	} {
		_, err := CredentialsFromSecret("s", data)
		g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonSecretInvalid), name)
		for _, v := range data {
			if len(v) > 0 && len(v) < 100 {
				g.Expect(err.Error()).NotTo(ContainSubstring(": "+string(v)), name)
			}
		}
	}
	c, err := CredentialsFromSecret("s", map[string][]byte{KeyToken: []byte("t\n")})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Token).To(Equal("t"), "a trailing newline (echo > file) is dropped")
	g.Expect(c.Authenticates()).To(BeTrue())
}

func TestOCIRegistryPing(t *testing.T) {
	g := NewWithT(t)
	open := chartrepos.NewOCIRegistry(chartrepos.Options{})
	defer open.Close()
	locked := chartrepos.NewOCIRegistry(chartrepos.Options{Username: "u", Password: "p", TLS: true})
	defer locked.Close()
	g.Expect(open.Push(hello(t, "0.1.0")...)).To(Succeed())

	reg, err := NewRegistry(loopback(), open.URL(), Credentials{}, true)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(reg.Path).To(Equal("charts"))
	g.Expect(reg.Ping(ctx)).To(Succeed())

	ca := locked.CAPEM()
	good, _ := CredentialsFromSecret("s", map[string][]byte{KeyCA: ca, KeyUsername: []byte("u"), KeyPassword: []byte("p")})
	bad, _ := CredentialsFromSecret("s", map[string][]byte{KeyCA: ca, KeyUsername: []byte("u"), KeyPassword: []byte("nope")})
	reg, err = NewRegistry(loopback(), locked.URL(), good, false)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(reg.Ping(ctx)).To(Succeed())
	reg, err = NewRegistry(loopback(), locked.URL(), bad, false)
	g.Expect(err).NotTo(HaveOccurred())
	err = reg.Ping(ctx)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonUnauthorized), "%v", err)
	g.Expect(err.Error()).NotTo(ContainSubstring("nope"))

	_, err = NewRegistry(loopback(), open.URL(), good, true)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonInsecureCredentials))
	reg, err = NewRegistry(loopback(), open.URL(), Credentials{}, false)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(reasonOf(reg.Ping(ctx))).To(Equal(pluginsv1.ReasonTLSError), "https to a plain http registry")
	_, err = NewRegistry(Options{}, open.URL(), Credentials{}, true)
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonURLNotAllowed))
}

func pemOf(s *httptest.Server) []byte {
	var b bytes.Buffer
	b.WriteString("-----BEGIN CERTIFICATE-----\n")
	enc := base64Lines(s.Certificate().Raw)
	b.WriteString(enc)
	b.WriteString("-----END CERTIFICATE-----\n")
	return b.Bytes()
}

// The client certificate and the Authorization header stay with the origin: a redirect (or a
// token realm) elsewhere gets neither.
func TestClientCertificateOnlyForTheOrigin(t *testing.T) {
	g := NewWithT(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "paddock"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	g.Expect(err).NotTo(HaveOccurred())
	keyDER, err := x509.MarshalECPrivateKey(key)
	g.Expect(err).NotTo(HaveOccurred())

	type seen struct{ certs, auth bool }
	var mu sync.Mutex
	got := map[string]seen{}
	record := func(name string, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got[name] = seen{certs: r.TLS != nil && len(r.TLS.PeerCertificates) > 0, auth: r.Header.Get("Authorization") != ""}
	}
	start := func(h http.HandlerFunc) *httptest.Server {
		s := httptest.NewUnstartedServer(h)
		s.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
		s.StartTLS()
		return s
	}
	foreign := start(func(w http.ResponseWriter, r *http.Request) {
		record("foreign", r)
		_, _ = w.Write([]byte("blob"))
	})
	defer foreign.Close()
	origin := start(func(w http.ResponseWriter, r *http.Request) {
		record("origin", r)
		http.Redirect(w, r, foreign.URL+"/blob", http.StatusTemporaryRedirect)
	})
	defer origin.Close()
	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: pemOf(origin), KeyToken: []byte("t"),
		KeyTLSCert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyTLSKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})})
	g.Expect(err).NotTo(HaveOccurred())
	u, _ := url.Parse(origin.URL)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, origin.URL+"/v2/x/blobs/y", nil)
	authorize(req, creds)
	resp, err := newHTTPClient(loopback(), creds, u, true).Do(req)
	g.Expect(err).NotTo(HaveOccurred())
	_ = resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	g.Expect(got["origin"]).To(Equal(seen{certs: true, auth: true}))
	g.Expect(got["foreign"]).To(Equal(seen{}), "the other host (same address, another port) got the certificate or the token")
}

// An error that quotes a presigned URL (a CDN redirect) reaches status without its query.
func TestErrorsDropURLQueries(t *testing.T) {
	g := NewWithT(t)
	err := classify(errors.New(`GET "https://cdn.example.com/blobs/sha256:ab?X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIA": mismatch Content-Length`))
	g.Expect(err.Message).NotTo(ContainSubstring("s3cr3t"))
	g.Expect(err.Message).NotTo(ContainSubstring("AKIA"))
	g.Expect(err.Message).To(ContainSubstring("https://cdn.example.com/blobs/sha256:ab?…"))
}
