package chartrepo

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"path"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"

	pluginsv1 "github.com/paddock-dev/paddock/api/plugins/v1alpha1"
)

// ArchiveLimits bound what one chart archive may hold. Helm's loader caps the expanded size
// and each file, but not the archive itself, the number of files, the expansion ratio, or the
// subchart archives nested in it (each of which it expands with a fresh budget).
type ArchiveLimits struct {
	// MaxArchiveBytes bounds the compressed archive (default 16 MiB).
	MaxArchiveBytes int64
	// MaxExpandedBytes bounds the expanded content, nested subchart archives included (64 MiB).
	MaxExpandedBytes int64
	// MaxFiles bounds the files, nested ones included (10,000).
	MaxFiles int
	// MaxRatio bounds expanded / compressed size (200).
	MaxRatio int64
	// MaxDepth bounds subchart archive nesting (5).
	MaxDepth int
}

// DefaultArchiveLimits are the limits when none are set.
var DefaultArchiveLimits = ArchiveLimits{MaxArchiveBytes: 16 << 20, MaxExpandedBytes: 64 << 20, MaxFiles: 10000, MaxRatio: 200, MaxDepth: 5}

func (l ArchiveLimits) withDefaults() ArchiveLimits {
	d := DefaultArchiveLimits
	if l.MaxArchiveBytes > 0 {
		d.MaxArchiveBytes = l.MaxArchiveBytes
	}
	if l.MaxExpandedBytes > 0 {
		d.MaxExpandedBytes = l.MaxExpandedBytes
	}
	if l.MaxFiles > 0 {
		d.MaxFiles = l.MaxFiles
	}
	if l.MaxRatio > 0 {
		d.MaxRatio = l.MaxRatio
	}
	if l.MaxDepth > 0 {
		d.MaxDepth = l.MaxDepth
	}
	return d
}

// budget is what a scan may still expand, shared by nested archives.
type budget struct {
	bytes int64
	files int
}

// LoadArchive checks a chart archive against the limits, then loads it with Helm's loader.
// Nothing touches the disk.
func LoadArchive(b []byte, limits ArchiveLimits) (*chart.Chart, error) {
	l := limits.withDefaults()
	if int64(len(b)) > l.MaxArchiveBytes {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart archive is %d bytes, more than the limit of %d", len(b), l.MaxArchiveBytes)
	}
	bud := &budget{bytes: l.MaxExpandedBytes, files: l.MaxFiles}
	expanded, err := scan(b, l, bud, 0)
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && expanded/int64(len(b)) > l.MaxRatio {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart archive expands %d times (limit %d): refused as a compression bomb", expanded/int64(len(b)), l.MaxRatio)
	}
	ch, err := loader.LoadArchive(bytes.NewReader(b))
	if err != nil {
		return nil, fail(pluginsv1.ReasonChartInvalid, "the chart archive does not load: %s", firstLine(err.Error()))
	}
	return ch, nil
}

// scan walks a gzipped tar, charging its files to bud, and nested .tgz archives recursively.
// It returns the bytes expanded at this level and below.
func scan(b []byte, l ArchiveLimits, bud *budget, depth int) (int64, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive is not gzip")
	}
	defer func() { _ = zr.Close() }()
	tr := tar.NewReader(zr)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive is not a valid tar: %s", firstLine(err.Error()))
		}
		bud.files--
		if bud.files < 0 {
			return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive holds more than %d files", l.MaxFiles)
		}
		switch h.Typeflag {
		case tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeXHeader, tar.TypeXGlobalHeader:
			// Header only. Every other type is charged and read: tar returns its data, and Helm's
			// loader takes it as a file (a contiguous-file or unknown type would else skip the
			// budget).
			continue
		}
		if h.Size > bud.bytes {
			return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive expands beyond %d bytes", l.MaxExpandedBytes)
		}
		// Named as Helm's loader reads the name (backslashes are separators, "x/", "x/." and
		// "a//x" are x), or a subchart archive named "sub.tgz/" would load with a fresh budget of
		// its own, its expansion never counted here.
		name := path.Clean(strings.ReplaceAll(h.Name, "\\", "/"))
		nested := strings.HasSuffix(name, ".tgz") || strings.HasSuffix(name, ".tar.gz")
		var content []byte
		var n int64
		if nested {
			content, err = io.ReadAll(io.LimitReader(tr, bud.bytes+1))
			n = int64(len(content))
		} else {
			n, err = io.Copy(io.Discard, io.LimitReader(tr, bud.bytes+1))
		}
		if err != nil {
			return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive is truncated or corrupt")
		}
		bud.bytes -= n
		total += n
		if bud.bytes < 0 {
			return 0, fail(pluginsv1.ReasonChartInvalid, "the chart archive expands beyond %d bytes", l.MaxExpandedBytes)
		}
		if nested {
			if depth+1 > l.MaxDepth {
				return 0, fail(pluginsv1.ReasonChartInvalid, "the chart nests subchart archives more than %d deep", l.MaxDepth)
			}
			inner, err := scan(content, l, bud, depth+1)
			if err != nil {
				return 0, err
			}
			total += inner
		}
	}
	return total, nil
}
