package main

import (
	"os"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// benchLogger discards the manager's logs, or with BENCH_LOG=<file> writes them there as JSON
// (at -v=BENCH_LOG_V, default 0) to trace where a run spends its time.
func benchLogger() logr.Logger {
	path := os.Getenv("BENCH_LOG")
	if path == "" {
		return logr.Discard()
	}
	f, err := os.Create(path)
	if err != nil {
		return logr.Discard()
	}
	lvl := zapcore.Level(0)
	if v := os.Getenv("BENCH_LOG_V"); v != "" && v[0] >= '0' && v[0] <= '9' {
		lvl = -zapcore.Level(v[0] - '0')
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zapr.NewLogger(zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(f), lvl)))
}
