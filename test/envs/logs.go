package envs

import (
	"bytes"
	"sync"
)

// SyncBuffer is a bytes.Buffer safe for a logger's concurrent writes: tests point the manager's
// logger at one and check that nothing secret was ever logged.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
