package chartrepo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Masterminds/semver/v3"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/registry"
	"helm.sh/helm/v3/pkg/repo"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// Defaults of ChartCache.
const (
	DefaultChartCacheBytes = 512 << 20
	maxManifestBytes       = 4 << 20
	maxTags                = 10000
)

// Resolved is one chart version, loaded.
type Resolved struct {
	Name, Version, AppVersion string
	// Digest is "sha256:<hex>" of the archive.
	Digest string
	// archive is the verified archive, for Fresh. Only the archive is kept (what the cache
	// charges against MaxBytes): the expanded chart is built per action, because Helm's actions
	// modify the chart they install (dependencies disabled by values are removed).
	archive []byte
}

// Fresh returns a private copy of the chart, loaded again from the verified archive.
func (r *Resolved) Fresh() (*chart.Chart, error) {
	ch, err := loader.LoadArchive(bytes.NewReader(r.archive))
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart archive does not load: %s", firstLine(err.Error()))
	}
	return ch, nil
}

// ChartCache downloads every chart version once and keeps it, keyed by the archive's digest,
// for every release and cluster. Concurrent requests for one version wait for one download.
type ChartCache struct {
	Options Options
	Limits  ArchiveLimits
	// MaxBytes bounds the archives kept (by compressed size); the least recently used go first.
	MaxBytes int64

	mu        sync.Mutex
	entries   map[string]*chartEntry
	size      int64
	downloads atomic.Int64
	// resolved remembers, per OCI repository fetch, which tag and chart layer a chart's version
	// constraint resolved to: listing tags and reading a manifest on every reconcile costs the
	// registry (Docker Hub counts a manifest read as a pull), a new fetch of the repository
	// (spec.interval) resolves again.
	resolved map[ociKey]ociResolution
	// resolutions counts OCI resolutions that reached the registry (for tests).
	resolutions atomic.Int64
}

type ociKey struct {
	uid                 string
	name, version, host string
}

type ociResolution struct {
	fetchedAt    time.Time
	tag, version string
	layer        ocispec.Descriptor
}

// maxOCIResolutions bounds the resolution memory (it is dropped whole beyond).
const maxOCIResolutions = 10000

// OCIResolutions counts OCI resolutions that reached the registry.
func (c *ChartCache) OCIResolutions() int64 { return c.resolutions.Load() }

type chartEntry struct {
	ready chan struct{}
	res   *Resolved
	err   error
	size  int64
	used  time.Time
}

// Downloads counts the archives downloaded so far (tests and metrics).
func (c *ChartCache) Downloads() int64 { return c.downloads.Load() }

// Get resolves version (exact, or a semver range such as "3.13.x" or ">=1.2 <2") of chart name
// in src and returns it loaded, downloading it only if no earlier call did.
func (c *ChartCache) Get(ctx context.Context, src *Source, name, version string) (*Resolved, error) {
	switch {
	case src.Index != nil:
		return c.getHelm(ctx, src, name, version)
	case src.Registry != nil:
		return c.getOCI(ctx, src, name, version)
	}
	return nil, fail(pluginsv1.ReasonRepositoryNotReachable, "the repository has not been fetched yet")
}

// cacheScope keeps what a repository downloaded with credentials to that repository: another
// repository whose index (or manifest) names the same digest must not be served a private chart
// without ever asking the private repository. Anonymous downloads are public and shared.
func cacheScope(src *Source) string {
	if src.Private || src.Credentials.Authenticates() {
		return "repo:" + string(src.UID) + "/"
	}
	return ""
}

func (c *ChartCache) getHelm(ctx context.Context, src *Source, name, version string) (*Resolved, error) {
	if len(src.Index.Versions(name)) == 0 {
		return nil, fail(pluginsv1.ReasonChartNotFound, "the repository has no chart %q", name)
	}
	cv, err := src.Index.File.Get(name, version)
	if err != nil {
		return nil, versionNotFound(name, version, versionStrings(src.Index.Versions(name)))
	}
	abs, err := repo.ResolveReferenceURL(src.Index.BaseURL.String(), cv.URLs[0])
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the index lists an invalid URL for %s %s", name, cv.Version)
	}
	key := "url:" + abs + "@" + src.Index.Digest
	if cv.Digest != "" {
		key = "sha256:" + strings.ToLower(cv.Digest)
	}
	key = cacheScope(src) + key
	return c.load(ctx, key, name, cv.Version, func() ([]byte, error) {
		b, err := c.downloadHTTP(ctx, src, abs)
		if err != nil {
			return nil, err
		}
		if cv.Digest != "" {
			sum := sha256.Sum256(b)
			if !strings.EqualFold(hex.EncodeToString(sum[:]), cv.Digest) {
				return nil, fail(pluginsv1.ReasonChartDigestMismatch, "the archive of %s %s does not have the digest the index lists", name, cv.Version)
			}
		}
		return b, nil
	})
}

// versionStrings lists a chart's versions as strings (newest first).
func versionStrings(cvs repo.ChartVersions) []string {
	out := make([]string, 0, len(cvs))
	for _, cv := range cvs {
		out = append(out, cv.Version)
	}
	return out
}

func versionNotFound(name, version string, have []string) error {
	if _, err := semver.NewConstraint(version); err != nil {
		return fail(pluginsv1.ReasonVersionNotFound, "%q is neither a version nor a semver range: %s", version, firstLine(err.Error()))
	}
	shown := have
	if len(shown) > 5 {
		shown = shown[:5]
	}
	return fail(pluginsv1.ReasonVersionNotFound, "no version of %s satisfies %q (newest: %s)", name, version, strings.Join(shown, ", "))
}

// downloadHTTP fetches a chart archive. Credentials go along only to the repository's own
// origin (as Helm without --pass-credentials); the CA bundle is used everywhere.
func (c *ChartCache) downloadHTTP(ctx context.Context, src *Source, abs string) ([]byte, error) {
	u, err := url.Parse(abs)
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart URL is not valid")
	}
	creds := Credentials{CAs: src.Credentials.CAs}
	if sameOrigin(u, src.Index.BaseURL) {
		creds = src.Credentials
	}
	if _, err := checkURL(c.Options, abs, creds, true); err != nil {
		return nil, err
	}
	origin := &url.URL{Scheme: u.Scheme, Host: u.Host}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, abs, nil)
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart URL is not valid")
	}
	authorize(req, creds)
	resp, err := newHTTPClient(c.Options, creds, origin, false).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, AsError(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, statusError(resp, "the chart archive "+describe(u))
	}
	max := c.Limits.withDefaults().MaxArchiveBytes
	tooLarge := func() error {
		return fail(pluginsv1.ReasonChartInvalid, "the chart archive is larger than the limit of %d bytes", max)
	}
	if resp.ContentLength > max {
		return nil, tooLarge()
	}
	return readCapped(ctx, resp.Body, max, tooLarge)
}

func (c *ChartCache) getOCI(ctx context.Context, src *Source, name, version string) (*Resolved, error) {
	reg := src.Registry
	ref := reg.Host + "/" + strings.TrimPrefix(reg.Path+"/"+name, "/")
	r, err := remote.NewRepository(ref)
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartNotFound, "%q is not a valid chart name for an OCI registry", name)
	}
	r.Client, r.PlainHTTP = reg.client, reg.plainHTTP
	key := ociKey{uid: string(src.UID), name: name, version: version, host: ref}
	c.mu.Lock()
	hit, ok := c.resolved[key]
	c.mu.Unlock()
	if ok && hit.fetchedAt.Equal(src.FetchedAt) {
		return c.loadOCI(ctx, src, r, ref, hit.tag, name, hit.version, hit.layer)
	}
	c.resolutions.Add(1)
	var tags []string
	err = r.Tags(ctx, "", func(page []string) error {
		tags = append(tags, page...)
		if len(tags) > maxTags {
			return fail(pluginsv1.ReasonChartInvalid, "%s has more than %d tags", ref, maxTags)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var e *Error
		if errors.As(err, &e) {
			return nil, e
		}
		re := registryError(err)
		if AsError(re).Reason == pluginsv1.ReasonNotFound {
			return nil, fail(pluginsv1.ReasonChartNotFound, "the registry has no chart %s", ref)
		}
		return nil, re
	}
	versions := semverTags(tags)
	if len(versions) == 0 {
		return nil, fail(pluginsv1.ReasonChartNotFound, "the registry has no chart %s (no semver tags)", ref)
	}
	picked, err := registry.GetTagMatchingVersionOrConstraint(versions, version)
	if err != nil {
		return nil, versionNotFound(name, version, versions)
	}
	// Tags cannot hold "+": Helm pushes 1.0.0+build as 1.0.0_build.
	tag := strings.ReplaceAll(picked, "+", "_")
	desc, rc, err := r.FetchReference(ctx, tag)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, registryError(err)
	}
	if desc.Size > maxManifestBytes {
		_ = rc.Close()
		return nil, fail(pluginsv1.ReasonChartInvalid, "the manifest of %s:%s is larger than %d bytes", ref, tag, maxManifestBytes)
	}
	raw, err := content.ReadAll(rc, desc)
	_ = rc.Close()
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the manifest of %s:%s does not read: %s", ref, tag, firstLine(err.Error()))
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the manifest of %s:%s is not an OCI manifest", ref, tag)
	}
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if mt := m.Layers[i].MediaType; mt == registry.ChartLayerMediaType || mt == registry.LegacyChartLayerMediaType {
			layer = &m.Layers[i]
			break
		}
	}
	if layer == nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "%s:%s is not a Helm chart (no chart layer)", ref, tag)
	}
	if max := c.Limits.withDefaults().MaxArchiveBytes; layer.Size > max {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart archive of %s:%s is %d bytes, more than the limit of %d", ref, tag, layer.Size, max)
	}
	c.mu.Lock()
	if c.resolved == nil || len(c.resolved) >= maxOCIResolutions {
		c.resolved = map[ociKey]ociResolution{}
	}
	c.resolved[key] = ociResolution{fetchedAt: src.FetchedAt, tag: tag, version: picked, layer: *layer}
	c.mu.Unlock()
	return c.loadOCI(ctx, src, r, ref, tag, name, picked, *layer)
}

// loadOCI returns the chart whose archive is layer l (downloaded once per digest).
func (c *ChartCache) loadOCI(ctx context.Context, src *Source, r *remote.Repository, ref, tag, name, picked string, l ocispec.Descriptor) (*Resolved, error) {
	return c.load(ctx, cacheScope(src)+l.Digest.String(), name, picked, func() ([]byte, error) {
		rc, err := r.Blobs().Fetch(ctx, l)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, registryError(err)
		}
		defer func() { _ = rc.Close() }()
		b, err := content.ReadAll(rc, l) // checks the size and the digest
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fail(pluginsv1.ReasonChartDigestMismatch, "the chart archive of %s:%s does not match its manifest: %s", ref, tag, firstLine(err.Error()))
		}
		return b, nil
	})
}

// semverTags keeps the tags that are semantic versions (with "_" read as "+"), newest first.
func semverTags(tags []string) []string {
	type tv struct {
		s string
		v *semver.Version
	}
	var vs []tv
	for _, t := range tags {
		s := strings.ReplaceAll(t, "_", "+")
		if v, err := semver.StrictNewVersion(s); err == nil {
			vs = append(vs, tv{s, v})
		}
	}
	sort.SliceStable(vs, func(i, j int) bool { return vs[i].v.GreaterThan(vs[j].v) })
	out := make([]string, len(vs))
	for i := range vs {
		out[i] = vs[i].s
	}
	return out
}

// load returns the cached chart under key, or runs download once for all concurrent callers.
func (c *ChartCache) load(ctx context.Context, key, name, version string, download func() ([]byte, error)) (*Resolved, error) {
	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[string]*chartEntry{}
	}
	e, ok := c.entries[key]
	if ok {
		e.used = time.Now()
		c.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err != nil {
			if (errors.Is(e.err, context.Canceled) || errors.Is(e.err, context.DeadlineExceeded)) && ctx.Err() == nil {
				// The caller that downloaded was cancelled, not this one: try again.
				return c.load(ctx, key, name, version, download)
			}
			return nil, e.err
		}
		if e.res.Name != name || e.res.Version != version {
			// An index (or manifest) that lists this archive under another name or version.
			return nil, fail(pluginsv1.ReasonChartInvalid, "the archive listed as %s %s holds another chart", name, version)
		}
		return e.res, nil
	}
	e = &chartEntry{ready: make(chan struct{}), used: time.Now()}
	c.entries[key] = e
	c.mu.Unlock()

	res, size, err := c.fetchAndLoad(name, version, download)
	c.mu.Lock()
	e.res, e.err, e.size = res, err, size
	if err != nil {
		// Failures are not remembered: the next call tries again.
		delete(c.entries, key)
	} else {
		c.size += size
		c.evictLocked(key)
	}
	c.mu.Unlock()
	close(e.ready)
	return res, err
}

func (c *ChartCache) fetchAndLoad(name, version string, download func() ([]byte, error)) (*Resolved, int64, error) {
	b, err := download()
	if err != nil {
		return nil, 0, err
	}
	c.downloads.Add(1)
	ch, err := LoadArchive(b, c.Limits)
	if err != nil {
		return nil, 0, err
	}
	if ch.Metadata == nil || ch.Metadata.Name != name || ch.Metadata.Version != version {
		return nil, 0, fail(pluginsv1.ReasonChartInvalid, "the archive listed as %s %s holds another chart", name, version)
	}
	sum := sha256.Sum256(b)
	return &Resolved{Name: name, Version: version, AppVersion: ch.Metadata.AppVersion,
		Digest: "sha256:" + hex.EncodeToString(sum[:]), archive: b}, int64(len(b)), nil
}

// evictLocked drops the least recently used charts until the cache fits, never keep.
func (c *ChartCache) evictLocked(keep string) {
	max := c.MaxBytes
	if max <= 0 {
		max = DefaultChartCacheBytes
	}
	for c.size > max {
		var oldest string
		var when time.Time
		for k, e := range c.entries {
			if k == keep || e.res == nil {
				continue
			}
			if oldest == "" || e.used.Before(when) {
				oldest, when = k, e.used
			}
		}
		if oldest == "" {
			return
		}
		c.size -= c.entries[oldest].size
		delete(c.entries, oldest)
	}
}

// String names a chart for messages.
func (r *Resolved) String() string { return fmt.Sprintf("%s %s", r.Name, r.Version) }
