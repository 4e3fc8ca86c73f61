package chartrepo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
	"github.com/paddock-dev/paddock/test/chartrepos"
)

func helmSource(t *testing.T, r *chartrepos.HelmRepo, creds Credentials) *Source {
	t.Helper()
	idx, _, err := (&Fetcher{Options: loopback()}).FetchIndex(ctx, r.URL(), creds, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Source{Index: idx, Credentials: creds}
}

func TestEveryChartVersionIsDownloadedOnce(t *testing.T) {
	g := NewWithT(t)
	r := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer r.Close()
	g.Expect(r.Add(hello(t, "0.1.0", "0.1.1", "0.2.0", "1.0.0-rc.1")...)).To(Succeed())
	src := helmSource(t, r, Credentials{})
	c := &ChartCache{Options: loopback()}

	var wg sync.WaitGroup
	results := make([]*Resolved, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Get(ctx, src, "hello", "0.1.x")
			g.Expect(err).NotTo(HaveOccurred())
			results[i] = res
		}()
	}
	wg.Wait()
	g.Expect(c.Downloads()).To(Equal(int64(1)))
	g.Expect(r.Hits("/charts/hello-0.1.1.tgz")).To(Equal(1))
	for _, res := range results {
		g.Expect(res).To(BeIdenticalTo(results[0]))
	}
	g.Expect(results[0].Version).To(Equal("0.1.1"))
	g.Expect(results[0].Name).To(Equal("hello"))

	for version, want := range map[string]string{"0.2.0": "0.2.0", ">=0.1 <0.2": "0.1.1", "*": "0.2.0", "1.0.0-rc.1": "1.0.0-rc.1"} {
		res, err := c.Get(ctx, src, "hello", version)
		g.Expect(err).NotTo(HaveOccurred(), version)
		g.Expect(res.Version).To(Equal(want), version)
	}
	g.Expect(c.Downloads()).To(Equal(int64(3)), "0.1.1, 0.2.0, 1.0.0-rc.1")

	_, err := c.Get(ctx, src, "nope", "1.0.0")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonChartNotFound))
	_, err = c.Get(ctx, src, "hello", ">=5")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonVersionNotFound))
	g.Expect(err.Error()).To(ContainSubstring("newest: 1.0.0-rc.1, 0.2.0"))
	_, err = c.Get(ctx, src, "hello", "not a range!")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonVersionNotFound))
}

func TestTamperedArchiveIsRefused(t *testing.T) {
	g := NewWithT(t)
	r := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer r.Close()
	charts := hello(t, "0.1.0")
	g.Expect(r.Add(charts...)).To(Succeed())
	// An index that lists another digest for the same archive.
	r.SetRawIndex([]byte(fmt.Sprintf(`apiVersion: v1
entries:
  hello:
  - {name: hello, version: 0.1.0, urls: [%s/charts/hello-0.1.0.tgz], digest: %s}
`, r.URL(), strings.Repeat("ab", 32))))
	c := &ChartCache{Options: loopback()}
	_, err := c.Get(ctx, helmSource(t, r, Credentials{}), "hello", "0.1.0")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonChartDigestMismatch))
}

// Credentials go with chart downloads only to the repository's own origin.
func TestChartCredentialsStayOnTheRepositoryOrigin(t *testing.T) {
	g := NewWithT(t)
	home := chartrepos.NewHelmRepo(chartrepos.Options{Username: "u", Password: "p", TLS: true})
	defer home.Close()
	cdn := chartrepos.NewHelmRepo(chartrepos.Options{TLS: true})
	defer cdn.Close()
	ch := hello(t, "0.1.0")[0]
	g.Expect(cdn.Add(ch)).To(Succeed())
	home.SetRawIndex([]byte(fmt.Sprintf(`apiVersion: v1
entries:
  hello:
  - {name: hello, version: 0.1.0, urls: [%s/charts/hello-0.1.0.tgz], digest: %s}
`, cdn.URL(), ch.Digest())))
	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: home.CAPEM(), KeyUsername: []byte("u"), KeyPassword: []byte("p")})
	g.Expect(err).NotTo(HaveOccurred())
	var sawAuth atomic.Bool
	cdn.OnRequest(func(auth string) {
		if auth != "" {
			sawAuth.Store(true)
		}
	})
	res, err := (&ChartCache{Options: loopback()}).Get(ctx, helmSource(t, home, creds), "hello", "0.1.0")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Version).To(Equal("0.1.0"))
	g.Expect(sawAuth.Load()).To(BeFalse(), "no Authorization header reached the other origin")
}

// A chart downloaded with credentials is kept to its repository: another repository whose index
// names the same digest is not served it from the cache (it asks its own server, which here has
// nothing); anonymous downloads are shared.
func TestAPrivateChartIsNotServedToAnotherRepository(t *testing.T) {
	g := NewWithT(t)
	private := chartrepos.NewHelmRepo(chartrepos.Options{Username: "u", Password: "p", TLS: true})
	defer private.Close()
	ch := hello(t, "0.1.0")[0]
	g.Expect(private.Add(ch)).To(Succeed())
	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: private.CAPEM(), KeyUsername: []byte("u"), KeyPassword: []byte("p")})
	g.Expect(err).NotTo(HaveOccurred())
	c := &ChartCache{Options: loopback()}
	privSrc := helmSource(t, private, creds)
	privSrc.UID = "private-repo"
	_, err = c.Get(ctx, privSrc, "hello", "0.1.0")
	g.Expect(err).NotTo(HaveOccurred())

	guesser := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer guesser.Close()
	guesser.SetRawIndex([]byte(fmt.Sprintf(`apiVersion: v1
entries:
  hello:
  - {name: hello, version: 0.1.0, urls: [%s/charts/nothing-here.tgz], digest: %s}
`, guesser.URL(), ch.Digest())))
	guessSrc := helmSource(t, guesser, Credentials{})
	guessSrc.UID = "other-repo"
	_, err = c.Get(ctx, guessSrc, "hello", "0.1.0")
	g.Expect(err).To(HaveOccurred(), "not served from the private repository's download")
	g.Expect(guesser.Hits("/charts/nothing-here.tgz")).To(Equal(1), "it asked its own server")

	// Two anonymous repositories listing one archive share the download.
	public := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer public.Close()
	g.Expect(public.Add(ch)).To(Succeed())
	mirror := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer mirror.Close()
	g.Expect(mirror.Add(ch)).To(Succeed())
	before := c.Downloads()
	for _, r := range []*chartrepos.HelmRepo{public, mirror} {
		_, err = c.Get(ctx, helmSource(t, r, Credentials{}), "hello", "0.1.0")
		g.Expect(err).NotTo(HaveOccurred())
	}
	g.Expect(c.Downloads() - before).To(Equal(int64(1)))

	// An index that lists the cached archive under another version is refused on a cache hit too.
	liar := chartrepos.NewHelmRepo(chartrepos.Options{})
	defer liar.Close()
	liar.SetRawIndex([]byte(fmt.Sprintf(`apiVersion: v1
entries:
  hello:
  - {name: hello, version: 9.9.9, urls: [%s/charts/hello-0.1.0.tgz], digest: %s}
`, public.URL(), ch.Digest())))
	_, err = c.Get(ctx, helmSource(t, liar, Credentials{}), "hello", "9.9.9")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonChartInvalid))
}

func TestOCIChartsResolveRangesAndDownloadOnce(t *testing.T) {
	g := NewWithT(t)
	reg := chartrepos.NewOCIRegistry(chartrepos.Options{Username: "u", Password: "p", TLS: true})
	defer reg.Close()
	g.Expect(reg.Push(hello(t, "0.1.0", "0.2.0", "0.2.1")...)).To(Succeed())
	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: reg.CAPEM(), KeyUsername: []byte("u"), KeyPassword: []byte("p")})
	g.Expect(err).NotTo(HaveOccurred())
	r, err := NewRegistry(loopback(), reg.URL(), creds, false)
	g.Expect(err).NotTo(HaveOccurred())
	src := &Source{Registry: r, Credentials: creds, FetchedAt: time.Now()}
	c := &ChartCache{Options: loopback()}
	for i := 0; i < 3; i++ {
		res, err := c.Get(ctx, src, "hello", "0.2.x")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Version).To(Equal("0.2.1"))
	}
	g.Expect(c.Downloads()).To(Equal(int64(1)))
	g.Expect(c.OCIResolutions()).To(Equal(int64(1)), "tags and manifest are read once per repository fetch, not per call")

	// A new version, seen at the repository's next fetch (not before).
	g.Expect(reg.Push(hello(t, "0.2.2")...)).To(Succeed())
	res, err := c.Get(ctx, src, "hello", "0.2.x")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Version).To(Equal("0.2.1"))
	next := *src
	next.FetchedAt = src.FetchedAt.Add(time.Minute)
	res, err = c.Get(ctx, &next, "hello", "0.2.x")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Version).To(Equal("0.2.2"))
	g.Expect(c.OCIResolutions()).To(Equal(int64(2)))
	_, err = c.Get(ctx, src, "hello", "3.x")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonVersionNotFound))
	_, err = c.Get(ctx, src, "missing", "1.0.0")
	g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonChartNotFound), "%v", err)
}

// tgz builds a gzipped tar of files (name -> content).
func tgz(files map[string][]byte) []byte { return tgzTyped(files, tar.TypeReg) }

// tgzTyped builds a gzipped tar whose entries other than Chart.yaml have the type flag typ.
func tgzTyped(files map[string][]byte, typ byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, b := range files {
		flag := typ
		if strings.HasSuffix(name, "/Chart.yaml") {
			flag = tar.TypeReg
		}
		_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: flag})
		_, _ = tw.Write(b)
	}
	_ = tw.Close()
	_ = zw.Close()
	return buf.Bytes()
}

func TestArchiveLimits(t *testing.T) {
	g := NewWithT(t)
	chartYAML := []byte("apiVersion: v2\nname: x\nversion: 0.1.0\n")
	ok := tgz(map[string][]byte{"x/Chart.yaml": chartYAML})
	ch, err := LoadArchive(ok, ArchiveLimits{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(ch.Metadata.Name).To(Equal("x"))

	many := map[string][]byte{"x/Chart.yaml": chartYAML}
	for i := 0; i < 50; i++ {
		many[fmt.Sprintf("x/templates/f%d.yaml", i)] = []byte("a: b\n")
	}
	bomb := tgz(map[string][]byte{"x/Chart.yaml": chartYAML, "x/templates/zeros.yaml": make([]byte, 8<<20)})
	nested := ok
	for i := 0; i < 4; i++ {
		nested = tgz(map[string][]byte{"x/Chart.yaml": chartYAML, "x/charts/inner.tgz": nested})
	}
	// Each nested archive alone is under the expanded limit; together they are not.
	wide := map[string][]byte{"x/Chart.yaml": chartYAML}
	for i := 0; i < 8; i++ {
		wide[fmt.Sprintf("x/charts/sub%d.tgz", i)] = tgz(map[string][]byte{"sub/values.yaml": bytes.Repeat([]byte("# pad\n"), 200000)})
	}
	// Subchart archives under names Helm's loader cleans: each would else load with a budget of
	// its own (a 433-byte archive loaded 4 MiB under a 1 MiB limit).
	oddNames := func(name string) []byte {
		return tgz(map[string][]byte{"x/Chart.yaml": chartYAML, name: tgz(map[string][]byte{"sub/Chart.yaml": []byte("apiVersion: v2\nname: sub\nversion: 0.1.0\n"),
			"sub/templates/zeros.yaml": make([]byte, 4<<20)})})
	}
	for name, tc := range map[string]struct {
		archive []byte
		limits  ArchiveLimits
		want    string
	}{
		"subchart named with a dot":        {oddNames("x/charts/sub.tgz/."), ArchiveLimits{MaxExpandedBytes: 1 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"subchart named with backslashes":  {oddNames("x\\charts\\sub.tgz\\"), ArchiveLimits{MaxExpandedBytes: 1 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"subchart named with double slash": {oddNames("x//charts//sub.tgz"), ArchiveLimits{MaxExpandedBytes: 1 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"too large":                        {ok, ArchiveLimits{MaxArchiveBytes: 10}, "more than the limit of 10"},
		"too many":                         {tgz(many), ArchiveLimits{MaxFiles: 20}, "more than 20 files"},
		"bomb":                             {bomb, ArchiveLimits{}, "compression bomb"},
		"expanded":                         {bomb, ArchiveLimits{MaxExpandedBytes: 1 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"deep":                             {nested, ArchiveLimits{MaxDepth: 3}, "more than 3 deep"},
		"shared budget":                    {tgz(wide), ArchiveLimits{MaxExpandedBytes: 4 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"not gzip":                         {[]byte("PK\x03\x04 zip"), ArchiveLimits{}, "not gzip"},
		// Entries of another type than regular still hold data that Helm's loader reads.
		"bomb as contiguous files": {tgzTyped(map[string][]byte{"x/Chart.yaml": chartYAML, "x/templates/zeros.yaml": make([]byte, 8<<20)}, tar.TypeCont), ArchiveLimits{}, "compression bomb"},
		"subcharts of an odd type": {tgzTyped(wide, '7'), ArchiveLimits{MaxExpandedBytes: 4 << 20, MaxRatio: 1 << 30}, "expands beyond"},
		"no chart":                 {tgz(map[string][]byte{"x/values.yaml": []byte("a: 1")}), ArchiveLimits{}, "does not load"},
	} {
		_, err := LoadArchive(tc.archive, tc.limits)
		g.Expect(reasonOf(err)).To(Equal(pluginsv1.ReasonChartInvalid), name)
		g.Expect(err.Error()).To(ContainSubstring(tc.want), name)
	}
}

// A private registry hands blobs out through a CDN by redirect (GHCR, Docker Hub, ECR do): the
// chart downloads, and the CDN never sees the credentials.
func TestOCIBlobRedirectsGoWithoutCredentials(t *testing.T) {
	g := NewWithT(t)
	reg := chartrepos.NewOCIRegistry(chartrepos.Options{Username: "u", Password: "secret-password", TLS: true})
	defer reg.Close()
	g.Expect(reg.Push(hello(t, "0.1.0")...)).To(Succeed())
	cdn := chartrepos.NewBlobCDN(reg, chartrepos.Options{TLS: true})
	defer cdn.Close()
	var mu sync.Mutex
	var cdnAuth []string
	cdn.OnRequest(func(a string) {
		mu.Lock()
		defer mu.Unlock()
		cdnAuth = append(cdnAuth, a)
	})
	reg.RedirectBlobs(cdn.URL())

	creds, err := CredentialsFromSecret("s", map[string][]byte{KeyCA: reg.CAPEM(), KeyUsername: []byte("u"), KeyPassword: []byte("secret-password")})
	g.Expect(err).NotTo(HaveOccurred())
	r, err := NewRegistry(loopback(), reg.URL(), creds, false)
	g.Expect(err).NotTo(HaveOccurred())
	c := &ChartCache{Options: loopback()}
	res, err := c.Get(ctx, &Source{Registry: r, Credentials: creds, FetchedAt: time.Now()}, "hello", "0.1.0")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(res.Version).To(Equal("0.1.0"))
	mu.Lock()
	defer mu.Unlock()
	g.Expect(cdnAuth).NotTo(BeEmpty(), "the blob came from the CDN")
	for _, a := range cdnAuth {
		g.Expect(a).To(BeEmpty(), "the CDN was sent credentials")
	}

	// A registry that redirects to a metadata address gets nothing.
	reg.RedirectBlobs("https://169.254.169.254")
	_, err = (&ChartCache{Options: loopback()}).Get(ctx, &Source{Registry: r, Credentials: creds, FetchedAt: time.Now()}, "hello", "0.1.0")
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("not allowed"))
	g.Expect(err.Error()).NotTo(ContainSubstring("secret-password"))
}
