// Package chartrepos serves charts for tests and make dev: a Helm repository (index.yaml and
// archives over HTTP or HTTPS, optionally behind basic auth) and an OCI registry (go-containerregistry's
// in-memory registry, which implements the OCI distribution API), both in-process. Charts are
// packaged from folders (test/testdata/charts) by the Helm SDK.
package chartrepos

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"
)

// Chart is a packaged chart.
type Chart struct {
	Metadata *chart.Metadata
	Archive  []byte
}

// Digest is the archive's sha256, as an index lists it.
func (c Chart) Digest() string {
	sum := sha256.Sum256(c.Archive)
	return hex.EncodeToString(sum[:])
}

// FileName is the archive's file name (name-version.tgz).
func (c Chart) FileName() string { return c.Metadata.Name + "-" + c.Metadata.Version + ".tgz" }

// Package packages the chart folder dir; a non-empty version overrides Chart.yaml's.
func Package(dir, version string) (Chart, error) {
	ch, err := loader.LoadDir(dir)
	if err != nil {
		return Chart{}, fmt.Errorf("loading chart %s: %w", dir, err)
	}
	if version != "" {
		ch.Metadata.Version = version
	}
	tmp, err := os.MkdirTemp("", "paddock-chart-")
	if err != nil {
		return Chart{}, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	file, err := chartutil.Save(ch, tmp)
	if err != nil {
		return Chart{}, fmt.Errorf("packaging chart %s: %w", dir, err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return Chart{}, err
	}
	return Chart{Metadata: ch.Metadata, Archive: b}, nil
}

// Options of a server.
type Options struct {
	// Username and Password turn on basic auth.
	Username, Password string
	// TLS serves HTTPS with httptest's certificate (CAPEM gives its CA).
	TLS bool
	// ETags makes the Helm repository answer conditional requests for its index with 304.
	ETags bool
	// Addr is the address to listen on (default: a free loopback port), e.g. for make dev.
	Addr string
}

// server is what both kinds share: the listener, basic auth and request counts.
type server struct {
	opts   Options
	srv    *httptest.Server
	mu     sync.Mutex
	hits   map[string]int
	denied int
	onReq  func(authorization string)
}

// OnRequest calls f with the Authorization header of every request that arrives.
func (s *server) OnRequest(f func(authorization string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onReq = f
}

func (s *server) start(h http.Handler) {
	wrapped := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		on := s.onReq
		s.mu.Unlock()
		if on != nil {
			on(r.Header.Get("Authorization"))
		}
		if s.opts.Username != "" {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(s.opts.Username)) != 1 ||
				subtle.ConstantTimeCompare([]byte(p), []byte(s.opts.Password)) != 1 {
				s.mu.Lock()
				s.denied++
				s.mu.Unlock()
				w.Header().Set("WWW-Authenticate", `Basic realm="paddock-test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		s.mu.Lock()
		s.hits[r.URL.Path]++
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	})
	s.hits = map[string]int{}
	s.srv = httptest.NewUnstartedServer(wrapped)
	if s.opts.Addr != "" {
		ln, err := net.Listen("tcp", s.opts.Addr)
		if err != nil {
			panic(fmt.Sprintf("chartrepos: listening on %s: %v", s.opts.Addr, err))
		}
		_ = s.srv.Listener.Close()
		s.srv.Listener = ln
	}
	if s.opts.TLS {
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
}

// Hits counts the authorized requests for a path.
func (s *server) Hits(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[p]
}

// Denied counts requests refused for missing or wrong credentials.
func (s *server) Denied() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.denied
}

// CAPEM is the CA certificate of a TLS server, in PEM.
func (s *server) CAPEM() []byte {
	if s.srv.Certificate() == nil {
		return nil
	}
	return pemCert(s.srv.Certificate().Raw)
}

// Close stops the server.
func (s *server) Close() { s.srv.Close() }

// HelmRepo is a Helm chart repository.
type HelmRepo struct {
	server
	index     *repo.IndexFile
	charts    map[string][]byte
	rawIndex  []byte
	generated time.Time
}

// NewHelmRepo starts an empty Helm repository.
func NewHelmRepo(opts Options) *HelmRepo {
	r := &HelmRepo{server: server{opts: opts}, index: repo.NewIndexFile(), charts: map[string][]byte{},
		generated: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r.start(http.HandlerFunc(r.serve))
	return r
}

// URL is the repository's URL (spec.url of a PluginRepository).
func (r *HelmRepo) URL() string { return r.srv.URL }

// Add publishes charts.
func (r *HelmRepo) Add(charts ...Chart) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range charts {
		if err := r.index.MustAdd(c.Metadata, c.FileName(), r.srv.URL+"/charts", c.Digest()); err != nil {
			return err
		}
		r.charts["/charts/"+c.FileName()] = c.Archive
	}
	r.index.SortEntries()
	return nil
}

// SetRawIndex serves b as index.yaml instead of the generated index (nil goes back to it).
func (r *HelmRepo) SetRawIndex(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rawIndex = b
}

func (r *HelmRepo) indexBody() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rawIndex != nil {
		return r.rawIndex, nil
	}
	r.index.Generated = r.generated
	return yaml.Marshal(r.index)
}

func (r *HelmRepo) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/index.yaml" {
		body, err := r.indexBody()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sum := sha256.Sum256(body)
		etag := `"` + hex.EncodeToString(sum[:8]) + `"`
		if r.opts.ETags {
			w.Header().Set("ETag", etag)
			if req.Header.Get("If-None-Match") == etag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(body)
		return
	}
	r.mu.Lock()
	b, ok := r.charts[path.Clean(req.URL.Path)]
	r.mu.Unlock()
	if !ok {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	_, _ = w.Write(b)
}

// OCIRegistry is an OCI registry.
type OCIRegistry struct {
	server
	blobs *redirectingBlobs
}

// NewOCIRegistry starts an empty OCI registry.
func NewOCIRegistry(opts Options) *OCIRegistry {
	blobs := &redirectingBlobs{BlobHandler: ggcrregistry.NewInMemoryBlobHandler()}
	r := &OCIRegistry{server: server{opts: opts}, blobs: blobs}
	r.start(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithBlobHandler(blobs)))
	return r
}

// RedirectBlobs makes the registry answer every blob download with a 307 to base/<repo>/<digest>
// (as registries hand blobs out through a CDN); "" serves them again. NewBlobCDN serves there.
func (r *OCIRegistry) RedirectBlobs(base string) {
	r.blobs.mu.Lock()
	defer r.blobs.mu.Unlock()
	r.blobs.to = base
}

// redirectingBlobs is the registry's blob store, which can send downloads elsewhere.
type redirectingBlobs struct {
	ggcrregistry.BlobHandler
	mu sync.Mutex
	to string
}

func (b *redirectingBlobs) Get(ctx context.Context, repo string, h ggcrv1.Hash) (io.ReadCloser, error) {
	b.mu.Lock()
	to := b.to
	b.mu.Unlock()
	if to != "" {
		return nil, ggcrregistry.RedirectError{Location: to + "/" + repo + "/" + h.String(), Code: http.StatusTemporaryRedirect}
	}
	return b.BlobHandler.Get(ctx, repo, h)
}

func (b *redirectingBlobs) Stat(ctx context.Context, repo string, h ggcrv1.Hash) (int64, error) {
	return b.BlobHandler.(ggcrregistry.BlobStatHandler).Stat(ctx, repo, h)
}

func (b *redirectingBlobs) Put(ctx context.Context, repo string, h ggcrv1.Hash, rc io.ReadCloser) error {
	return b.BlobHandler.(ggcrregistry.BlobPutHandler).Put(ctx, repo, h, rc)
}

// BlobCDN serves a registry's blobs at /<repo>/<digest>, without credentials of its own (a
// CDN with pre-signed URLs): OnRequest shows whether any arrived.
type BlobCDN struct {
	server
}

// NewBlobCDN starts a server for reg's blobs (point reg.RedirectBlobs at its URL).
func NewBlobCDN(reg *OCIRegistry, opts Options) *BlobCDN {
	c := &BlobCDN{server: server{opts: opts}}
	c.start(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		p := strings.TrimPrefix(req.URL.Path, "/")
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			http.NotFound(w, req)
			return
		}
		h, err := ggcrv1.NewHash(p[i+1:])
		if err != nil {
			http.NotFound(w, req)
			return
		}
		rc, err := reg.blobs.BlobHandler.Get(req.Context(), p[:i], h)
		if err != nil {
			http.NotFound(w, req)
			return
		}
		defer func() { _ = rc.Close() }()
		_, _ = io.Copy(w, rc)
	}))
	return c
}

// URL is the CDN's base URL.
func (c *BlobCDN) URL() string { return c.srv.URL }

// Host is the registry's host:port.
func (r *OCIRegistry) Host() string {
	return strings.TrimPrefix(strings.TrimPrefix(r.srv.URL, "http://"), "https://")
}

// URL is oci://host:port/charts (spec.url of a PluginRepository).
func (r *OCIRegistry) URL() string { return "oci://" + r.Host() + "/charts" }

// Push pushes charts under /charts/<name>:<version> with Helm's registry client.
func (r *OCIRegistry) Push(charts ...Chart) error {
	creds, err := os.MkdirTemp("", "paddock-registry-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(creds) }()
	opts := []registry.ClientOption{registry.ClientOptCredentialsFile(filepath.Join(creds, "config.json"))}
	if r.opts.TLS {
		opts = append(opts, registry.ClientOptHTTPClient(r.srv.Client()))
	} else {
		opts = append(opts, registry.ClientOptPlainHTTP())
	}
	if r.opts.Username != "" {
		opts = append(opts, registry.ClientOptBasicAuth(r.opts.Username, r.opts.Password))
	}
	c, err := registry.NewClient(opts...)
	if err != nil {
		return err
	}
	for _, ch := range charts {
		ref := fmt.Sprintf("%s/charts/%s:%s", r.Host(), ch.Metadata.Name, ch.Metadata.Version)
		if _, err := c.Push(ch.Archive, ref); err != nil {
			return fmt.Errorf("pushing %s: %w", ref, err)
		}
	}
	return nil
}
