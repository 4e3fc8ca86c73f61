package chartrepo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/Masterminds/semver/v3"
	"helm.sh/helm/v3/pkg/repo"
	"sigs.k8s.io/yaml"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// Index is a parsed, validated repository index. It is immutable once built: releases and
// clusters share one.
type Index struct {
	// Digest is "sha256:<hex>" of the index document as served.
	Digest string
	// Size is the document's size in bytes.
	Size int
	// File holds the valid entries, sorted newest version first (IndexFile.Get works on it).
	File *repo.IndexFile
	// Charts summarises every chart, sorted by name.
	Charts []pluginsv1.ChartSummary
	// Skipped counts the entries dropped as invalid.
	Skipped int
	// BaseURL is the URL the index was fetched from, for resolving relative chart URLs.
	BaseURL *url.URL
	// etag and lastModified make the next fetch conditional.
	etag, lastModified string
}

// Fetcher downloads and parses repository indexes.
type Fetcher struct {
	Options Options
}

// FetchIndex fetches repoURL's index.yaml. prev is the last good index of the same repository:
// when the server says it has not changed (ETag / Last-Modified), or the document's digest is
// prev's, prev itself is returned and nothing is parsed. changed reports whether the result is a
// new index.
func (f *Fetcher) FetchIndex(ctx context.Context, repoURL string, creds Credentials, prev *Index) (idx *Index, changed bool, err error) {
	base, err := checkURL(f.Options, repoURL, creds, true)
	if err != nil {
		return nil, false, err
	}
	indexURL := base.JoinPath("index.yaml")
	indexURL.RawQuery = base.RawQuery
	client := newHTTPClient(f.Options, creds, base, false)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, indexURL.String(), nil)
	if err != nil {
		return nil, false, fail(pluginsv1.ReasonURLNotAllowed, "the url is not a valid URL")
	}
	req.Header.Set("Accept", "application/yaml, application/x-yaml, text/yaml, application/json;q=0.9, */*;q=0.5")
	authorize(req, creds)
	if prev != nil && prev.BaseURL != nil && prev.BaseURL.String() == base.String() {
		if prev.etag != "" {
			req.Header.Set("If-None-Match", prev.etag)
		}
		if prev.lastModified != "" {
			req.Header.Set("If-Modified-Since", prev.lastModified)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		return nil, false, AsError(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusNotModified && req.Header.Get("If-None-Match")+req.Header.Get("If-Modified-Since") != "" {
		return prev, false, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, false, statusError(resp, "index.yaml at "+describe(indexURL))
	}
	max := f.Options.maxIndexBytes()
	if resp.ContentLength > max {
		return nil, false, indexTooLarge(resp.ContentLength, max)
	}
	body, err := readCapped(ctx, resp.Body, max, func() error { return indexTooLarge(-1, max) })
	if err != nil {
		return nil, false, err
	}
	sum := sha256.Sum256(body)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	etag, lastModified := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	if prev != nil && prev.Digest == digest {
		// Same document: keep the parsed one. Only the validators may have changed.
		if prev.etag == etag && prev.lastModified == lastModified && prev.BaseURL.String() == base.String() {
			return prev, false, nil
		}
		cp := *prev
		cp.etag, cp.lastModified, cp.BaseURL = etag, lastModified, base
		return &cp, false, nil
	}
	idx, err = ParseIndex(body)
	if err != nil {
		return nil, false, err
	}
	idx.BaseURL, idx.etag, idx.lastModified = base, etag, lastModified
	return idx, true, nil
}

func indexTooLarge(size, max int64) error {
	if size > 0 {
		return fail(pluginsv1.ReasonIndexTooLarge, "the index is %d bytes, more than the limit of %d (--max-repository-index-bytes)", size, max)
	}
	return fail(pluginsv1.ReasonIndexTooLarge, "the index is more than the limit of %d bytes (--max-repository-index-bytes)", max)
}

// ParseIndex parses and validates an index document (YAML or JSON). Entries that are not valid
// charts (a bad name or version, no URL, a name that differs from its key) are dropped and
// counted; a document that is not an index at all is an IndexInvalid error.
func ParseIndex(body []byte) (*Index, error) {
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil, fail(pluginsv1.ReasonIndexInvalid, "the index is empty")
	}
	file := &repo.IndexFile{}
	if err := yaml.Unmarshal(body, file); err != nil {
		return nil, fail(pluginsv1.ReasonIndexInvalid, "the index does not parse: %s", firstLine(err.Error()))
	}
	if file.APIVersion == "" {
		return nil, fail(pluginsv1.ReasonIndexInvalid, "the document is not a Helm repository index (no apiVersion)")
	}
	if file.APIVersion != repo.APIVersionV1 {
		return nil, fail(pluginsv1.ReasonIndexInvalid, "the index's apiVersion is %q; only %q is supported", truncate(file.APIVersion, 40), repo.APIVersionV1)
	}
	sum := sha256.Sum256(body)
	idx := &Index{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: len(body), File: file}
	for name, versions := range file.Entries {
		kept := versions[:0]
		for _, cv := range versions {
			if !validEntry(name, cv) {
				idx.Skipped++
				continue
			}
			kept = append(kept, cv)
		}
		if len(kept) == 0 {
			delete(file.Entries, name)
			continue
		}
		file.Entries[name] = kept
	}
	file.SortEntries()
	for name, versions := range file.Entries {
		idx.Charts = append(idx.Charts, summarize(name, versions))
	}
	sort.Slice(idx.Charts, func(i, j int) bool { return idx.Charts[i].Name < idx.Charts[j].Name })
	return idx, nil
}

func validEntry(name string, cv *repo.ChartVersion) bool {
	if cv == nil || cv.Metadata == nil || cv.Name != name || len(name) > 253 || len(cv.URLs) == 0 || cv.Removed {
		return false
	}
	if cv.APIVersion == "" {
		cv.APIVersion = "v1"
	}
	// Validate checks the name and that the version is semver.
	if err := cv.Validate(); err != nil {
		return false
	}
	for _, u := range cv.URLs {
		if u == "" || len(u) > 2048 {
			return false
		}
	}
	return true
}

// summarize picks the highest release version, or the highest pre-release when there is no
// release. versions are sorted newest first.
func summarize(name string, versions repo.ChartVersions) pluginsv1.ChartSummary {
	pick := versions[0]
	for _, cv := range versions {
		if v, err := semver.NewVersion(cv.Version); err == nil && v.Prerelease() == "" {
			pick = cv
			break
		}
	}
	return pluginsv1.ChartSummary{Name: name, LatestVersion: truncate(pick.Version, 64), AppVersion: truncate(pick.AppVersion, 64)}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return truncate(s, 200)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Versions returns a chart's versions, newest first (nil when the index has no such chart).
func (i *Index) Versions(chart string) repo.ChartVersions { return i.File.Entries[chart] }

// String names the index for logs.
func (i *Index) String() string { return fmt.Sprintf("%s (%d charts)", i.Digest, len(i.Charts)) }
